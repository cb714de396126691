"""`create_multi_node_optimizer`: any xdezero optimizer, with gradients averaged over all ranks."""

from __future__ import annotations

from typing import Any

import numpy as np

from xdezero.backends import to_numpy
from xdezero.distributed.communicator import Communicator, named_params
from xdezero.optimizers import Optimizer

__all__ = ["MultiNodeOptimizer", "create_multi_node_optimizer"]


class MultiNodeOptimizer:
    """Wraps `actual_optimizer`: `update()` averages the gradients over all ranks, then applies them.

    Every other attribute (`lr`, `add_hook`, `target`, ...) is the wrapped optimizer's; its hooks run after
    the averaging, so WeightDecay and ClipGrad see the global gradient.

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

    def __init__(self, actual_optimizer: Optimizer, communicator: Communicator) -> None:
        if not callable(getattr(actual_optimizer, "update", None)) or not hasattr(actual_optimizer, "setup"):
            raise TypeError(
                f"create_multi_node_optimizer: expected an xdezero Optimizer, got {type(actual_optimizer).__name__}"
            )
        if not isinstance(communicator, Communicator):
            raise TypeError(
                "create_multi_node_optimizer: expected a communicator from create_communicator, "
                f"got {type(communicator).__name__}"
            )
        self.__dict__.update(
            actual_optimizer=actual_optimizer, communicator=communicator, skipped_updates=0, _pending=[]
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
        if self._pending and not self._broadcast_created():
            self.skipped_updates += 1
            self.actual_optimizer.target.cleargrads()
            return
        self.communicator.allreduce_grad(self.actual_optimizer.target)
        self.actual_optimizer.update()

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


def create_multi_node_optimizer(actual_optimizer: Optimizer, communicator: Communicator) -> MultiNodeOptimizer:
    """`actual_optimizer` for data-parallel training: call `.setup(model)` on the result, then `update()`
    after each `backward()` as usual (ChainerMN's name)."""
    return MultiNodeOptimizer(actual_optimizer, communicator)
