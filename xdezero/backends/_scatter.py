"""Scatter-add with accumulation of repeated indices: absent from the array API standard.

`array_api_extra.at(x)[idx].add(v)` does not accumulate duplicates, so each library gets its own
accumulating primitive, with a portable one-hot matmul fallback.
A boolean mask selects every element at most once, so its scatter is a gather on every library.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import array_api_compat
import numpy as np

from xdezero.backends._namespace import array_namespace, device_of


def _host_index(index: Any) -> Any:
    """The same index with every array component converted to NumPy (for computing flat positions)."""
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    if index is None or isinstance(index, int | slice | type(Ellipsis) | np.ndarray | list | np.integer):
        return index
    if array_api_compat.is_cupy_array(index):
        return index.get()
    try:
        return np.asarray(index)
    except (TypeError, ValueError, RuntimeError):
        return np.from_dlpack(index)


def flat_positions(shape: tuple, index: Any) -> np.ndarray:
    """Flat positions (in a C-ordered array of `shape`) of the elements that `x[index]` selects."""
    return np.arange(math.prod(shape)).reshape(shape)[_host_index(index)]


def _index_dtype(xp: Any, device: Any) -> Any:
    return xp.arange(0, device=device).dtype


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


def scatter_add(shape: tuple, index: Any, values: Any) -> Any:
    """A fresh array of `shape`, zero except `values` added at `index`; repeated indices accumulate."""
    xp = array_namespace(values)
    if type(index) is type(values) and xp.isdtype(index.dtype, "bool"):
        return _unmask(xp, shape, index, values)
    if isinstance(values, np.ndarray):
        out = np.zeros(shape, dtype=values.dtype)
        np.add.at(out, _host_index(index), values)
        return out
    if array_api_compat.is_cupy_array(values):
        cupy, cupyx = sys.modules["cupy"], __import__("cupyx")
        out = cupy.zeros(shape, dtype=values.dtype)
        cupyx.scatter_add(out, index, values)
        return out
    if array_api_compat.is_jax_array(values):
        import jax.numpy as jnp

        return jnp.zeros(shape, dtype=values.dtype).at[index].add(values)

    positions = flat_positions(shape, index)
    size = math.prod(shape)
    flat_values = xp.reshape(xp.broadcast_to(values, positions.shape), (-1,))
    flat_positions_ = positions.reshape(-1)
    if array_api_compat.is_torch_array(values):
        import torch

        pos = torch.as_tensor(flat_positions_, device=values.device)
        out = torch.zeros(size, dtype=values.dtype, device=values.device)
        return out.index_add_(0, pos, flat_values).reshape(shape)
    # Portable fallback: one-hot (size x n) matrix times the values; O(size * n) memory.
    device = device_of(values)
    pos = xp.asarray(flat_positions_, device=device)
    one_hot = xp.astype(xp.arange(size, device=device)[:, None] == pos[None, :], values.dtype)
    return xp.reshape(one_hot @ flat_values, shape)
