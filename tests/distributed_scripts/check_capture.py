"""Captured steps with the multi-node optimizer, under `mpiexec -n N` or torchrun: rank 0 prints 'ok N'.

    mpiexec -n N python check_capture.py mpi

Each check trains from the same parameters twice: a captured step through the multi-node optimizer (its exchange
of gradients is one op of the step, run again by every replay), and an eager step through the sequential
all-reduce after backward (`comm.allreduce_grad`), which is the reference; the parameters agree after every step
(float64, rtol 1e-12). The steps use a layer on some ranks only and one on none, so that ranks record different
tapes and some gradients are missing on some ranks. Also: ranks that replay while others run eagerly (and redo
stale buckets, which the replaying rank must join), a captured step with gradient accumulation (`no_sync`),
gradients sent in float16 (captured equals eager to the bit), parameters created by the first call (broadcast
inside the first recording), and a step that all-reduces outside the optimizer (refused, its call complete).
"""

from __future__ import annotations

import sys

import numpy as np

import xdezero
import xdezero.functions as F
import xdezero.layers as L
from xdezero import Model, optimizers
from xdezero import distributed as dist

STEPS = 7  # two recording calls, then five replays


class Net(Model):
    def __init__(self, in_size: int | None = 3):
        super().__init__()
        self.l1 = L.Linear(8, dtype=np.float64, in_size=in_size)
        self.extra = L.Linear(8, dtype=np.float64, in_size=8)  # used on odd ranks only: no gradient on the others
        self.never = L.Linear(8, dtype=np.float64, in_size=8)  # no gradient on any rank: keeps none, does not move
        self.out = L.Linear(2, dtype=np.float64, in_size=8)

    def forward(self, x, rank):
        h = F.tanh(self.l1(x))
        if rank % 2:
            h = h + self.extra(h)
        return self.out(h)


def make(seed: int) -> Net:
    np.random.seed(seed)
    return Net()


def batch(comm, step, micro=0):
    rng = np.random.default_rng([comm.rank, step, micro])
    return rng.standard_normal((5, 3)), rng.integers(0, 2, 5)


def same(ours, ref, what):
    for (k, a), (_, b) in zip(ours.named_params(), ref.named_params(), strict=True):
        if a.data is None or b.data is None:
            assert a.data is None and b.data is None, f"{what}: {k}"
            continue
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-15, err_msg=f"{what}: {k}")


def reference_step(model, optimizer, comm, x, t):
    model.cleargrads()
    F.softmax_cross_entropy(model(x, comm.rank), t).backward()
    comm.allreduce_grad(model)
    optimizer.update()


def trained_pair(comm, optimizer_class, seed, capture_here=True):
    """(captured model, reference model, captured step) after STEPS steps, checked after each."""
    ours, ref = make(seed), make(seed)
    opt = dist.create_multi_node_optimizer(optimizer_class(), comm, bucket_mb=1e-4, first_bucket_mb=1e-4).setup(ours)
    ref_opt = optimizer_class().setup(ref)

    def train_step(x, t):
        ours.cleargrads()
        loss = F.softmax_cross_entropy(ours(x, comm.rank), t)
        loss.backward()
        opt.update()
        return loss

    step = xdezero.capture(train_step) if capture_here else train_step
    for k in range(STEPS):
        x, t = batch(comm, k)
        loss = step(x, t)
        reference_step(ref, ref_opt, comm, x, t)
        assert float(loss.data) > 0
        same(ours, ref, f"{optimizer_class.__name__} step {k}, {'captured' if capture_here else 'eager'}")
    return ours, ref, step


def check_captured_equals_eager(comm):
    for optimizer_class in (optimizers.SGD, optimizers.MomentumSGD, optimizers.Adam):
        ours, _, step = trained_pair(comm, optimizer_class, seed=0)
        assert step.recorded == 1, step.recorded  # the same tape from the third call on
        assert ours.never.W.grad is None
        np.testing.assert_array_equal(ours.never.W.data, make(0).never.W.data)


def check_ranks_replaying_beside_eager_ranks(comm):
    # Rank 0 captures, the others run the same step eagerly: the exchange is the same collectives either way.
    trained_pair(comm, optimizers.MomentumSGD, seed=1, capture_here=comm.rank == 0)
    # And the other way round.
    trained_pair(comm, optimizers.Adam, seed=2, capture_here=comm.rank != 0)


class Reused(Model):
    def __init__(self):
        super().__init__()
        self.l1 = L.Linear(8, dtype=np.float64, in_size=3)
        self.shared = L.Linear(8, dtype=np.float64, in_size=8)
        self.out = L.Linear(2, dtype=np.float64, in_size=8)

    def forward(self, x, uses):
        h = F.tanh(self.l1(x))
        for _ in range(uses):
            h = F.tanh(self.shared(h))
        return self.out(h)


