"""Gradient buckets all-reduced while backward runs, over MPI on 1 to 3 ranks (distributed_scripts/check_buckets.py:
overlapped equals sequential at rtol 1e-12 in float64 with stale and unused parameters, no_sync, float16 exchange),
and in one process: the options' errors, and the bucket thread (packing and starting off the step's thread) on a
two-rank link whose other rank mirrors this one."""

from __future__ import annotations

import gc
import os
import shutil
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

import xdezero
import xdezero.functions as F
import xdezero.layers as L
import xdezero.tapes.step
from tests.distributed_scripts.launch import SCRIPTS, run
from tests.helpers import asarray, library, to_numpy
from tests.test_capture_graphs import NumpyGraphs
from xdezero import Model, optimizers
from xdezero import distributed as dist
from xdezero.distributed import buckets
from xdezero.distributed.communicator import Done

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))


@pytest.mark.parametrize(("n", "thread_level"), [(1, "multiple"), (2, "multiple"), (3, "multiple"), (2, "serialized")])
def test_buckets_over_mpi(n, thread_level):
    # Below MPI_THREAD_MULTIPLE the buckets pack and start on the step's thread.
    pytest.importorskip("mpi4py")
    if MPIEXEC is None:
        pytest.skip("mpi4py is installed but no mpiexec was found (pip install mpich)")
    script = [sys.executable, str(SCRIPTS / "check_buckets.py"), "mpi", thread_level]
    result = run([MPIEXEC, "-n", str(n), *script], 180, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(n)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_captured_steps_over_mpi(n):
    """The exchange is one op of a captured step (distributed_scripts/check_capture.py): captured equals the eager
    sequential all-reduce at rtol 1e-12 in float64, beside eager ranks, with no_sync and lazy parameters."""
    pytest.importorskip("mpi4py")
    if MPIEXEC is None:
        pytest.skip("mpi4py is installed but no mpiexec was found (pip install mpich)")
    result = run([MPIEXEC, "-n", str(n), sys.executable, str(SCRIPTS / "check_capture.py"), "mpi"], 180, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(n)]


class Mirror(dist.SingleCommunicator):
    """Rank 0 of 2 whose other rank holds the same gradients (the mean is this rank's), with non-blocking
    all-reduces in place that may start on another thread; `fail` makes them raise, `delay` makes them start
    late."""

    size = 2
    _threaded_starts = True
    _numpy_in_place = True

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.started_on: list[str] = []  # the thread of each non-blocking all-reduce

    def _allreduce_buffer(self, buf, op):
        if op == "sum":
            buf *= self.size
        return buf

    def _iallreduce_buffer(self, buf, op):
        self.started_on.append(threading.current_thread().name)
        if self.fail:
            raise ValueError("deliberate")
        time.sleep(self.delay)  # the bucket thread falls behind: backward goes on adding gradients meanwhile
        return Done(self._allreduce_buffer(buf, op))


class Reused(Model):
    def __init__(self):
        super().__init__()
        self.first = L.Linear(8, in_size=3)
        self.shared = L.Linear(8, in_size=8)
        self.out = L.Linear(2, in_size=8)

    def forward(self, x, step):
        h = F.tanh(self.first(x))
        for _ in range(1 + step % 3):  # used more often than the step before: its bucket goes stale
            h = F.tanh(self.shared(h))
        return self.out(h)


def reused(seed=0):
    np.random.seed(seed)
    model = Reused()
    model(np.zeros((1, 3)), 0)
    for p in model.params():
        p.data = p.data.astype(np.float64)
    return model


def train(model, optimizer, steps, first=0):
    for step in range(first, first + steps):
        x = np.random.default_rng(step).standard_normal((5, 3))
        model.cleargrads()
        F.sum(model(x, step) ** 2).backward()
        optimizer.update()


@pytest.mark.parametrize(("threaded", "chunk_bytes"), [(True, buckets.CHUNK_BYTES), (True, 40), (False, 40)])
def test_late_packing_thread_gives_the_gradients_of_the_step(threaded, chunk_bytes, monkeypatch):
    # The bucket thread packs long after each bucket became ready; a gradient added after that makes the bucket
    # stale, and its redo must send the final gradient: the parameters are those of training alone. Chunks of
    # 40 bytes (5 float64) split every parameter and join the ends of some.
    monkeypatch.setattr(buckets, "CHUNK_BYTES", chunk_bytes)
    comm = Mirror(delay=0.005)
    comm._threaded_starts = threaded
    ours, ref = reused(), reused()
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), comm, bucket_mb=1e-4, first_bucket_mb=1e-4)
    opt.setup(ours)
    ref_opt = optimizers.SGD(lr=0.1).setup(ref)
    started = []  # all-reduces started per step: more than in the first step where a stale bucket was redone
    for step in range(7):
        before = len(comm.started_on)
        train(ours, opt, 1, first=step)
        train(ref, ref_opt, 1, first=step)
        started.append(len(comm.started_on) - before)
    for (k, a), (_, b) in zip(ours.named_params(), ref.named_params(), strict=True):
        np.testing.assert_array_equal(a.data, b.data, err_msg=k)
    assert max(started) > started[0], f"no bucket went stale: the check checked nothing ({started})"
    assert set(comm.started_on) == ({"xdezero-gradient-buckets_0"} if threaded else {"MainThread"})


