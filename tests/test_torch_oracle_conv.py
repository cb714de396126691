"""PyTorch (CPU, autograd) as the oracle for conv2d, deconv2d and pooling: values and gradients.

Inputs are NumPy float64 arrays; xdezero runs on NumPy, torch.nn.functional on tensors.
Average pooling is compared with `count_include_pad=True` (torch's default): every window is divided by
KH·KW, padded zeros included, as xdezero's average_pooling does.
"""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
from xdezero import Variable

torch = pytest.importorskip("torch")
tf = torch.nn.functional

# (x shape, kernel, stride, pad)
CASES = [
    ((2, 3, 8, 8), (3, 3), (1, 1), (1, 1)),
    ((2, 3, 9, 7), (3, 2), (2, 2), (1, 0)),
    ((1, 4, 10, 11), (4, 4), (3, 2), (2, 1)),
    ((3, 2, 6, 6), (2, 2), (2, 2), (0, 0)),
    # stride 1 on NumPy runs its GEMMs over blocks of 8192 or more columns (padded pixels): several blocks here
    ((5, 3, 40, 50), (3, 3), (1, 1), (1, 1)),
    ((4, 2, 60, 70), (2, 3), (1, 1), (0, 2)),
]
IDS = [f"x{c[0]}-k{c[1]}-s{c[2]}-p{c[3]}" for c in CASES]


def _both(arrays):
    """xdezero Variables and torch leaf tensors (requires_grad) over the same data."""
    return [Variable(a) for a in arrays], [torch.tensor(a, requires_grad=True) for a in arrays]


def _compare(ours, theirs, vs, ts, seed=0):
    np.testing.assert_allclose(ours.data, theirs.detach().numpy(), rtol=1e-10, atol=1e-10)
    gy = np.random.default_rng(seed).standard_normal(ours.shape)
    ours.grad = Variable(gy)
    ours.backward()
    theirs.backward(torch.tensor(gy))
    for v, t in zip(vs, ts):
        np.testing.assert_allclose(v.grad.data, t.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("shape", "k", "s", "p"), CASES, ids=IDS)
def test_conv2d(shape, k, s, p):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(shape), rng.standard_normal((5, shape[1], *k)), rng.standard_normal(5)]
    vs, ts = _both(arrays)
    _compare(F.conv2d(*vs, stride=s, pad=p), tf.conv2d(*ts, stride=s, padding=p), vs, ts)


@pytest.mark.parametrize(("shape", "k", "s", "p"), CASES, ids=IDS)
def test_conv2d_double_backward(shape, k, s, p):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(shape), rng.standard_normal((5, shape[1], *k))]
    vs, ts = _both(arrays)
    y = F.sum(F.conv2d(*vs, stride=s, pad=p) ** 2)
    y.backward(create_graph=True)
    gx, gW = vs[0].grad, vs[1].grad
    for v in vs:
        v.cleargrad()
    F.sum(gx * F.sum(gW)).backward()  # needs d(gx)/dx, d(gx)/dW, d(gW)/dx, d(gW)/dW
    yt = (tf.conv2d(*ts, stride=s, padding=p) ** 2).sum()
    gx, gW = torch.autograd.grad(yt, ts, create_graph=True)
    (gx * gW.sum()).sum().backward()
    for v, t in zip(vs, ts):
        np.testing.assert_allclose(v.grad.data, t.grad.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("shape", "k", "s", "p"), CASES, ids=IDS)
def test_deconv2d(shape, k, s, p):
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(shape), rng.standard_normal((shape[1], 5, *k)), rng.standard_normal(5)]
    vs, ts = _both(arrays)
    _compare(F.deconv2d(*vs, stride=s, pad=p), tf.conv_transpose2d(*ts, stride=s, padding=p), vs, ts)


def test_deconv2d_outsize_as_output_padding():
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((3, 2, 3, 3))]
    vs, ts = _both(arrays)
    ours = F.deconv2d(*vs, stride=2, pad=1, outsize=(8, 10))
    theirs = tf.conv_transpose2d(*ts, stride=2, padding=1, output_padding=1)
    _compare(ours, theirs, vs, ts)


@pytest.mark.parametrize(("shape", "k", "s", "p"), CASES, ids=IDS)
def test_max_pooling(shape, k, s, p):
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        pytest.skip("torch.max_pool2d requires pad <= kernel / 2")
    x = np.random.default_rng(5).standard_normal(shape) - 1.0  # mostly negative: zero padding would show
    vs, ts = _both([x])
    _compare(F.pooling(vs[0], k, s, p), tf.max_pool2d(ts[0], k, s, p), vs, ts)


@pytest.mark.parametrize(("shape", "k", "s", "p"), CASES, ids=IDS)
def test_average_pooling(shape, k, s, p):
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        pytest.skip("torch.avg_pool2d requires pad <= kernel / 2")
    x = np.random.default_rng(6).standard_normal(shape)
    vs, ts = _both([x])
    theirs = tf.avg_pool2d(ts[0], k, s, p, count_include_pad=True)
    _compare(F.average_pooling(vs[0], k, s, p), theirs, vs, ts)