def check_stale_buckets_beside_a_replaying_rank(comm):
    # The eager ranks use a layer more often than the step before, so their buckets start early, go stale and are
    # redone; rank 0 replays, and must join the agreement and the redos.
    np.random.seed(6)
    ours = Reused()
    np.random.seed(6)
    ref = Reused()
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), comm, bucket_mb=1e-4, first_bucket_mb=1e-4)
    opt.setup(ours)
    ref_opt = optimizers.SGD(lr=0.1).setup(ref)
    uses = 1

    def train_step(x, t):
        ours.cleargrads()
        F.softmax_cross_entropy(ours(x, uses), t).backward()
        opt.update()

    step = xdezero.capture(train_step) if comm.rank == 0 else train_step
    redone = []
    send = comm._iallreduce_buffer
    comm._iallreduce_buffer = lambda buf, op: redone.append(1) or send(buf, op)
    for k in range(STEPS):
        uses = 1 if comm.rank == 0 else 1 + k % 3
        x, t = batch(comm, k)
        step(x, t)
        ref.cleargrads()
        F.softmax_cross_entropy(ref(x, uses), t).backward()
        comm.allreduce_grad(ref)
        ref_opt.update()
        same(ours, ref, f"stale buckets beside a replaying rank, step {k}")
    comm._iallreduce_buffer = send
    if comm.size > 1:
        assert len(redone) > STEPS * len(opt._gradient_buckets().buckets), "no bucket was redone: checked nothing"


def check_lazy_parameters(comm):
    # Created by the first call (from different draws on each rank) and broadcast from rank 0 inside its recording.
    ref = make(3)
    np.random.seed(10 + comm.rank)
    ours = Net(None)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), comm).setup(ours)

    def train_step(x, t):
        ours.cleargrads()
        F.softmax_cross_entropy(ours(x, comm.rank), t).backward()
        opt.update()

    step = xdezero.capture(train_step)
    x, t = batch(comm, 0)
    try:
        step(x, t)
    except xdezero.CaptureError as e:
        refused = str(e)
    else:
        refused = ""
    if comm.size > 1:  # the ranks drew different values: the first update is skipped, and the recording says why
        assert "skipped this step's update" in refused and opt.skipped_updates == 1, (refused, opt.skipped_updates)
    else:
        assert not refused and opt.skipped_updates == 0, refused
    step = xdezero.capture(train_step)  # carry on captured from the next call, as the error says
    for p, q in zip(ref.params(), ours.params()):
        p.data = q.data.copy()
    ref_opt = optimizers.SGD(lr=0.1).setup(ref)
    for k in range(1, STEPS):
        x, t = batch(comm, k)
        step(x, t)
        reference_step(ref, ref_opt, comm, x, t)
        same(ours, ref, f"lazy parameters, step {k}")
    assert step.recorded == 1


def check_no_sync(comm):
    ours, ref = make(4), make(4)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), comm, bucket_mb=1e-4).setup(ours)
    ref_opt = optimizers.SGD(lr=0.1).setup(ref)

    def accumulated(x0, t0, x1, t1):
        ours.cleargrads()
        with opt.no_sync():
            F.softmax_cross_entropy(ours(x0, comm.rank), t0).backward()
        F.softmax_cross_entropy(ours(x1, comm.rank), t1).backward()
        opt.update()

    step = xdezero.capture(accumulated)
    for k in range(STEPS):
        (x0, t0), (x1, t1) = batch(comm, k, 0), batch(comm, k, 1)
        step(x0, t0, x1, t1)
        ref.cleargrads()
        F.softmax_cross_entropy(ref(x0, comm.rank), t0).backward()
        F.softmax_cross_entropy(ref(x1, comm.rank), t1).backward()
        comm.allreduce_grad(ref)
        ref_opt.update()
        same(ours, ref, f"no_sync step {k}")
    assert step.recorded == 1


def check_float16_exchange(comm):
    # The captured exchange is the eager one: with gradients sent in float16, the same parameters to the bit.
    models = [make(7), make(7)]
    opts = [
        dist.create_multi_node_optimizer(optimizers.Adam(), comm, allreduce_grad_dtype="float16").setup(m)
        for m in models
    ]

    def step_of(model, optimizer):
        def train_step(x, t):
            model.cleargrads()
            F.softmax_cross_entropy(model(x, comm.rank), t).backward()
            optimizer.update()

        return train_step

    captured, eager = xdezero.capture(step_of(models[0], opts[0])), step_of(models[1], opts[1])
    for k in range(STEPS):
        x, t = batch(comm, k)
        captured(x, t)
        eager(x, t)
        for (name, a), (_, b) in zip(models[0].named_params(), models[1].named_params(), strict=True):
            if a.data is not None:
                np.testing.assert_array_equal(a.data, b.data, err_msg=f"float16 exchange, step {k}: {name}")
    assert captured.recorded == 1


def check_exchange_outside_the_optimizer_is_refused(comm):
    model = make(5)
    opt = optimizers.SGD().setup(model)

    def train_step(x, t):
        model.cleargrads()
        loss = F.softmax_cross_entropy(model(x, comm.rank), t)
        loss.backward()
        comm.allreduce_grad(model)
        opt.update()
        return loss

    x, t = batch(comm, 0)
    try:
        result = xdezero.capture(train_step)(x, t)
    except xdezero.CaptureError as e:
        assert comm.size > 1, "refused on one process, where allreduce_grad changes nothing"
        assert "not computed by xdezero's functions" in str(e), str(e)
        assert e.result is not None
    else:
        assert comm.size == 1 and result is not None


def main() -> None:
    comm = dist.create_communicator(sys.argv[1] if len(sys.argv) > 1 else "auto")
    check_captured_equals_eager(comm)
    check_ranks_replaying_beside_eager_ranks(comm)
    check_stale_buckets_beside_a_replaying_rank(comm)
    check_lazy_parameters(comm)
    check_no_sync(comm)
    check_float16_exchange(comm)
    check_exchange_outside_the_optimizer_is_refused(comm)
    if comm.rank == 0:
        print("ok", comm.size)


if __name__ == "__main__":
    main()
