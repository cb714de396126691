"""Scatter-add with accumulation of repeated indices: absent from the array API standard.

`array_api_extra.at(x)[idx].add(v)` does not accumulate duplicates, so each library gets its own
accumulating primitive (`np.add.at`, `cupy.add.at`, torch `index_add_`, JAX `.at[].add`). The portable
fallback (array-api-strict, Dask, any other library) sorts the ids and sums each run of equal ids with a
segmented scan: O(n log n) time, O(n·d) memory, only gathers (no in-place writes), and lazy on Dask.
A boolean mask selects every element at most once, so its scatter is a gather on every library.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import array_api_compat
import numpy as np

from xdezero.backends._devices import to_numpy
from xdezero.backends._namespace import array_namespace, device_of


def _host_index(index: Any) -> Any:
    """The same index with every array component converted to NumPy (for computing flat positions)."""
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    if index is None or isinstance(index, int | slice | type(Ellipsis) | np.ndarray | list | np.integer):
        return index
    return to_numpy(index)  # a listed host transfer (see _devices)


def flat_positions(shape: tuple[int, ...], index: Any) -> np.ndarray:
    """Flat positions (in a C-ordered array of `shape`) of the elements that `x[index]` selects."""
    return np.arange(math.prod(shape)).reshape(shape)[_host_index(index)]


def _index_dtype(xp: Any, device: Any) -> Any:
    return xp.arange(0, device=device).dtype


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


def _add_rows(xp: Any, shape: tuple, ids: Any, values: Any) -> Any:
    """zeros(shape) with values[i] added to row ids[i] (negative ids count from the end), on the device."""
    n_rows, rest = shape[0], tuple(shape[1:])
    values = xp.broadcast_to(values, tuple(ids.shape) + rest)
    ids = xp.reshape(xp.astype(ids, _index_dtype(xp, device_of(values))), (-1,))
    ids = xp.where(ids < 0, ids + n_rows, ids)
    rows = xp.reshape(values, (ids.shape[0],) + rest)
    if array_api_compat.is_torch_array(values):
        return values.new_zeros(shape).index_add_(0, ids, rows)
    return xp.reshape(segment_sum(ids, xp.reshape(rows, (ids.shape[0], math.prod(rest))), n_rows), shape)


def scatter_add(shape: tuple[int, ...], index: Any, values: Any) -> Any:
    """A fresh array of `shape`, zero except `values` added at `index`; repeated indices accumulate.

    A single integer array indexes rows (axis 0) and stays on the device (and lazy on Dask); a boolean array
    is a mask over the leading axes; any other index (slices, tuples) has its flat positions computed on the host.
    """
    if type(index) is type(values) and array_namespace(index).isdtype(index.dtype, "bool"):
        return _unmask(array_namespace(values), shape, index, values)
    if isinstance(values, np.ndarray):
        out = np.zeros(shape, dtype=values.dtype)
        np.add.at(out, _host_index(index), values)
        return out
    if array_api_compat.is_cupy_array(values):
        cupy = sys.modules["cupy"]
        with values.device:  # CuPy allocates on the current device, which may not be the values' one
            out = cupy.zeros(shape, dtype=values.dtype)
            if hasattr(cupy.add, "at"):  # CuPy 13+; its older cupyx.scatter_add warns as deprecated since
                cupy.add.at(out, index, values)
            else:
                __import__("cupyx").scatter_add(out, index, values)
        return out
    if array_api_compat.is_jax_array(values):
        import jax.numpy as jnp

        return jnp.zeros(shape, dtype=values.dtype, device=device_of(values)).at[index].add(values)

    xp = array_namespace(values)
    if type(index) is type(values):
        return _add_rows(xp, shape, index, values)
    positions = flat_positions(shape, index)
    size = math.prod(shape)
    flat_values = xp.reshape(xp.broadcast_to(values, positions.shape), (-1,))
    flat_positions_ = positions.reshape(-1)
    if array_api_compat.is_torch_array(values):
        import torch

        pos = torch.as_tensor(flat_positions_, device=values.device)
        out = torch.zeros(size, dtype=values.dtype, device=values.device)
        return out.index_add_(0, pos, flat_values).reshape(shape)
    pos = xp.asarray(flat_positions_, device=device_of(values))
    return xp.reshape(segment_sum(pos, xp.reshape(flat_values, (-1, 1)), size), shape)
