"""Reused NumPy buffers for large results: a training step stops page-faulting the same arrays in every time.

glibc gives large freed blocks back to the kernel (and trims the top of its heap), so a step that allocates
arrays of the same large shapes again gets fresh pages, and pays a page fault for each 4 KiB of them, every step:
in the MLP of the benchmarks that is about half of the step. Instead of changing the process's allocator
(`tune_allocator` does that, but only when asked), the ops with large NumPy results take their output buffers
from here.

`empty(shape, dtype)` returns a buffer the pool made earlier if nothing but the pool refers to it any more, else
a new one, which the pool remembers. What it guarantees:

- A buffer still reachable in any way is never handed out again: a Variable's data, a view (it refers to its
  base), `np.asarray` (the same object), a memoryview or `torch.from_numpy` all hold a reference to it. The test is
  `sys.getrefcount` against the count of a buffer only the pool holds, both taken on an indexed expression
  (`buffers[i]`), never on a local variable: a tracer, debugger or coverage tool that snapshots frame locals
  (`frame.f_locals`) can then hold no reference to a pooled buffer that the count would miss or that would
  inflate the calibration, whether it is active at import, at use, or both; any reference it takes elsewhere
  only makes a buffer look held.
- A buffer someone keeps a weak reference to (`weakref.ref`, `weakref.finalize`, a WeakValueDictionary) is never
  handed out again either: once nothing else holds it, the pool forgets it, so the weak reference sees the result
  alive and intact, then dead.
- A buffer its last holder reshaped or froze in place (`a.shape = ...`, `a.flags.writeable = False`) is forgotten.
- Only results of MIN_BYTES (256 KiB) to MAX_BYTES (256 MiB) come from the pool; any other shape is a plain
  `np.empty` and leaves nothing in the pool.

When it gives memory back (a forgotten buffer's memory is freed once nothing else holds it), time counted in
pooled calls (calls of `empty` for a result in that range):

- beyond PER_SHAPE (4) buffers per (shape, dtype) or MAX_BYTES in all, it keeps no more, forgetting the least
  recently asked shapes first;
- a shape not asked for during the idle window gives its buffers back. The window is twice the longest reuse gap
  (the pooled calls between two calls for the same shape: in a training loop, at most those of one step) seen
  during the last IDLE_CALLS (512) to 2·IDLE_CALLS calls, at least MIN_IDLE_CALLS (16) and at most IDLE_CALLS.
  A training loop thus keeps its buffers (from its third step on, for steps of up to IDLE_CALLS pooled calls),
  and when the batch shape changes every step, the pool holds the buffers of the last step or two, not of every
  shape it saw. Such a shape keeps its key (no memory) until it was not asked for during IDLE_CALLS calls, so that
  a gap longer than the window is still seen, and widens it;
- `clear()` (`xdezero.backends.clear_buffer_pool()`) forgets every buffer, and the gaps it saw.
"""

from __future__ import annotations

import math
import sys
import threading
import weakref
from collections import OrderedDict

import numpy as np

MIN_BYTES = 256 << 10
PER_SHAPE = 4
MAX_BYTES = 256 << 20
# The idle window, in pooled calls (see above): at least MIN_IDLE_CALLS, at most IDLE_CALLS. A shape not asked for
# during IDLE_CALLS calls is forgotten altogether, its key too.
MIN_IDLE_CALLS = 16
IDLE_CALLS = 512


class _Pool:
    """The buffers of one (shape, dtype), the bytes of each, and the pooled call that last asked for them."""

    __slots__ = ("buffers", "nbytes", "used")

    def __init__(self, nbytes: int, used: int) -> None:
        self.buffers: list[np.ndarray] = []
        self.nbytes = nbytes
        self.used = used


_pools: OrderedDict[tuple, _Pool] = OrderedDict()  # (shape, dtype) -> its pool, least recently asked first
_idle: OrderedDict[tuple, _Pool] = OrderedDict()  # shapes whose buffers went back: kept to see their next gap
_held = 0  # bytes of all buffers in the pools
_clock = 0  # pooled calls so far
_window = MIN_IDLE_CALLS  # a shape not asked for during this many calls gives its buffers back
_longest = 0  # the longest reuse gap seen since the current period of IDLE_CALLS calls began
_period_end = IDLE_CALLS  # then `_window` follows the gaps of the period that ended (it shrinks with them)
_next_sweep = MIN_IDLE_CALLS + 1  # no shape goes idle before this call (a lower bound, set by `_sweep`)
_lock = threading.Lock()
_refcount = sys.getrefcount
_weakrefcount = weakref.getweakrefcount


def _free_refcount() -> int:
    """sys.getrefcount of a buffer that only its pool list refers to, as `empty` takes it: on `buffers[i]`,
    which adds the call's argument (measured rather than assumed, since CPython versions differ). No local
    variable ever names the buffer, so a tracer's snapshot of frame locals cannot add to the count."""
    buffers = [np.empty(1)]
    i = 0
    return _refcount(buffers[i])


_FREE = _free_refcount()


def empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of `shape` and `dtype` that nobody else holds."""
    global _held, _clock
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or nbytes > MAX_BYTES:
        return np.empty(shape, dtype)
    key = (shape, dtype)
    # Freeing a buffer can run weakref callbacks (weakref.finalize), and one may call `empty`: what the pool
    # forgets stays in `forgotten` until this call returns, after the lock.
    forgotten = None
    with _lock:
        _clock += 1
        if _clock >= _next_sweep:
            forgotten = _sweep()
        pool = _pools.get(key)
        if pool is None:
            pool = _idle.pop(key, None)
            if pool is None:
                pool = _Pool(nbytes, _clock)
            else:
                _saw_gap(_clock - pool.used)
                pool.used = _clock
            _pools[key] = pool
        else:
            # Hot path: kept flat. The buffer is only ever named as buffers[i], never bound to a local (see
            # _free_refcount).
            gap = _clock - pool.used
            pool.used = _clock
            if gap > _longest:
                _saw_gap(gap)
            _pools.move_to_end(key)
            buffers = pool.buffers
            for i in range(len(buffers)):
                if _refcount(buffers[i]) == _FREE:
                    if not _weakrefcount(buffers[i]) and _intact(buffers[i], shape, dtype):
                        return buffers[i]
                    # A weak reference would see it overwritten, or its last holder reshaped or froze it in
                    # place: forget it rather than hand it out.
                    forgotten = (forgotten, buffers.pop(i))
                    _held -= nbytes
                    break
        buffer = np.empty(shape, dtype)
        if len(pool.buffers) < PER_SHAPE:
            if _held + nbytes > MAX_BYTES:
                forgotten = (forgotten, _forget_least_recent(nbytes, key))
            pool.buffers.append(buffer)
            _held += nbytes
        return buffer


def _saw_gap(gap: int) -> None:
    """A shape asked for again `gap` pooled calls after its last call: the idle window grows to twice that."""
    global _longest, _window
    _longest = max(_longest, gap)
    _window = max(_window, min(2 * gap, IDLE_CALLS))


def _sweep() -> list[np.ndarray]:
    """Give back the buffers of the shapes idle for longer than the window (their keys move to `_idle`) and
    forget the keys idle for longer than IDLE_CALLS, both popped from the front of their least-recently-asked
    order; every IDLE_CALLS calls, set the window from the gaps of the last ones. Returns the buffers given back,
    for the caller to release after the lock. O(1) amortised: a shape is popped once per idle spell, and the next
    sweep waits for the first call at which the front shape can be idle."""
    global _held, _window, _longest, _period_end, _next_sweep
    if _clock >= _period_end:
        _window = max(MIN_IDLE_CALLS, min(2 * _longest, IDLE_CALLS))
        _longest = 0
        _period_end = _clock + IDLE_CALLS
    forgotten: list[np.ndarray] = []
    _next_sweep = min(_period_end, _clock + _window + 1)
    while _pools:
        key, pool = next(iter(_pools.items()))
        if _clock - pool.used <= _window:
            _next_sweep = min(_next_sweep, pool.used + _window + 1)
            break
        del _pools[key]
        _held -= len(pool.buffers) * pool.nbytes
        forgotten += pool.buffers
        pool.buffers.clear()
        _idle[key] = pool
    while _idle:
        key, pool = next(iter(_idle.items()))
        if _clock - pool.used <= IDLE_CALLS:
            _next_sweep = min(_next_sweep, pool.used + IDLE_CALLS + 1)
            break
        del _idle[key]
    return forgotten


def _forget_least_recent(nbytes: int, key: tuple) -> list[np.ndarray]:
    """Forget the least recently used shapes until `nbytes` more fit under MAX_BYTES; `key`, asked for just now,
    goes last and keeps its (then empty) pool. Returns their buffers, for the caller to release after the lock."""
    global _held
    forgotten: list[np.ndarray] = []
    while _held + nbytes > MAX_BYTES:
        dropped, pool = _pools.popitem(last=False)
        _held -= len(pool.buffers) * pool.nbytes
        forgotten += pool.buffers
        if dropped == key:
            pool.buffers.clear()
            _pools[key] = pool
    return forgotten


def _intact(buffer: np.ndarray, shape: tuple, dtype: np.dtype) -> bool:
    flags = buffer.flags
    return buffer.shape == shape and buffer.dtype == dtype and flags.writeable and flags.c_contiguous


def clear() -> None:
    """Forget every pooled buffer (each one's memory is freed once nothing else holds it), and the reuse gaps."""
    global _held, _window, _longest, _period_end, _next_sweep
    with _lock:
        forgotten = list(_pools.values())  # released after the lock, as in `empty`
        _pools.clear()
        _idle.clear()
        _held = 0
        _window, _longest = MIN_IDLE_CALLS, 0
        _period_end = _clock + IDLE_CALLS
        _next_sweep = _clock + MIN_IDLE_CALLS + 1
    del forgotten


def held_bytes() -> int:
    """Bytes of the buffers the pool keeps (in use or free)."""
    return _held
