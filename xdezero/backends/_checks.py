"""Range checks on integer ids (class labels, embedding rows, gather indices) at the cost of one host transfer.

An id out of range is never an error downstream: a flat offset reads a neighbouring row (NumPy, torch), JAX's
gathers clamp or fill in NaN, a GPU gather reads whatever lies there. So the ids are checked before they are
used. On an eager library the minima and maxima are reduced on the device and cross to the host together: one
transfer, one stream synchronisation per call. A Dask array stays lazy: it gets a `map_blocks` step that raises
when the graph is computed. Under `jax.jit` the ids are tracers with no value to check, and JAX's fill stays.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import array_api_compat

from xdezero.backends._devices import to_numpy
from xdezero.backends._namespace import array_namespace, device_of


def _raise_if_outside(bounds: Any, low: int, high: int, where: str, what: str, error: type) -> None:
    lo, hi = int(bounds[0]), int(bounds[1])
    for value in (lo, hi):
        if not low <= value < high:
            raise error(f"{where}: {what} {value} is out of range; accepted: integers in [{low}, {high - 1}]")


def _check_block(block: Any, low: int, high: int, where: str, what: str, error: type) -> Any:
    """The Dask step: check one computed block of ids and pass it on unchanged."""
    if block.size:
        _raise_if_outside((block.min(), block.max()), low, high, where, what, error)
    return block


def _is_tracer(ids: Any) -> bool:
    return array_api_compat.is_jax_array(ids) and isinstance(ids, sys.modules["jax"].core.Tracer)


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
    out, eager = [], []
    for a, (low, high, what) in zip(arrays, ranges, strict=True):
        if array_api_compat.is_dask_array(a):
            kwargs = {"low": low, "high": high, "where": where, "what": what, "error": error}
            a = a.map_blocks(_check_block, **kwargs, dtype=a.dtype, meta=a._meta)
        elif array_api_compat.size(a) and not _is_tracer(a):
            eager.append((a, low, high, what))
        out.append(a)
    if eager and not (array_api_compat.is_cupy_array(eager[0][0]) and _cupy_all_inside(eager)):
        xp = array_namespace(*(e[0] for e in eager))
        dtype = xp.arange(0, device=device_of(eager[0][0])).dtype
        # All bounds in one array, so that a GPU stream is synchronised once, not twice per array.
        extremes = [xp.astype(r(a), dtype, copy=False) for a, *_ in eager for r in (xp.min, xp.max)]
        bounds = to_numpy(xp.stack(extremes))
        for k, (_, low, high, what) in enumerate(eager):
            _raise_if_outside(bounds[2 * k : 2 * k + 2], low, high, where, what, error)
    return out


_cupy_count_outside: list = []


def _cupy_all_inside(eager: list) -> bool:
    """CuPy: whether every id is in range, by one counting kernel per array and one transfer (the minima and
    maxima cost four kernels more per array; they are computed, for the message, only when an id is outside)."""
    if not _cupy_count_outside:
        _cupy_count_outside.append(
            sys.modules["cupy"].ReductionKernel(
                "T x, int64 low, int64 high",
                "int64 n",
                "(x < low || x >= high) ? 1 : 0",
                "a + b",
                "n = a",
                "0",
                "xdezero_count_outside",
            )
        )
    count = _cupy_count_outside[0]
    total = None
    for a, low, high, _ in eager:
        n = count(a, low, high)
        total = n if total is None else total + n
    return int(to_numpy(total)) == 0


def check_ids(ids: Any, low: int, high: int, where: str, what: str = "id", error: type[Exception] = ValueError) -> Any:
    """`ids` after checking low <= ids < high (see `check_index_arrays`)."""
    return check_index_arrays([ids], [(low, high, what)], where, error)[0]
