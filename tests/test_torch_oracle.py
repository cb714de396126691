"""PyTorch (CPU) as an independent oracle for values and gradients, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xdezero
import xdezero.functions as F
from tests.helpers import asarray, to_numpy
from xdezero import Variable

torch = pytest.importorskip("torch")
tF = torch.nn.functional


def _t(a, requires_grad=False):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=requires_grad)


@pytest.mark.parametrize("dtype", ["int64", "uint8"])
def test_softmax_cross_entropy(xp, dtype):
    rng = np.random.default_rng(0)
    x_np, t_np = rng.standard_normal((7, 5)) * 3, rng.integers(0, 5, 7)
    for f in (F.softmax_cross_entropy, F.softmax_cross_entropy_simple):
        x = Variable(asarray(xp, x_np))
        y = f(x, asarray(xp, t_np, dtype=dtype))
        y.backward()
        xt = _t(x_np, True)
        yt = tF.cross_entropy(xt, torch.tensor(t_np))
        yt.backward()
        np.testing.assert_allclose(float(to_numpy(y)), yt.item(), rtol=1e-10)
        np.testing.assert_allclose(to_numpy(x.grad), xt.grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("axis", [1, 0, -1])
def test_log_softmax(xp, axis):
    rng = np.random.default_rng(1)
    x_np, gy_np = rng.standard_normal((4, 6)) * 5, rng.standard_normal((4, 6))
    x = Variable(asarray(xp, x_np))
    y = F.log_softmax(x, axis=axis)
    y.grad = Variable(asarray(xp, gy_np))
    y.backward()
    xt = _t(x_np, True)
    yt = tF.log_softmax(xt, dim=axis)
    yt.backward(_t(gy_np))
    np.testing.assert_allclose(to_numpy(y), yt.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(to_numpy(x.grad), xt.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_embed_id(xp):
    rng = np.random.default_rng(2)
    W_np, ids = rng.standard_normal((6, 3)), np.array([[5, 0, 5], [5, 2, 0]])
    gy_np = rng.standard_normal((2, 3, 3))
    W = Variable(asarray(xp, W_np))
    y = F.embed_id(asarray(xp, ids), W)
    y.grad = Variable(asarray(xp, gy_np))
    y.backward()
    Wt = _t(W_np, True)
    yt = tF.embedding(torch.tensor(ids), Wt)
    yt.backward(_t(gy_np))
    np.testing.assert_allclose(to_numpy(y), yt.detach().numpy())
    np.testing.assert_allclose(to_numpy(W.grad), Wt.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 2)])
def test_batch_norm(xp, shape):
    rng = np.random.default_rng(3)
    x_np, gy_np = rng.standard_normal(shape) * 2 + 0.5, rng.standard_normal(shape)
    gamma_np, beta_np = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    mean_np, var_np = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    decay, eps = 0.9, 2e-5

    mean, var = xdezero.Parameter(asarray(xp, mean_np)), xdezero.Parameter(asarray(xp, var_np))
    rm, rv = _t(mean_np), _t(var_np)
    for train in (True, False):
        x, gamma, beta = (Variable(asarray(xp, a)) for a in (x_np, gamma_np, beta_np))
        xt, gt, bt = (_t(a, True) for a in (x_np, gamma_np, beta_np))
        with xdezero.using_config("train", train):
            y = F.batch_norm(x, gamma, beta, mean, var, decay=decay, eps=eps)
        yt = tF.batch_norm(xt, rm, rv, gt, bt, training=train, momentum=1 - decay, eps=eps)
        y.grad = Variable(asarray(xp, gy_np))
        y.backward()
        yt.backward(_t(gy_np))
        np.testing.assert_allclose(to_numpy(y), yt.detach().numpy(), rtol=1e-9, atol=1e-12)
        for ours, theirs in ((x, xt), (gamma, gt), (beta, bt)):
            np.testing.assert_allclose(to_numpy(ours.grad), theirs.grad.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(to_numpy(mean), rm.numpy(), rtol=1e-12)
        np.testing.assert_allclose(to_numpy(var), rv.numpy(), rtol=1e-12)