def test_an_error_on_the_bucket_thread_is_raised_on_the_step_thread():
    model = reused()
    opt = dist.create_multi_node_optimizer(optimizers.SGD(), Mirror(fail=True), bucket_mb=1e-4).setup(model)
    before = [np.array(p.data) for p in model.params()]
    with pytest.raises(
        RuntimeError,
        match=r"gradient bucket 0 of \d+ \(\d+ parameters, \d+ bytes\) failed on the bucket "
        "thread: ValueError: deliberate",
    ) as info:
        train(model, opt, 1)
    assert isinstance(info.value.__cause__, ValueError)
    for p, data in zip(model.params(), before):
        np.testing.assert_array_equal(p.data, data)  # nothing applied


def test_dropping_the_optimizer_ends_the_bucket_thread_and_unhooks_the_model():
    before = set(threading.enumerate())
    model, comm = reused(), Mirror()
    opt = dist.create_multi_node_optimizer(optimizers.SGD(), comm, bucket_mb=1e-4).setup(model)
    train(model, opt, 2)
    (thread,) = set(threading.enumerate()) - before
    assert thread.name == "xdezero-gradient-buckets_0"
    dropped = weakref.ref(opt._gradient_buckets())
    del opt
    gc.collect()
    assert dropped() is None, "something kept the dropped optimizer's buckets alive"
    thread.join(timeout=10)
    assert not thread.is_alive(), "the bucket thread outlived its buckets"
    sent = len(comm.started_on)
    F.sum(model(np.ones((1, 3)), 0)).backward()
    assert len(comm.started_on) == sent, "a backward after the optimizer was dropped still sent buckets"


def test_the_options_are_checked():
    comm = dist.SingleCommunicator()
    with pytest.raises(ValueError, match="allreduce_grad_dtype must be None, 'float16' or 'bfloat16', got 'int8'"):
        dist.create_multi_node_optimizer(optimizers.SGD(), comm, allreduce_grad_dtype="int8")
    with pytest.raises(ValueError, match="bucket_mb must be a positive number of MiB, got 0"):
        dist.create_multi_node_optimizer(optimizers.SGD(), comm, bucket_mb=0)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(), comm, allreduce_grad_dtype=np.float16)
    assert opt._grad_dtype == "float16"


