"""Small helpers shared by the tests: moving arrays between a backend and NumPy."""

from __future__ import annotations

import numpy as np

from xdezero import Variable
from xdezero.backends import library_name


def to_numpy(a) -> np.ndarray:
    """Any backend array (or Variable) as a NumPy array, for comparisons."""
    if isinstance(a, Variable):
        a = a.data
    if library_name(a) == "cupy":
        return a.get()
    if library_name(a) == "torch":
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except (TypeError, ValueError, RuntimeError):
        return np.from_dlpack(a)


def asarray(xp, a, dtype=None):
    """A NumPy array (or nested list) as an array of the backend `xp`, keeping its dtype unless given."""
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype)
    return xp.asarray(a)


def library(xp) -> str:
    """The library name that xdezero.backends.library_name reports for arrays of `xp`."""
    return library_name(xp.asarray(np.zeros(1)))
