"""Gradient buckets reduced during backward, under `mpiexec -n N` or torchrun: rank 0 prints 'ok N'.

    mpiexec -n N python check_buckets.py mpi [THREAD_LEVEL]

THREAD_LEVEL ('multiple', the default, or 'serialized' ...) is the MPI thread level mpi4py asks for: below
'multiple' the buckets pack and start on the step's thread, else on their own.

Each check runs the same steps twice from the same parameters, through the multi-node optimizer (buckets all-reduced
while backward runs) and through the sequential all-reduce after backward (`comm.allreduce_grad`), and compares
the parameters after every step. The models reuse a layer a varying number of times, leave a layer unused on some
ranks in some steps and one layer unused everywhere, so that buckets start early, go stale and are redone.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

import xdezero.functions as F
import xdezero.layers as L
from xdezero import Model, optimizers
from xdezero import distributed as dist
from xdezero.distributed import buckets


class Net(Model):
    def __init__(self):
        super().__init__()
        self.l1 = L.Linear(8, in_size=3)
        self.shared = L.Linear(8, in_size=8)
        self.extra = L.Linear(8, in_size=8)
        self.never = L.Linear(8, in_size=8)  # no gradient on any rank: keeps none, does not move
        self.out = L.Linear(2, in_size=8)

    def forward(self, x, step, rank):
        h = F.tanh(self.l1(x))
        for _ in range(1 + step % 3):  # used 1 to 3 times: more often than the step before -> stale buckets
            h = F.tanh(self.shared(h))
        if (step + rank) % 2 == 0:  # a different set of parameters on each rank
            h = h + self.extra(h)
        return self.out(h)


def params_of(model):
    return {k: None if p.data is None else np.array(p.data) for k, p in model.named_params()}


def make(comm, seed=0):
    np.random.seed(seed)
    model = Net()
    model(np.zeros((1, 3)), 0, 0)  # create every parameter before setup
    for p in model.params():
        p.data = p.data.astype(np.float64)
    return model


def batch(comm, step, micro=0):
    rng = np.random.default_rng([comm.rank, step, micro])
    return rng.standard_normal((5, 3)), rng.integers(0, 2, 5)


def loss_of(model, comm, step, micro=0):
    x, t = batch(comm, step, micro)
    return F.softmax_cross_entropy(model(x, step, comm.rank), t)


def check_overlap_equals_sequential(comm, optimizer_class) -> None:
    ours, ref = make(comm), make(comm)
    opt = dist.create_multi_node_optimizer(optimizer_class(), comm, bucket_mb=1e-4, first_bucket_mb=1e-4)
    opt.setup(ours)
    ref_opt = optimizer_class().setup(ref)
    if comm.size > 1:
        assert len(opt._gradient_buckets().buckets) > 3
    for step in range(7):
        for model in (ours, ref):
            model.cleargrads()
            loss_of(model, comm, step).backward()
        opt.update()
        comm.allreduce_grad(ref)
        ref_opt.update()
        for (k, a), (_, b) in zip(params_of(ours).items(), params_of(ref).items(), strict=True):
            np.testing.assert_allclose(
                a, b, rtol=1e-12, atol=1e-15, err_msg=f"{optimizer_class.__name__} step {step} {k}"
            )
    assert ours.never.W.grad is None
    np.testing.assert_array_equal(ours.never.W.data, make(comm).never.W.data)


def check_no_sync(comm) -> None:
    ours, ref = make(comm, 1), make(comm, 1)
    opt = dist.create_multi_node_optimizer(optimizers.MomentumSGD(lr=0.1), comm, bucket_mb=1e-4).setup(ours)
    ref_opt = optimizers.MomentumSGD(lr=0.1).setup(ref)
    sent = []
    send = comm._iallreduce_buffer
    comm._iallreduce_buffer = lambda buf, op: sent.append(1) or send(buf, op)
    for step in range(4):
        ours.cleargrads()
        with opt.no_sync():
            loss_of(ours, comm, 2 * step, 0).backward()
            assert not sent, "a backward inside no_sync communicated"
            try:
                opt.update()
            except RuntimeError as e:
                assert "no_sync" in str(e)
            else:
                raise AssertionError("update() inside no_sync() did not raise")
        loss_of(ours, comm, 2 * step, 1).backward()  # the forward of another micro-batch: same step pattern
        opt.update()
        sent.clear()
        ref.cleargrads()
        loss_of(ref, comm, 2 * step, 0).backward()
        loss_of(ref, comm, 2 * step, 1).backward()  # summed over micro-batches, as eager accumulation
        comm.allreduce_grad(ref)  # then averaged over ranks
        ref_opt.update()
        for (k, a), (_, b) in zip(params_of(ours).items(), params_of(ref).items(), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=f"no_sync step {step} {k}")
    comm._iallreduce_buffer = send


def check_exchange_dtype(comm) -> None:
    ours, ref = make(comm, 2), make(comm, 2)
    for model in (ours, ref):
        for p in model.params():
            p.data = p.data.astype(np.float32)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), comm, allreduce_grad_dtype="float16").setup(ours)
    ref_opt = optimizers.SGD(lr=0.1).setup(ref)
    dtypes = []
    send = comm._iallreduce_buffer
    comm._iallreduce_buffer = lambda buf, op: dtypes.append(str(buf.dtype).rpartition(".")[2]) or send(buf, op)
    for step in range(3):
        for model in (ours, ref):
            model.cleargrads()
            loss_of(model, comm, step).backward()
        opt.update()
        comm.allreduce_grad(ref)
        ref_opt.update()
    comm._iallreduce_buffer = send
    assert set(dtypes) == ({"float16"} if comm.size > 1 else set()), dtypes
    for p, q in zip(ours.params(), ref.params()):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, q.data, rtol=2e-3, atol=2e-3)


def check_threads(comm, thread_level) -> None:
    expected = "MainThread"
    if comm.name == "torch" or (comm.name == "mpi" and thread_level == "multiple"):
        expected = "xdezero-gradient-buckets_0"
    started_on = []
    send = comm._iallreduce_buffer
    comm._iallreduce_buffer = lambda buf, op: started_on.append(threading.current_thread().name) or send(buf, op)
    model = make(comm)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(), comm, bucket_mb=1e-4).setup(model)
    for step in range(3):
        model.cleargrads()
        loss_of(model, comm, step).backward()
        opt.update()
    comm._iallreduce_buffer = send
    assert set(started_on) == ({expected} if comm.size > 1 else set()), (comm.name, thread_level, set(started_on))


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "auto"
    thread_level = sys.argv[2] if len(sys.argv) > 2 else "multiple"
    if name == "mpi":
        import mpi4py

        mpi4py.rc.thread_level = thread_level  # read when mpi4py.MPI is first imported, by the communicator
    comm = dist.create_communicator(name)
    check_threads(comm, thread_level)
    buckets.CHUNK_BYTES = 200  # 25 float64: every bucket of Net starts in several chunks where MPI takes them
    for optimizer_class in (optimizers.SGD, optimizers.MomentumSGD, optimizers.Adam):
        check_overlap_equals_sequential(comm, optimizer_class)
    check_no_sync(comm)
    check_exchange_dtype(comm)
    if comm.rank == 0:
        print("ok", comm.size)


if __name__ == "__main__":
    main()
