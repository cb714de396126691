"""The communicator of a job of one process: every collective is the identity, nothing is imported."""

from __future__ import annotations

import os
from typing import Any

from xdezero.distributed.communicator import Communicator

__all__ = ["SingleCommunicator"]


class SingleCommunicator(Communicator):
    """rank 0 of 1: lets one training script run with or without a launcher."""

    name = "single"

    def _to_buffer(self, flat: Any) -> Any:
        return flat

    def _from_buffer(self, buf: Any, like: Any) -> Any:
        return buf

    def _allreduce_buffer(self, buf: Any, op: str) -> Any:
        return buf

    def _bcast_buffer(self, buf: Any, root: int) -> Any:
        return buf

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Rank `root`'s `obj` on every rank (pickled)."""
        return obj

    def barrier(self) -> None:
        """Return once every rank has called `barrier`."""
        pass

    def abort(self, code: int = 1) -> None:
        """End every process of the job now."""
        os._exit(code)
