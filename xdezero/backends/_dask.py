"""The Dask backend: the portable kernels, which stay lazy on Dask arrays, and id checks carried into the graph
(a `map_blocks` step that raises when the block is computed), so that checking never computes anything early.
"""

from __future__ import annotations

from typing import Any

from xdezero.backends._checks import raise_if_outside
from xdezero.backends._portable import Backend


def _check_block(block: Any, low: int, high: int, where: str, what: str, error: type[Exception]) -> Any:
    """Check one computed block of ids and pass it on unchanged."""
    if block.size:
        raise_if_outside((block.min(), block.max()), low, high, where, what, error)
    return block


class DaskBackend(Backend):
    """Dask arrays: lazy id checks, the portable kernels for the rest."""

    name = "dask"

    def check_ids(self, checks: list[tuple[Any, int, int, str]], where: str, error: type[Exception]) -> list[Any]:
        """Each id array with a checking step added to its graph."""
        return [
            a.map_blocks(_check_block, low, high, where, what, error, dtype=a.dtype, meta=a._meta)
            for a, low, high, what in checks
        ]

    def memory_key(self, x: Any) -> Any:
        """x's identity: Dask arrays are immutable, so no view of one can be written through."""
        return id(x)
