"""Dask arrays: the same graph runs lazily, and computes to the NumPy gradients."""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
import xdezero.layers as L
from xdezero import Variable

da = pytest.importorskip("dask.array")


def _loss(x, W, t):
    h = F.tanh(F.matmul(x, W)) * 2.0 + F.exp(x).sum(axis=1, keepdims=True)
    return F.mean_squared_error(F.sigmoid(h), t)


def test_forward_and_backward_stay_lazy_and_match_numpy():
    rng = np.random.default_rng(0)
    x, W, t = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.uniform(size=(4, 2))
    lazy = [Variable(da.from_array(a, chunks=(2, -1))) for a in (x, W, t)]
    eager = [Variable(a) for a in (x, W, t)]
    y_lazy, y_eager = _loss(*lazy), _loss(*eager)
    y_lazy.backward()
    y_eager.backward()
    assert isinstance(y_lazy.data, da.Array) and isinstance(lazy[0].grad.data, da.Array)
    np.testing.assert_allclose(y_lazy.data.compute(), y_eager.data)
    for v_lazy, v_eager in zip(lazy[:2], eager[:2]):
        np.testing.assert_allclose(v_lazy.grad.data.compute(), v_eager.grad.data)


def test_a_linear_layer_trains_on_dask_arrays():
    rng = np.random.default_rng(1)
    x = da.from_array(rng.standard_normal((8, 3)), chunks=(4, -1))
    t = da.from_array(rng.standard_normal((8, 1)), chunks=(4, -1))
    layer = L.Linear(1, dtype=np.float64)
    losses = []
    for _ in range(5):
        loss = F.mean_squared_error(layer(x), t)
        layer.cleargrads()
        loss.backward()
        for p in layer.params():
            p.data = p.data - 0.1 * p.grad.data
        losses.append(float(loss.data.compute()))
    assert losses[-1] < losses[0]
