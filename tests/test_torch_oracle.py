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


def test_hidden_linear_layers_to_the_third_order(xp):
    """A hidden layer's backward is one node (LinearGrad) whose backward is again products: the gradient of a
    gradient penalty, and a third derivative along a direction, against torch's autograd."""
    rng = np.random.default_rng(7)
    x_np = rng.standard_normal((5, 4))
    W1_np, b1_np, W2_np, b2_np = (rng.standard_normal(s) for s in ((4, 6), (6,), (6, 3), (3,)))
    v_np = rng.standard_normal((5, 4))

    def ours():
        x, W1, b1, W2, b2 = (Variable(asarray(xp, a)) for a in (x_np, W1_np, b1_np, W2_np, b2_np))
        y = F.sum(F.linear(F.sigmoid(F.linear(x, W1, b1)), W2, b2) ** 3)
        y.backward(create_graph=True)
        gx, gW1, gW2 = x.grad, W1.grad, W2.grad
        x.cleargrad(), W1.cleargrad(), W2.cleargrad()
        penalty = F.sum(gx * gx) + F.sum(gW1 * gW1) + F.sum(gW2 * gW2)
        penalty.backward(create_graph=True)
        second = x.grad
        x.cleargrad(), W1.cleargrad(), W2.cleargrad()
        F.sum(second * Variable(asarray(xp, v_np))).backward()
        return float(to_numpy(penalty)), to_numpy(second), to_numpy(x.grad), to_numpy(W2.grad)

    def reference():
        x, W1, b1, W2, b2 = (_t(a, True) for a in (x_np, W1_np, b1_np, W2_np, b2_np))
        y = (tF.linear(torch.sigmoid(tF.linear(x, W1.T, b1)), W2.T, b2) ** 3).sum()
        gx, gW1, gW2 = torch.autograd.grad(y, (x, W1, W2), create_graph=True)
        penalty = (gx * gx).sum() + (gW1 * gW1).sum() + (gW2 * gW2).sum()
        (second,) = torch.autograd.grad(penalty, (x,), create_graph=True)
        third_x, third_W2 = torch.autograd.grad((second * _t(v_np)).sum(), (x, W2))
        return penalty.item(), second.detach().numpy(), third_x.numpy(), third_W2.numpy()

    for got, want in zip(ours(), reference(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_a_first_layers_weight_gradient_differentiated_again(xp):
    """The first layer's backward (data in, so only gW: LinearGradW) differentiated twice, against torch."""
    rng = np.random.default_rng(8)
    x_np = rng.standard_normal((5, 4))
    W1_np, W2_np = rng.standard_normal((4, 6)), rng.standard_normal((6, 3))

    W1, W2 = Variable(asarray(xp, W1_np)), Variable(asarray(xp, W2_np))
    y = F.sum(F.linear(F.tanh(F.linear(asarray(xp, x_np), W1)), W2) ** 2)
    y.backward(create_graph=True)
    gW1 = W1.grad
    W1.cleargrad(), W2.cleargrad()
    F.sum(gW1 * gW1 * gW1).backward()

    W1t, W2t = _t(W1_np, True), _t(W2_np, True)
    yt = ((torch.tanh(_t(x_np) @ W1t) @ W2t) ** 2).sum()
    (gW1t,) = torch.autograd.grad(yt, (W1t,), create_graph=True)
    dW1, dW2 = torch.autograd.grad((gW1t**3).sum(), (W1t, W2t))
    np.testing.assert_allclose(to_numpy(gW1), gW1t.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(to_numpy(W1.grad), dW1.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(to_numpy(W2.grad), dW2.numpy(), rtol=1e-9, atol=1e-12)
