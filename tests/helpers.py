"""Small helpers shared by the tests: moving arrays between a backend and NumPy."""

from __future__ import annotations

import numpy as np

from tests.conftest import DeviceNamespace
from xdezero import Variable, backends
from xdezero import functions as F
from xdezero.backends import library_name


def to_numpy(a) -> np.ndarray:
    """Any backend array (or Variable) as a NumPy array, for comparisons."""
    return backends.to_numpy(a.data if isinstance(a, Variable) else a)


def asarray(xp, a, dtype=None):
    """A NumPy array (or nested list) as an array of the backend `xp`, keeping its dtype unless given."""
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype)
    return xp.asarray(a)


def library(xp) -> str:
    """The library name that xdezero.backends.library_name reports for arrays of `xp`."""
    return library_name(xp.asarray(np.zeros(1)))


def fixture_device(xp):
    """The device a device backend's `xp` creates arrays on; None for a backend using its library's default."""
    return xp.default_device if isinstance(xp, DeviceNamespace) else None


def train_step(model, optimizer, loss=None):
    """A training step function: forward, loss (softmax cross-entropy unless given), cleargrads, backward,
    update; returns the loss."""
    loss_of = loss or F.softmax_cross_entropy

    def step(x, t):
        value = loss_of(model(x), t)
        model.cleargrads()
        value.backward()
        optimizer.update()
        return value

    return step
