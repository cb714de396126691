"""Scatter-add with accumulation of repeated indices: absent from the array API standard.

`array_api_extra.at(x)[idx].add(v)` does not accumulate duplicates, so each library gets its own
accumulating primitive (`np.add.at`, `cupy.add.at`, torch `index_add_`, JAX `.at[].add`). The portable
fallback (array-api-strict, Dask, any other library) sorts the ids and sums each run of equal ids with a
segmented scan: O(n log n) time, O(n·d) memory, only gathers (no in-place writes), and lazy on Dask.
A boolean mask selects every element at most once, so its scatter is a gather on every library.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xdezero.backends._backends import backend_of, backend_of_namespace
from xdezero.backends._devices import to_numpy
from xdezero.backends._namespace import array_namespace, device_of


def host_index(index: Any) -> Any:
    """The same index with every array component converted to NumPy (for computing flat positions)."""
    if isinstance(index, tuple):
        return tuple(host_index(i) for i in index)
    if index is None or isinstance(index, int | slice | type(Ellipsis) | np.ndarray | list | np.integer):
        return index
    return to_numpy(index)  # a listed host transfer (see _devices)


def flat_positions(shape: tuple[int, ...], index: Any) -> np.ndarray:
    """Flat positions (in a C-ordered array of `shape`) of the elements that `x[index]` selects."""
    return np.arange(math.prod(shape)).reshape(shape)[host_index(index)]


def _index_dtype(xp: Any, device: Any) -> Any:
    return backend_of_namespace(xp).index_dtype(xp, device)


def segment_sum(ids: Any, rows: Any, n_segments: int) -> Any:
    """out[r] = Σ rows[i] over ids[i] == r, for 1-D ids in [0, n_segments) and 2-D rows (n, d)."""
    xp = array_namespace(rows)
    device = device_of(rows)
    n = ids.shape[0]
    if n == 0:
        return xp.zeros((n_segments, rows.shape[1]), dtype=rows.dtype, device=device)
    order = xp.argsort(ids, stable=True)
    s, v = xp.take(ids, order), xp.take(rows, order, axis=0)
    step = 1
    while step < n:
        # Hillis-Steele scan: a row adds the partial sum `step` rows back when that row has the same id. Unlike
        # differences of one cumulative sum, no large running total is subtracted, so nothing cancels.
        same = xp.reshape(s[step:] == s[:-step], (-1, 1))
        v = xp.concat([v[:step, :], v[step:, :] + xp.where(same, v[:-step, :], 0)], axis=0)
        step *= 2
    segments = xp.arange(n_segments, dtype=s.dtype, device=device)
    last = xp.clip(xp.searchsorted(s, segments, side="right") - 1, min=0)  # the last row of each run
    hit = xp.reshape(xp.take(s, last) == segments, (-1, 1))
    return xp.where(hit, xp.take(v, last, axis=0), 0)


def _unmask(xp: Any, shape: tuple, mask: Any, values: Any) -> Any:
    """zeros(shape) with x[mask] = values: the k-th selected element takes values[k], found by a cumulative sum."""
    lead, rest = math.prod(shape[: mask.ndim]), tuple(shape[mask.ndim :])
    device = device_of(values)
    m = xp.reshape(mask, (lead,))
    rank = xp.cumulative_sum(xp.astype(m, _index_dtype(xp, device))) - 1
    rows = xp.reshape(values, (-1, math.prod(rest)))
    if rows.shape[0] == 0:
        return xp.zeros(shape, dtype=values.dtype, device=device)
    picked = xp.take(rows, xp.clip(rank, min=0), axis=0)
    return xp.reshape(xp.where(xp.reshape(m, (-1, 1)), picked, 0), shape)


def add_rows(shape: tuple[int, ...], ids: Any, values: Any) -> Any:
    """zeros(shape) with values[i] added to row ids[i] (negative ids count from the end), on the device: the
    portable segmented sum."""
    xp = array_namespace(values)
    n_rows, rest = shape[0], tuple(shape[1:])
    values = xp.broadcast_to(values, tuple(ids.shape) + rest)
    ids = xp.reshape(xp.astype(ids, _index_dtype(xp, device_of(values))), (-1,))
    ids = xp.where(ids < 0, ids + n_rows, ids)
    rows = xp.reshape(values, (ids.shape[0], math.prod(rest)))
    return xp.reshape(segment_sum(ids, rows, n_rows), shape)


def add_at_positions(shape: tuple[int, ...], index: Any, values: Any) -> Any:
    """zeros(shape) with `values` added at `index` (slices, tuples): the flat positions computed on the host,
    then summed by the portable segmented sum on the device."""
    xp = array_namespace(values)
    positions = flat_positions(shape, index)
    flat_values = xp.reshape(xp.broadcast_to(values, positions.shape), (-1, 1))
    pos = xp.asarray(positions.reshape(-1), device=device_of(values))
    return xp.reshape(segment_sum(pos, flat_values, math.prod(shape)), shape)


def scatter_add(shape: tuple[int, ...], index: Any, values: Any) -> Any:
    """A fresh array of `shape`, zero except `values` added at `index`; repeated indices accumulate.

    A single integer array indexes rows (axis 0) and stays on the device (and lazy on Dask); a boolean array
    is a mask over the leading axes; any other index (slices, tuples) has its flat positions computed on the host.
    Each library's backend adds with its own accumulating primitive where it has one (`Backend.scatter_add`).
    """
    if type(index) is type(values) and array_namespace(index).isdtype(index.dtype, "bool"):
        return _unmask(array_namespace(values), shape, index, values)
    return backend_of(values).scatter_add(shape, index, values)
