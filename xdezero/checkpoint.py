"""Checkpoints: models, optimizers, data loaders and the random streams in one file, to resume a run exactly.

    xdezero.save_checkpoint("run.npz", model=model, optimizer=optimizer, loader=loader)
    ...                                    # a new process, the same objects built the same way
    xdezero.load_checkpoint("run.npz", model=model, optimizer=optimizer, loader=loader)

Each object is saved through its `state_dict()` and restored through its `load_state_dict()`, so any object
with those two methods can be part of a checkpoint. The file is an `.npz` archive with no pickle in it (the
structure as JSON, every array as its own entry; see `xdezero/_files.py`), written atomically.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from xdezero._files import FileLike, atomic_write, opened, read_state, write_state
from xdezero.backends import random_state, set_random_state

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "write_checkpoint",
    "restore",
    "random_streams",
    "set_random_streams",
    "check_objects",
]

FORMAT = "xdezero checkpoint 1"
RANDOM = "random"  # the entry of the random streams; not a name for an object


def check_objects(what: str, objects: dict[str, Any], method: str) -> None:
    """Refuse no objects, the reserved name, or an object without `method` (state_dict or load_state_dict)."""
    if not objects:
        raise TypeError(f"{what}: name the objects to {method.split('_')[0]}, e.g. {what}(file, model=model)")
    if RANDOM in objects:
        raise ValueError(f"{what}: {RANDOM!r} names the random streams in a checkpoint; call the object otherwise")
    for name, obj in objects.items():
        if not callable(getattr(obj, method, None)):
            raise TypeError(
                f"{what}: {name}={type(obj).__name__} has no {method}() (models, optimizers and data loaders have)"
            )


def random_streams() -> dict[str, Any]:
    """The state of NumPy's global generator and of xdezero's own streams (`xdezero.seed`)."""
    return {"numpy": np.random.get_state(legacy=False), "xdezero": random_state()}


def set_random_streams(streams: dict[str, Any]) -> None:
    """Set the streams to what `random_streams` returned; on an error, none has changed."""
    previous = np.random.get_state(legacy=False)
    try:
        np.random.set_state(_numpy_state(streams["numpy"]))
        set_random_state(streams["xdezero"])
    except (KeyError, TypeError, ValueError) as e:
        np.random.set_state(previous)
        raise ValueError(f"the random streams cannot be restored ({type(e).__name__}: {e})") from e


def save_checkpoint(file: FileLike, **objects: Any) -> None:
    """Write the state of each named object (a Layer, an Optimizer, a DataLoader, ...) and of the random streams
    (NumPy's global generator and xdezero's own, `xdezero.seed`) to `file`: a path, written atomically and
    through a symlink to its target, or a writable binary file object. `.npz` is appended to a path that lacks
    it."""
    check_objects("save_checkpoint", objects, "state_dict")
    state = {name: obj.state_dict() for name, obj in objects.items()}
    state[RANDOM] = random_streams()
    write_checkpoint(file, state)


def write_checkpoint(file: FileLike, state: dict[str, Any]) -> None:
    """Write a checkpoint's whole state (objects' states by name, 'random') as `save_checkpoint` does."""
    state = {**state, "format": FORMAT}
    if not hasattr(file, "write"):
        file = os.fspath(file)
        file = file if file.endswith(".npz") else file + ".npz"
    atomic_write(file, lambda f: write_state(f, state), "save_checkpoint")


def read_checkpoint(file: FileLike) -> dict[str, Any]:
    """Everything a checkpoint holds, as nested dicts of numbers and NumPy arrays (dtypes NumPy lacks as
    `xdezero.backends.Bits`), keyed by the names it was saved with, plus 'random' and 'format'."""
    where = f"read_checkpoint({os.fspath(file)!r})" if not hasattr(file, "read") else "read_checkpoint"
    with opened(file, where, "a checkpoint that save_checkpoint wrote") as f:
        state = read_state(f, where)
    if state.get("format") != FORMAT:
        raise ValueError(
            f"{where}: not a checkpoint of this xdezero (format {state.get('format')!r}, expected {FORMAT!r})"
        )
    return state


def load_checkpoint(file: FileLike, **objects: Any) -> dict[str, Any]:
    """Restore each named object from `file` and set the random streams to where they were when it was saved
    (they win over whatever this process drew before). Every object is checked before the call returns: a name
    the file lacks, or a state that does not fit its object, is an error naming it, and then no object and no
    random stream has changed. Returns what the file holds (see `read_checkpoint`), for entries of your own."""
    check_objects("load_checkpoint", objects, "load_state_dict")
    state = read_checkpoint(file)
    restore(state, objects, state[RANDOM])
    return state


def restore(state: dict[str, Any], objects: dict[str, Any], streams: dict[str, Any] | None) -> None:
    """Load `state[name]` into each object and set the random streams (unless None); on any error, put back the
    objects already loaded, leave the streams alone, and raise an error naming the object."""
    missing = sorted(set(objects) - set(state))
    if missing:
        saved = sorted(k for k in state if k not in (RANDOM, "format"))
        raise ValueError(f"load_checkpoint: the file holds no {', '.join(map(repr, missing))} (it holds {saved})")
    before: dict[str, dict[str, Any] | None] = {}
    try:
        for name, obj in objects.items():
            snapshot = _snapshot(obj)
            try:
                obj.load_state_dict(state[name])
            except (TypeError, ValueError, RuntimeError) as e:
                raise type(e)(f"load_checkpoint: {name}: {e}") from e
            before[name] = snapshot
        if streams is not None:
            try:
                set_random_streams(streams)
            except ValueError as e:
                raise ValueError(f"load_checkpoint: {e}") from e
    except BaseException:
        for name, snapshot in before.items():  # put back the objects restored before the failure
            if snapshot is not None:
                objects[name].load_state_dict(snapshot)
        raise


def _snapshot(obj: Any) -> dict[str, Any] | None:
    """`obj.state_dict()` to roll back to, or None where there is none yet (a model whose parameters are lazy)."""
    try:
        return obj.state_dict()
    except (ValueError, RuntimeError):
        return None


def _numpy_state(saved: dict[str, Any]) -> dict[str, Any]:
    """NumPy's legacy global state as `np.random.get_state(legacy=False)` gave it, its key back as uint32."""
    state = dict(saved)
    state["state"] = {"key": np.asarray(saved["state"]["key"], dtype=np.uint32), "pos": int(saved["state"]["pos"])}
    return state
