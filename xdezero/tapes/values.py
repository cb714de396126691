"""How capture compares values (xdezero/tapes/step.py): across the two recordings of a signature, between what
the recorded ops leave and what a step's Variables hold, and between calls' arguments. Arrays compare by their
host copies (their bit patterns where NumPy lacks the dtype, bfloat16), constants by fingerprints, the settings an
op is built with by what identifies them; an attribute holding arrays of the step is a template with `BOUND` in
their places, which `fill` completes at each replay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xdezero.backends import Bits, dtype_name, is_array, to_host
from xdezero.core import Function, Variable

__all__ = [
    "BOUND",
    "fill",
    "fingerprint",
    "host_copy",
    "host_values",
    "moved_off_the_host",
    "same_values",
    "setting",
    "still_holds",
]


def setting(value: Any) -> Any:
    """What identifies a setting an op was built with across the two recordings (compared by `repr`): numbers,
    strings, tuples, slices and dicts by value; Variables and other ops by kind and shape; other objects by type."""
    if value is None or isinstance(value, bool | int | float | complex | str | bytes | np.generic | type):
        return value
    if isinstance(value, tuple | list):
        return (type(value).__name__, *map(setting, value))
    if isinstance(value, slice):
        return ("slice", setting(value.start), setting(value.stop), setting(value.step))
    if isinstance(value, dict):
        return ("dict", *((repr(k), setting(v)) for k, v in value.items()))
    if isinstance(value, Variable):
        return ("Variable", value.shape)
    if isinstance(value, Function):
        return ("op", type(value).__name__)
    if type(value).__repr__ is object.__repr__:  # its repr would be its address: the type is what compares
        return ("object", type(value).__name__)
    return repr(value)  # a dtype, a device


def host_copy(a: Any) -> np.ndarray | None:
    """A copy of `a`'s host values (None for None), which `still_holds` compares with later."""
    return None if a is None else host_values(a).copy()


def still_holds(host: np.ndarray | None, a: Any) -> bool:
    """Whether `a` still holds the values of the host copy `host` (None: nothing to compare)."""
    if host is None:
        return True
    if a is None:
        return False
    current = host_values(a)
    return current.shape == host.shape and bool(np.array_equal(current, host, equal_nan=current.dtype.kind in "fc"))


class _BoundMarker:
    """The place of an array of the step in an attribute's template (`BOUND`)."""

    def __repr__(self) -> str:  # the fingerprint of a template holds this, the same in both recordings
        return "<array of the step>"


BOUND = _BoundMarker()


def fill(template: Any, arrays: Sequence[Any]) -> Any:
    """The attribute's value for this replay: `template` with this replay's arrays in the marked places."""
    if template is BOUND:
        return arrays[0]
    it = iter(arrays)
    return type(template)(next(it) if v is BOUND else v for v in template)


def host_values(a: Any) -> np.ndarray:
    """`a`'s values on the host, for comparing: its bit pattern where NumPy has no such dtype (bfloat16)."""
    host = to_host(a)
    return host.bits if isinstance(host, Bits) else host


def fingerprint(values: Sequence[Any]) -> tuple[Any, ...]:
    """What identifies constant values across the two recordings: shape, dtype and the host copy's bytes."""
    out: list[Any] = []
    for v in values:
        for a in v if isinstance(v, tuple | list) else [v]:
            if is_array(a):
                host = host_values(a)
                out.append((host.shape, dtype_name(a), host.tobytes()))
            else:
                out.append(repr(a))
    return tuple(out)


def moved_off_the_host(previous: Any, value: Any) -> bool:
    """Whether `value` is `previous`, a NumPy array, taken to another library (a layer following its input)."""
    return (
        isinstance(previous, np.ndarray)
        and not isinstance(value, np.ndarray)
        and tuple(value.shape) == previous.shape
        and np.array_equal(host_values(value), previous)
    )


def same_values(a: Sequence[Any] | None, b: Sequence[Any] | None) -> bool:
    """Whether two lists of host arrays hold the same values (None: unknown, never the same)."""
    if a is None or b is None or len(a) != len(b):
        return False
    return all(x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
