"""`create_multi_node_optimizer`: any xdezero optimizer, with gradients averaged over all ranks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from xdezero._config import recorder_slot
from xdezero.backends import to_numpy
from xdezero.distributed.buckets import MB, GradientBuckets
from xdezero.distributed.communicator import Communicator, named_params
from xdezero.optimizers import Optimizer

EXCHANGE_DTYPES = ("float16", "bfloat16")

__all__ = ["MultiNodeOptimizer", "create_multi_node_optimizer"]


class MultiNodeOptimizer:
    """Wraps `actual_optimizer`: `update()` averages the gradients over all ranks, then applies them.

    Every other attribute (`lr`, `add_hook`, `target`, ...) is the wrapped optimizer's; its hooks run after
    the averaging, so WeightDecay and ClipGrad see the global gradient.

    From the second step on, the gradients travel in buckets that are all-reduced while backward is still running
    (`xdezero/distributed/buckets.py`; packed and started on a thread of their own where the transport allows):
    the last layers' gradients are on their way while the first layers' are being computed, and `update()` waits
    for what is left. `bucket_mb` sizes the buckets (`first_bucket_mb`
    the first, which starts earliest); `overlap=False` reduces everything in `update()` instead. The averaged
    gradients are the same either way. `allreduce_grad_dtype` ('float16' or 'bfloat16', ChainerMN's name) sends
    the gradients in that dtype, half the bytes of float32, and averages them in the parameters' dtype.
    `no_sync()` accumulates gradients without communicating (see there).

    Parameters start equal on every rank: `setup` broadcasts rank 0's. A parameter still without data (its
    shape comes from the first input) is broadcast at the first `update` that finds it created. If it was
    created with different values on different ranks, that step's gradients were computed from different
    models, so the step is not applied (`skipped_updates` counts it), as ChainerMN does for every first step;
    seeding NumPy's global generator alike on every rank (`np.random.seed(0)`) or calling the model once
    before `setup` avoids the lost step.
    """

    # Kept in the instance's __dict__ (see __setattr__), declared here for type checkers only.
    actual_optimizer: Optimizer
    communicator: Communicator
    skipped_updates: int

    def __init__(
        self,
        actual_optimizer: Optimizer,
        communicator: Communicator,
        *,
        allreduce_grad_dtype: Any = None,
        overlap: bool = True,
        bucket_mb: float = 25.0,
        first_bucket_mb: float = 1.0,
    ) -> None:
        if not callable(getattr(actual_optimizer, "update", None)) or not hasattr(actual_optimizer, "setup"):
            raise TypeError(
                f"create_multi_node_optimizer: expected an xdezero Optimizer, got {type(actual_optimizer).__name__}"
            )
        if not isinstance(communicator, Communicator):
            raise TypeError(
                "create_multi_node_optimizer: expected a communicator from create_communicator, "
                f"got {type(communicator).__name__}"
            )
        for name, value in (("bucket_mb", bucket_mb), ("first_bucket_mb", first_bucket_mb)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"create_multi_node_optimizer: {name} must be a positive number of MiB, got {value!r}")
        self.__dict__.update(
            actual_optimizer=actual_optimizer,
            communicator=communicator,
            skipped_updates=0,
            _pending=[],
            _grad_dtype=_exchange_dtype(allreduce_grad_dtype, communicator),
            _overlap=bool(overlap),
            _bucket_bytes=int(bucket_mb * MB),
            _first_bucket_bytes=int(first_bucket_mb * MB),
            _buckets=None,
            _no_sync=0,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["actual_optimizer"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.actual_optimizer, name, value)

    def setup(self, target: Any) -> MultiNodeOptimizer:
        """Set up the wrapped optimizer on `target` (a model) and give its parameters rank 0's values."""
        self.actual_optimizer.setup(target)
        named = named_params(target, "MultiNodeOptimizer.setup")
        self.communicator.bcast_params([(k, p) for k, p in named if p.data is not None])
        self.__dict__["_pending"] = [(k, p) for k, p in named if p.data is None]
        return self

    def update(self) -> None:
        """Average the gradients over all ranks, then apply the wrapped optimizer's update."""
        if self.actual_optimizer.target is None:
            raise RuntimeError("MultiNodeOptimizer.update: call setup(model) first")
        if self._no_sync:
            raise RuntimeError(
                "MultiNodeOptimizer.update: called inside no_sync(), where gradients are only accumulated; "
                "run the last micro-batch's backward outside no_sync(), then update()"
            )
        recorder = recorder_slot.get()
        if recorder is not None and self.communicator.size > 1:
            # A captured step is recording: the exchange is one op of it, which its replays run again.
            params = [p for _, p in named_params(self.actual_optimizer.target, "MultiNodeOptimizer.update")]
            if recorder.collective(self._exchange, params) is None:
                self.actual_optimizer.update()
            return
        if self._exchange() is None:
            self.actual_optimizer.update()

    def _exchange(self) -> str | None:
        """Average the gradients over all ranks (after broadcasting parameters created since the last call);
        return why this step's update is skipped, or None."""
        if self.communicator.size == 1:
            return None  # nothing to exchange, nor to broadcast
        if self._pending and not self._broadcast_created():
            self.skipped_updates += 1
            self.actual_optimizer.target.cleargrads()
            return (
                "the multi-node optimizer skipped this step's update: parameters it created differed between the "
                "processes (see MultiNodeOptimizer); create them before setup, or seed NumPy alike on every process"
            )
        self._gradient_buckets().finish()
        return None

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Gradient accumulation: backward passes inside communicate nothing, and the gradients add up as usual.
        The next backward outside reduces the sums (their mean over the ranks) and `update()` applies them; calling
        `update()` inside is an error. Run the forward of those micro-batches inside too."""
        self.__dict__["_no_sync"] += 1
        buckets = self._buckets
        try:
            if buckets is None:
                yield
            else:
                with buckets.paused():
                    yield
        finally:
            self.__dict__["_no_sync"] -= 1

    def _gradient_buckets(self) -> GradientBuckets:
        """The buckets of the model's parameters, made at the first update that finds them all created (the
        same on every rank); until then, and without overlap, a bucketing that reduces in `update()` only."""
        params = [p for _, p in named_params(self.actual_optimizer.target, "MultiNodeOptimizer.update")]
        buckets = self._buckets
        if buckets is not None and buckets.params == params:
            return buckets
        if buckets is not None:
            buckets.detach()
        made = [p for p in params if p.data is not None]
        buckets = GradientBuckets(
            self.communicator, made, self._bucket_bytes, self._first_bucket_bytes, self._grad_dtype
        )
        if not self._overlap or len(made) < len(params):
            buckets.detach()  # reduced in update() only
        self.__dict__["_buckets"] = buckets
        return buckets

    def _broadcast_created(self) -> bool:
        """Broadcast the lazy parameters created since; False when they had differed between ranks."""
        created = [(k, p) for k, p in self._pending if p.data is not None]
        if not created:
            return True
        self.__dict__["_pending"] = [(k, p) for k, p in self._pending if p.data is None]
        before = [p.data for _, p in created]
        self.communicator.bcast_params(created)
        differed = any(not np.array_equal(to_numpy(a), to_numpy(p.data)) for a, (_, p) in zip(before, created))
        return not self.communicator.allreduce(int(differed), "max")


def create_multi_node_optimizer(
    actual_optimizer: Optimizer,
    communicator: Communicator,
    *,
    allreduce_grad_dtype: Any = None,
    overlap: bool = True,
    bucket_mb: float = 25.0,
    first_bucket_mb: float = 1.0,
) -> MultiNodeOptimizer:
    """`actual_optimizer` for data-parallel training: call `.setup(model)` on the result, then `update()`
    after each `backward()` as usual (ChainerMN's name; see MultiNodeOptimizer for the options)."""
    return MultiNodeOptimizer(
        actual_optimizer,
        communicator,
        allreduce_grad_dtype=allreduce_grad_dtype,
        overlap=overlap,
        bucket_mb=bucket_mb,
        first_bucket_mb=first_bucket_mb,
    )


def _exchange_dtype(dtype: Any, communicator: Communicator) -> str | None:
    """The gradients' exchange dtype by name ('float16', 'bfloat16'), or None (the parameters' own)."""
    if dtype is None:
        return None
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None) or str(dtype)
    name = name.rpartition(".")[2]
    if name not in EXCHANGE_DTYPES:
        raise ValueError(
            f"create_multi_node_optimizer: allreduce_grad_dtype must be None, 'float16' or 'bfloat16', got {dtype!r}"
        )
    if name == "bfloat16" and communicator.name == "mpi":
        raise ValueError(
            "create_multi_node_optimizer: MPI has no bfloat16 sum; use allreduce_grad_dtype='float16' with MPI, or "
            "the 'torch' communicator for bfloat16"
        )
    return name
