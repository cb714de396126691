"""xdezero.distributed without a launcher: the single-process communicator, sharding, the optimizer wrapper.

The multi-process tests are in test_distributed_mpi.py (mpi4py), test_distributed_torch.py (torch.distributed)
and test_distributed_dask.py (dask.distributed); they skip when their library is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import xdezero.functions as F
import xdezero.layers as L
from tests.helpers import asarray, library, to_numpy
from xdezero import Variable
from xdezero import distributed as dist
from xdezero.backends import library_name
from xdezero.datasets import Spiral
from xdezero.distributed.torch_distributed import default_backend
from xdezero.models import Sequential
from xdezero.optimizers import SGD, MomentumSGD, WeightDecay


class FakeRank(dist.SingleCommunicator):
    """Rank `rank` of `size` whose collectives see only this process: enough for index arithmetic."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size


def test_public_names():
    assert sorted(dist.__all__) == sorted(n for n in dir(dist) if not n.startswith("_") and n in dist.__all__)
    for name in dist.__all__:
        assert getattr(dist, name) is not None


def test_importing_imports_no_transport_library():
    code = (
        "import sys, xdezero, xdezero.distributed as d; c = d.create_communicator('auto');"
        "print(sorted(m for m in ('mpi4py', 'torch', 'cupy', 'jax') if m in sys.modules), c.size)"
    )
    env = {"PATH": "/usr/bin:/bin"}  # no launcher variables: 'auto' means one process
    if "PYTHONPATH" in os.environ:  # where xdezero and its dependencies come from, on some machines
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "1"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "single"),
        ({"PMI_RANK": "0", "PMI_SIZE": "2"}, "mpi"),  # MPICH / Intel MPI (Hydra)
        ({"OMPI_COMM_WORLD_SIZE": "4"}, "mpi"),  # Open MPI
        ({"PMIX_RANK": "1"}, "mpi"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, "mpi"),  # srun
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, "single"),  # a batch script on its own
        ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "LOCAL_RANK": "0"}, "torch"),  # torchrun
        ({"TORCHELASTIC_RUN_ID": "x", "PMI_RANK": "0"}, "torch"),
        ({"RANK": "0"}, "single"),
    ],
)
def test_detect_launcher(environ, expected):
    assert dist.detect_launcher(environ) == expected


def test_create_communicator_names():
    assert isinstance(dist.create_communicator("single"), dist.SingleCommunicator)
    with pytest.raises(ValueError, match=r"unknown communicator 'gloo'.*auto, mpi, nccl, torch, single"):
        dist.create_communicator("gloo")


def test_single_allreduce_keeps_kind_and_never_aliases(xp):
    comm = dist.create_communicator("single")
    a = asarray(xp, np.arange(6.0).reshape(2, 3))
    for op in ("sum", "mean", "max", "min"):
        out = comm.allreduce(a, op)
        assert library_name(out) == library(xp) and tuple(out.shape) == (2, 3) and out.dtype == a.dtype
        np.testing.assert_array_equal(to_numpy(out), np.arange(6.0).reshape(2, 3))
    mean = comm.allreduce(asarray(xp, np.array([1, 2])), "mean")
    assert xp.isdtype(mean.dtype, "real floating")
    assert comm.allreduce(3) == 3 and isinstance(comm.allreduce(3), int)
    assert comm.allreduce(3, "mean") == 3.0 and isinstance(comm.allreduce(3, "mean"), float)
    assert comm.allreduce({"loss": np.float32(0.5), "n": 2}) == {"loss": 0.5, "n": 2.0}
    if library(xp) == "numpy":
        assert not np.shares_memory(comm.allreduce(a), a)


def test_allreduce_of_a_variable_is_differentiable():
    comm = dist.create_communicator("single")
    x = Variable(np.array([1.0, 2.0]))
    y = comm.allreduce(x, "mean")
    (y * y).sum().backward()
    np.testing.assert_array_equal(x.grad.data, 2 * x.data)


def test_allreduce_rejects_what_it_cannot_reduce():
    comm = dist.create_communicator("single")
    with pytest.raises(ValueError, match="op must be one of 'sum', 'mean', 'max', 'min', got 'prod'"):
        comm.allreduce(1.0, "prod")
    with pytest.raises(TypeError, match="expected an array, a Variable, a number or a mapping"):
        comm.allreduce("1.0")
    with pytest.raises(TypeError, match="value 'acc'"):
        comm.allreduce({"acc": "high"})


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("n", [0, 5, 21, 300])
@pytest.mark.parametrize("shuffle", [False, True])
def test_scatter_dataset_shards_are_disjoint_equal_and_cover(size, n, shuffle):
    data = list(range(n))
    pad = [dist.scatter_dataset(data, FakeRank(r, size), shuffle=shuffle, seed=1) for r in range(size)]
    drop = [
        dist.scatter_dataset(data, FakeRank(r, size), shuffle=shuffle, seed=1, remainder="drop")
        for r in range(size)
        if n >= size
    ]
    for shards, covered in ((pad, n), (drop, n - n % size)):
        if not shards:
            continue
        assert len({len(s) for s in shards}) == 1, "shards of different sizes"
        taken = np.concatenate([[s[i] for i in range(len(s))] for s in shards]).astype(int)
        counts = np.bincount(taken, minlength=n)
        assert (counts >= 1).sum() == covered
        assert counts.sum() - covered == (-n % size if shards is pad else 0), "repeated more than the padding"
    if shuffle and n > 1 and size == 1:
        assert [pad[0][i] for i in range(n)] != data


