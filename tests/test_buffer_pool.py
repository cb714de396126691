"""backends/_scratch.py, what the pool guarantees: a held result is never handed out again (under a tracer too,
from import or from use on), a weak reference sees a dropped result intact or dead; and when it gives memory
back: shapes gone idle, shapes it never pooled, the byte limit."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from xdezero.backends import _scratch as scratch

F32 = np.dtype(np.float32)
LARGE = (300, 1000)  # 1.2 MB of float32
SMALL = (256, 256)  # 256 KiB of float32: MIN_BYTES, the smallest pooled result


@pytest.fixture(autouse=True)
def empty_pool():
    scratch.clear()
    yield
    scratch.clear()


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _pooled() -> list[np.ndarray]:
    return [b for pool in scratch._pools.values() for b in pool.buffers]


def _check_accounting() -> None:
    assert scratch.held_bytes() == sum(b.nbytes for b in _pooled()) <= scratch.MAX_BYTES


def _read_locals(frame, event, arg):
    """A tracer as debuggers and variable-showing coverage tools have one: a snapshot of the frame's locals
    (`frame.f_locals`, which holds a reference to each) at every call and line."""
    len(frame.f_locals)
    return _read_locals


@contextmanager
def _traced():
    before = sys.gettrace()
    sys.settrace(_read_locals)
    try:
        yield
    finally:
        sys.settrace(before)


def _never_hands_out(held: np.ndarray, value: float) -> None:
    """`held` (filled with `value`) is not handed out by any number of calls for its shape, while the dropped
    results are: each call's result is dropped after the next call, so two buffers take turns besides `held`."""
    for _ in range(2 * scratch.PER_SHAPE):
        other = scratch.empty(held.shape, held.dtype)
        assert not np.shares_memory(other, held)
        other.fill(-1.0)
    assert (held == value).all()
    assert scratch.held_bytes() == 3 * held.nbytes


def test_a_held_result_is_never_handed_out_again_and_a_dropped_one_is():
    a = scratch.empty(LARGE, F32)
    a.fill(1.0)
    _never_hands_out(a, 1.0)
    _check_accounting()


def test_the_calibration_is_the_same_under_a_tracer():
    untraced = scratch._free_refcount()
    with _traced():
        traced = scratch._free_refcount()
    assert traced == untraced == scratch._FREE


def test_under_a_tracer_a_held_result_is_never_handed_out_and_a_dropped_one_still_is():
    with _traced():  # its snapshots of locals neither make `a` look free nor keep the others from being reused
        a = scratch.empty(LARGE, F32)
        a.fill(1.0)
        _never_hands_out(a, 1.0)
    _check_accounting()


# A fresh process whose whole import of xdezero runs under the tracer (a debugger or coverage tool started
# first), then uses the pool without it and with it.
_TRACED_IMPORT = """
import importlib
import sys

import numpy as np

# Imported untraced first: CPython 3.12.1's own `ast` module fails to import under a tracer reading f_locals.
# The pool's module is then executed again under the tracer, which is what the test is about: its calibration.
from xdezero.backends import _scratch as scratch

def read_locals(frame, event, arg):
    frame.f_locals
    return read_locals

sys.settrace(read_locals)
scratch = importlib.reload(scratch)
sys.settrace(None)

for traced in (False, True):
    sys.settrace(read_locals if traced else None)
    a = scratch.empty((300, 1000), np.float32)
    a.fill(1.0)
    for _ in range(2 * scratch.PER_SHAPE):
        b = scratch.empty((300, 1000), np.float32)
        assert not np.shares_memory(a, b), f"a held result was handed out again (tracer at use: {traced})"
        b.fill(-1.0)
    assert (a == 1.0).all()
    # Each b was dropped after the next call: two buffers took turns besides a's.
    assert scratch.held_bytes() == 3 * a.nbytes, f"dropped results were not reused (tracer at use: {traced})"
    sys.settrace(None)
    del a, b
    scratch.clear()
print("ok")
"""


def test_a_tracer_active_at_import_cannot_make_a_held_result_look_free():
    root = str(Path(scratch.__file__).resolve().parents[2])  # the xdezero under test, also in the child
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", _TRACED_IMPORT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_weak_reference_to_a_dropped_result_sees_it_intact_or_dead():
    a = scratch.empty(LARGE, F32)
    a.fill(7.0)
    ref = weakref.ref(a)
    del a
    for _ in range(2 * scratch.PER_SHAPE):
        scratch.empty(LARGE, F32).fill(-1.0)
        seen = ref()
        assert seen is None or (seen == 7.0).all()
        del seen
    assert ref() is None  # forgotten rather than kept: it holds no memory
    _check_accounting()