def test_update_inside_no_sync_is_an_error_that_loses_nothing():
    model = L.Linear(2, in_size=3)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), dist.SingleCommunicator()).setup(model)
    before = np.array(model.W.data)
    with opt.no_sync():
        F.sum(model(np.ones((1, 3)))).backward()
        with pytest.raises(RuntimeError, match=r"inside no_sync\(\), where gradients are only accumulated"):
            opt.update()
    np.testing.assert_array_equal(model.W.data, before)
    grad = np.array(model.W.grad.data)
    F.sum(model(np.ones((1, 3)))).backward()
    np.testing.assert_allclose(model.W.grad.data, 2 * grad)  # accumulated over both micro-batches
    opt.update()
    np.testing.assert_allclose(model.W.data, before - 0.1 * 2 * grad)


def reused_on(xp):
    model = reused()
    for p in model.params():
        p.data = asarray(xp, p.data, dtype=np.float32)
    return model


def squared_step(model, optimizer, before_update=lambda: None):
    """A training step of `model` on the sum of its squared outputs."""

    def step(x):
        model.cleargrads()
        loss = F.sum(model(x, 1) ** 2)
        loss.backward()
        before_update()
        optimizer.update()
        return loss

    return step


def test_a_captured_exchange_replays_with_the_numbers_of_training_alone(xp, monkeypatch):
    # On the mirror the mean over the two ranks is this rank's gradient (halved, then doubled: exactly), so the
    # captured step through the multi-node optimizer must give the parameters of plain training, and its
    # exchange must run at every replay (a replay without it would average nothing: the mean would be half).
    kits = []
    if library(xp) == "numpy":  # the stand-in CUDA-graph kit: a tape that exchanges replays plainly and says so
        monkeypatch.setattr(xdezero.tapes.step, "graph_kit", lambda arrays: kits.append(NumpyGraphs()) or kits[-1])
    comm = Mirror()
    ours, ref = reused_on(xp), reused_on(xp)
    opt = dist.create_multi_node_optimizer(optimizers.Adam(), comm, bucket_mb=1e-4, first_bucket_mb=1e-4)
    opt.setup(ours)
    captured, plain = xdezero.capture(squared_step(ours, opt)), squared_step(ref, optimizers.Adam().setup(ref))
    exchanges = []
    send = comm._iallreduce_buffer
    comm._iallreduce_buffer = lambda buf, op: exchanges.append(1) or send(buf, op)
    for k in range(6):
        x = asarray(xp, np.random.default_rng(k).standard_normal((5, 3)), dtype=np.float32)
        losses = [to_numpy(captured(x).data), to_numpy(plain(x).data)]
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6, err_msg=f"loss of step {k}")
    assert captured.recorded == 1 and captured.graphs == 0
    assert len(exchanges) == 6 * len(opt._gradient_buckets().buckets)
    for (k, a), (_, b) in zip(ours.named_params(), ref.named_params(), strict=True):
        np.testing.assert_allclose(to_numpy(a.data), to_numpy(b.data), rtol=1e-6, atol=1e-7, err_msg=k)
    if kits or library(xp) == "jax":  # where a CUDA graph or jax.jit would have run it
        assert any("exchanges gradients with the other processes" in note for note in captured.graph_notes)


def test_a_captured_step_on_one_process_has_no_exchange_and_compiles_where_its_library_does(xp):
    model = reused_on(xp)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), dist.SingleCommunicator()).setup(model)
    step = xdezero.capture(squared_step(model, opt))
    for k in range(4):
        step(asarray(xp, np.random.default_rng(k).standard_normal((5, 3)), dtype=np.float32))
    (tape,) = step.tapes[next(iter(step.tapes))]
    assert "collective" not in {op.kind for op in tape.ops}
    assert step.graph_notes == []
    assert step.graphs == (library(xp) == "jax")


def test_a_parameter_changed_in_place_before_a_captured_exchange_is_refused():
    model = reused()
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), Mirror()).setup(model)

    def clip():  # outside any op: a replay would miss it
        np.clip(model.out.W.data, -0.1, 0.1, out=model.out.W.data)

    step = xdezero.capture(squared_step(model, opt, before_update=clip))
    with pytest.raises(xdezero.CaptureError, match="was changed in place before the multi-node optimizer's exchange"):
        step(np.ones((5, 3)))
