"""Reused NumPy buffers for large results: a training step stops page-faulting the same arrays in every time.

glibc gives large freed blocks back to the kernel (and trims the top of its heap), so a step that allocates
arrays of the same large shapes again gets fresh pages, and pays a page fault for each 4 KiB of them, every step:
in the MLP of the benchmarks that is about half of the step. Instead of changing the process's allocator
(`tune_allocator` does that, but only when asked), the ops with large NumPy results take their output buffers
from here.

`empty(shape, dtype)` returns a buffer the pool made earlier if nothing but the pool refers to it any more, else
a new one, which the pool remembers. A buffer still reachable in any way is never handed out again: a Variable's
data, a view (it refers to its base), `np.asarray` (the same object), a memoryview or `torch.from_numpy` all hold a
reference to it. Only results of 256 KiB or more come from the pool, at most 4 buffers per (shape, dtype) and
256 MiB in all; `clear()` (`xdezero.backends.clear_buffer_pool()`) forgets them all (their memory is freed once
nothing else holds them).
"""

from __future__ import annotations

import math
import sys
import threading
from collections import OrderedDict

import numpy as np

MIN_BYTES = 256 << 10
PER_SHAPE = 4
MAX_BYTES = 256 << 20

_pools: OrderedDict[tuple, list] = OrderedDict()  # (shape, dtype) -> buffers, least recently used first
_held = 0  # bytes of all buffers in the pools
_lock = threading.Lock()
_refcount = sys.getrefcount


def _free_refcount() -> int:
    """sys.getrefcount of a buffer that only its pool list refers to, as seen from `empty`'s loop (the loop
    variable and the call's argument add theirs; measured rather than assumed, since CPython versions differ)."""
    pool = [np.empty(1)]
    for buffer in pool:
        return _refcount(buffer)
    raise AssertionError  # unreachable


_FREE = _free_refcount()


def empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` and `dtype` that nobody else holds."""
    global _held
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    key = (shape, dtype)
    with _lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = []
        else:
            _pools.move_to_end(key)
            stale = None
            for buffer in pool:  # a plain loop: _FREE was measured in one (see _free_refcount)
                if _refcount(buffer) == _FREE:
                    if _intact(buffer, shape, dtype):
                        return buffer
                    stale = buffer
                    break
            if stale is not None:
                # Its last holder reshaped or froze it in place (`a.shape = ...`, `a.flags.writeable = False`):
                # forget it rather than hand out an array that no longer fits the key.
                pool[:] = [b for b in pool if b is not stale]
                _held -= stale.nbytes
        buffer = np.empty(shape, dtype)
        if len(pool) < PER_SHAPE and nbytes <= MAX_BYTES:
            while _held + nbytes > MAX_BYTES:  # forget the least recently used shapes first
                _, dropped = _pools.popitem(last=False)
                _held -= sum(b.nbytes for b in dropped)
                if dropped is pool:
                    pool = _pools[key] = []
            pool.append(buffer)
            _held += nbytes
        return buffer


def _intact(buffer: np.ndarray, shape: tuple, dtype: np.dtype) -> bool:
    flags = buffer.flags
    return buffer.shape == shape and buffer.dtype == dtype and flags.writeable and flags.c_contiguous


def clear() -> None:
    """Forget every pooled buffer (each one's memory is freed once nothing else holds it)."""
    global _held
    with _lock:
        _pools.clear()
        _held = 0


def held_bytes() -> int:
    """Bytes of the buffers the pool keeps (in use or free)."""
    return _held