def test_a_weakref_callback_runs_after_the_pool_let_go_of_its_lock():
    """A finalizer runs when the pool forgets the buffer; were the pool's (non-reentrant) lock still held then, one
    that asks the pool for a buffer would deadlock."""
    called = []

    def on_free():
        if scratch._lock.acquire(blocking=False):  # free: a call of `empty` would not wait for ever
            scratch._lock.release()
            called.append(scratch.empty(LARGE, F32).shape)
        else:
            called.append("called with the pool's lock held")

    a = scratch.empty(LARGE, F32)
    weakref.finalize(a, on_free)
    del a
    for _ in range(3):
        scratch.empty(LARGE, F32)
    assert called == [LARGE]
    _check_accounting()


def test_a_shape_not_asked_for_gives_its_memory_back():
    old = scratch.empty(LARGE, F32)
    ref = weakref.ref(old)
    del old
    for _ in range(scratch.MIN_IDLE_CALLS + 1):  # another shape, its gaps of 1 call: the window stays the least
        scratch.empty(SMALL, F32)
    gc.collect()
    assert ref() is None
    assert scratch.held_bytes() == scratch.MIN_BYTES
    assert (LARGE, F32) not in scratch._pools
    for _ in range(scratch.IDLE_CALLS):  # its key, kept to learn longer gaps, goes too
        scratch.empty(SMALL, F32)
    assert list(scratch._pools) == [(SMALL, F32)] and not scratch._idle
    _check_accounting()


def test_a_shape_asked_for_again_and_again_keeps_its_buffer():
    kept = scratch.empty(LARGE, F32)
    address = _address(kept)
    del kept
    for k in range(3 * scratch.IDLE_CALLS):
        a = scratch.empty(LARGE, F32) if k % 10 == 0 else scratch.empty(SMALL, F32)
        if k % 10 == 0:
            assert _address(a) == address
        del a
    assert scratch.held_bytes() == 4 * LARGE[0] * LARGE[1] + scratch.MIN_BYTES  # one buffer of each shape
    _check_accounting()


def test_a_long_step_learns_its_gap_and_keeps_its_buffers():
    """A step of 100 shapes asked for once each (gaps of 100 pooled calls, above MIN_IDLE_CALLS): the window
    grows to the gap, and from the third step on every buffer comes from the pool."""
    shapes = [(256 + j, 256) for j in range(100)]
    for step in range(5):
        before = {id(b) for b in _pooled()}
        made = 0
        for shape in shapes:
            a = scratch.empty(shape, F32)
            made += id(a) not in before
            del a
        if step >= 2:
            assert made == 0, f"step {step}: {made} buffers made afresh"
    assert scratch._window >= 100
    _check_accounting()


def test_shapes_that_change_every_step_hold_only_the_last_steps():
    """As an MLP trained over many batch sizes: each step asks for its batch shape (four calls, two results held
    at once) and for a fixed weight shape; the pool must not keep every batch shape it ever saw."""
    weight = (512, 512)
    for n in range(256, 316):
        batch = (n, 256)
        h1 = scratch.empty(batch, F32)
        h2 = scratch.empty(batch, F32)
        del h1
        h3 = scratch.empty(batch, F32)
        del h2, h3
        scratch.empty(batch, F32)
        scratch.empty(weight, F32)
        _check_accounting()
    # The longest gap is 5 calls (the weight's), so the window is MIN_IDLE_CALLS: it spans the batch shapes of
    # the last few steps, two buffers each, besides the weight's buffer.
    steps = scratch.MIN_IDLE_CALLS // 5 + 1
    assert scratch.held_bytes() <= 4 * 512 * 512 + steps * 2 * 4 * 315 * 256, scratch.held_bytes()
    assert len(scratch._pools) == steps + 1


def test_a_shape_too_large_to_pool_leaves_no_entry(monkeypatch):
    monkeypatch.setattr(scratch, "MAX_BYTES", 1 << 20)
    for n in range(100):
        a = scratch.empty(((1 << 18) + 1 + n,), F32)  # a new shape of just over 1 MiB each time
        assert a.shape == ((1 << 18) + 1 + n,)
    small = scratch.empty((10, 10), F32)
    assert small.shape == (10, 10)
    assert not scratch._pools and not scratch._idle and scratch.held_bytes() == 0


def test_the_total_stays_within_max_bytes(monkeypatch):
    monkeypatch.setattr(scratch, "MAX_BYTES", 3 * 4 * LARGE[0] * LARGE[1])
    held = []
    for rows in range(300, 320):  # twenty shapes, some results held, least recently used forgotten first
        a = scratch.empty((rows, 1000), F32)
        if rows % 3 == 0:
            held.append(a)
        _check_accounting()
    for a in held:
        a.fill(2.0)
    assert all((a == 2.0).all() for a in held)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_are_uninitialised_c_contiguous_arrays_of_the_shape_and_dtype(dtype):
    for shape in (SMALL, LARGE, (2, 3, 50000)):
        for _ in range(3):
            a = scratch.empty(shape, dtype)
            assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
            assert a.base is None  # its own memory, not a view of something else
            del a