def test_scatter_dataset_gives_examples_a_data_loader_takes():
    shard = dist.scatter_dataset(Spiral(), FakeRank(1, 3), shuffle=True, seed=0)
    assert len(shard) == 100
    x, t = next(iter(xdezero_loader(shard)))
    assert x.shape == (25, 2) and t.shape == (25,)
    with pytest.raises(IndexError, match="out of range for a shard of 100"):
        shard[100]
    with pytest.raises(ValueError, match="remainder must be 'pad' or 'drop'"):
        dist.scatter_dataset(Spiral(), FakeRank(0, 3), remainder="keep")


def xdezero_loader(dataset):
    from xdezero.dataloaders import DataLoader

    return DataLoader(dataset, 25, shuffle=False)


def _model():
    np.random.seed(0)
    return Sequential(L.Linear(5, dtype=np.float64), F.tanh, L.Linear(2, dtype=np.float64))


def _train(optimizer, model, steps=5):
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((8, 3)), rng.integers(0, 2, 8)
    for _ in range(steps):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        optimizer.update()
    return [p.data for p in model.params()]


def test_multi_node_optimizer_on_one_process_is_the_optimizer():
    comm = dist.create_communicator("single")
    plain = _train(MomentumSGD(lr=0.1).setup(m := _model()), m)
    wrapped = dist.create_multi_node_optimizer(MomentumSGD(lr=0.1), comm)
    wrapped.add_hook(WeightDecay(0.0))
    wrapped.lr = 0.1  # attributes are the wrapped optimizer's
    assert wrapped.actual_optimizer.lr == 0.1
    result = _train(wrapped.setup(m2 := _model()), m2)
    for a, b in zip(plain, result):
        np.testing.assert_array_equal(a, b)
    assert wrapped.skipped_updates == 0 and wrapped.target is m2


def test_multi_node_optimizer_checks_its_arguments():
    comm = dist.create_communicator("single")
    with pytest.raises(TypeError, match="expected an xdezero Optimizer"):
        dist.create_multi_node_optimizer(object(), comm)
    with pytest.raises(TypeError, match="expected a communicator"):
        dist.create_multi_node_optimizer(SGD(), "mpi")
    with pytest.raises(RuntimeError, match="call setup"):
        dist.create_multi_node_optimizer(SGD(), comm).update()


def test_multi_node_evaluator_returns_floats():
    comm = dist.create_communicator("single")
    evaluate = dist.create_multi_node_evaluator(
        lambda k: {"acc": np.float64(0.25) * k, "loss": Variable(np.array(2.0))}, comm
    )
    assert evaluate(2) == {"acc": 0.5, "loss": 2.0}
    assert dist.create_multi_node_evaluator(lambda: np.array(0.75), comm)() == 0.75


@pytest.mark.parametrize(
    ("cuda", "nccl", "gpus", "local_size", "expected"),
    [
        (True, True, 1, "1", "nccl"),
        (True, True, 1, "2", "gloo"),  # two processes on a one-GPU machine: the second would have no GPU
        (True, True, 8, "8", "nccl"),
        (True, False, 8, "8", "gloo"),
        (False, True, 0, "1", "gloo"),
    ],
)
def test_torch_default_backend_is_nccl_only_with_a_gpu_per_local_process(
    monkeypatch, cuda, nccl, gpus, local_size, expected
):
    fake_torch = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: cuda, device_count=lambda: gpus))
    fake_td = SimpleNamespace(is_nccl_available=lambda: nccl)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", local_size)
    assert default_backend(fake_torch, fake_td) == expected


def test_the_watchdog_reports_an_armed_collective_past_its_time_out_and_nothing_else():
    import threading
    import time

    from xdezero.distributed._watchdog import Watchdog

    fired, done = [], threading.Event()

    def on_timeout(what, seconds):
        fired.append((what, seconds))
        done.set()

    dog = Watchdog(0.2, on_timeout)
    dog.arm("a barrier")
    dog.disarm()  # completed in time
    time.sleep(0.5)
    assert fired == []
    dog.arm("an all-reduce")
    assert done.wait(5)
    assert fired == [("an all-reduce", 0.2)]
    with pytest.raises(ValueError, match="time-out must be positive"):
        Watchdog(0, on_timeout)


def test_allreduce_persistent_on_one_process_changes_nothing_and_refuses_non_layers():
    np.random.seed(0)
    model = Sequential(L.Linear(3, in_size=2), L.BatchNorm())
    model(np.random.default_rng(0).standard_normal((8, 2)))
    before = [p.data.copy() for p in model.params()]
    comm = dist.create_communicator("single")
    comm.allreduce_persistent(model)
    for p, b in zip(model.params(), before):
        np.testing.assert_array_equal(p.data, b)
    with pytest.raises(TypeError, match="allreduce_persistent: expected a Layer or Model, got list"):
        dist.communicator._running_statistics([model])
