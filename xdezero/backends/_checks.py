"""Range checks on integer ids (class labels, embedding rows, gather indices) at the cost of one host transfer.

An id out of range is never an error downstream: a flat offset reads a neighbouring row (NumPy, torch), JAX's
gathers clamp or fill in NaN, a GPU gather reads whatever lies there. So the ids are checked before they are
used, by the backend of their library (`Backend.check_ids`): on an eager library the minima and maxima are
reduced on the device and cross to the host together, one transfer and one stream synchronisation per call. A
Dask array stays lazy: it gets a `map_blocks` step that raises when the graph is computed. Under `jax.jit` the
ids are tracers with no value to check, and JAX's fill stays.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from xdezero.backends._backends import backend_of


def raise_if_outside(bounds: Any, low: int, high: int, where: str, what: str, error: type[Exception]) -> None:
    """Raise `error` when the minimum or maximum of some ids, `bounds[0]` and `bounds[1]` (host numbers), lies
    outside [low, high), naming `where`, `what`, the value and the accepted range."""
    lo, hi = int(bounds[0]), int(bounds[1])
    for value in (lo, hi):
        if not low <= value < high:
            raise error(f"{where}: {what} {value} is out of range; accepted: integers in [{low}, {high - 1}]")


_deferred = threading.local()


@contextmanager
def deferring_checks(into: list[Any]) -> Iterator[list[Any]]:
    """Inside: `check_index_arrays` appends its arguments to `into` and checks nothing (this thread only). For
    a CUDA-graph capture, where no value can cross to the host: the capturer checks them at each launch."""
    previous = getattr(_deferred, "sink", None)
    _deferred.sink = into
    try:
        yield into
    finally:
        _deferred.sink = previous


def check_index_arrays(
    arrays: Sequence[Any], ranges: Sequence[tuple[int, int, str]], where: str, error: type[Exception] = ValueError
) -> list[Any]:
    """`arrays` (integer arrays of one library) after checking low <= a < high for each (low, high, what) in
    `ranges`, with one host transfer for all of them; raises `error` naming `where`, `what`, the offending value
    and the accepted range. Use the returned arrays: on Dask they carry the check into the graph."""
    sink = getattr(_deferred, "sink", None)
    if sink is not None:
        sink.append((list(arrays), list(ranges), where, error))
        return list(arrays)
    if not arrays:
        return []
    checks = [(a, low, high, what) for a, (low, high, what) in zip(arrays, ranges, strict=True)]
    return backend_of(arrays[0]).check_ids(checks, where, error)


def check_ids(ids: Any, low: int, high: int, where: str, what: str = "id", error: type[Exception] = ValueError) -> Any:
    """`ids` after checking low <= ids < high (see `check_index_arrays`)."""
    return check_index_arrays([ids], [(low, high, what)], where, error)[0]
