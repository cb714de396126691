"""conv2d, deconv2d, pooling, im2col/col2im: values against plain-loop NumPy references, derivatives of
order 1 and 2 against finite differences, dtypes and errors, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, to_numpy
from xdezero import Variable
from xdezero.functions.conv import get_conv_outsize, get_deconv_outsize, pair
from xdezero.testing import check_gradients

# --- independent references (plain loops) --------------------------------------------------------------


def _pad(x, p, value=0.0):
    (ph, pw) = p
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def ref_im2col(x, k, s, p, value=0.0):
    """(N, C, KH, KW, OH, OW)."""
    n, c, h, w = x.shape
    oh, ow = _out(h, k[0], s[0], p[0]), _out(w, k[1], s[1], p[1])
    xp_ = _pad(x, p, value)
    col = np.zeros((n, c, k[0], k[1], oh, ow), dtype=x.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            for y in range(oh):
                for z in range(ow):
                    col[:, :, i, j, y, z] = xp_[:, :, i + s[0] * y, j + s[1] * z]
    return col


def ref_col2im(col, shape, k, s, p):
    n, c, h, w = shape
    oh, ow = col.shape[4:]
    out = np.zeros((n, c, h + 2 * p[0], w + 2 * p[1]), dtype=col.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            for y in range(oh):
                for z in range(ow):
                    out[:, :, i + s[0] * y, j + s[1] * z] += col[:, :, i, j, y, z]
    return out[:, :, p[0] : p[0] + h, p[1] : p[1] + w]


def ref_conv2d(x, W, b, s, p):
    n, _, h, w = x.shape
    oc, _, kh, kw = W.shape
    oh, ow = _out(h, kh, s[0], p[0]), _out(w, kw, s[1], p[1])
    xp_ = _pad(x, p)
    y = np.zeros((n, oc, oh, ow))
    for a in range(n):
        for o in range(oc):
            for i in range(oh):
                for j in range(ow):
                    window = xp_[a, :, i * s[0] : i * s[0] + kh, j * s[1] : j * s[1] + kw]
                    y[a, o, i, j] = np.sum(window * W[o]) + (0.0 if b is None else b[o])
    return y


def ref_deconv2d(x, W, b, s, p, outsize=None):
    n, c, h, w = x.shape
    _, oc, kh, kw = W.shape
    oh, ow = outsize or (s[0] * (h - 1) + kh - 2 * p[0], s[1] * (w - 1) + kw - 2 * p[1])
    y = np.zeros((n, oc, oh + 2 * p[0] + kh + s[0], ow + 2 * p[1] + kw + s[1]))
    for a in range(n):
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    y[a, :, i * s[0] : i * s[0] + kh, j * s[1] : j * s[1] + kw] += x[a, ci, i, j] * W[ci]
    y = y[:, :, p[0] : p[0] + oh, p[1] : p[1] + ow]
    return y if b is None else y + b[None, :, None, None]


def ref_pool(x, k, s, p, mode):
    n, c, h, w = x.shape
    oh, ow = _out(h, k[0], s[0], p[0]), _out(w, k[1], s[1], p[1])
    xp_ = _pad(x, p, -np.inf if mode == "max" else 0.0)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = xp_[:, :, i * s[0] : i * s[0] + k[0], j * s[1] : j * s[1] + k[1]]
            y[:, :, i, j] = window.max(axis=(2, 3)) if mode == "max" else window.sum(axis=(2, 3)) / (k[0] * k[1])
    return y


# --- the table -----------------------------------------------------------------------------------------

# (x shape, kernel, stride, pad): stride/pad combos incl. non-square, uncovered trailing rows, pad > 0
GEOMETRIES = [
    ((2, 3, 5, 6), (3, 3), (1, 1), (0, 0)),
    ((2, 3, 7, 6), (3, 2), (2, 2), (1, 1)),
    ((1, 2, 6, 5), (2, 3), (2, 1), (0, 1)),
    ((1, 2, 5, 5), (1, 1), (3, 3), (0, 0)),
    ((2, 1, 4, 4), (3, 3), (1, 1), (2, 2)),
]
GEOM_IDS = [f"x{g[0]}-k{g[1]}-s{g[2]}-p{g[3]}" for g in GEOMETRIES]
# pooling accepts pad <= kernel // 2 (PyTorch's rule), so no window is all padding
POOL_GEOMETRIES = [g for g in GEOMETRIES if g[3][0] <= g[1][0] // 2 and g[3][1] <= g[1][1] // 2]


def _rng():
    return np.random.default_rng(7)


def _conv_arrays(geom, bias=True):
    shape, k, _, _ = geom
    rng = _rng()
    x = rng.standard_normal(shape)
    W = rng.standard_normal((3, shape[1], *k))
    b = rng.standard_normal(3) if bias else None
    return x, W, b


def _deconv_arrays(geom):
    shape, k, _, _ = geom
    rng = _rng()
    x = rng.standard_normal(shape)
    W = rng.standard_normal((shape[1], 3, *k))
    return x, W, rng.standard_normal(3)


def _close(actual, expected, rtol=1e-10, atol=1e-10):
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=rtol, atol=atol)


# --- forward values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("geom", GEOMETRIES, ids=GEOM_IDS)
@pytest.mark.parametrize("fn", [F.conv2d, F.conv2d_simple], ids=["conv2d", "conv2d_simple"])
@pytest.mark.parametrize("bias", [True, False], ids=["b", "nob"])
def test_conv2d_forward(xp, geom, fn, bias):
    x, W, b = _conv_arrays(geom, bias)
    _, _, s, p = geom
    args = [asarray(xp, x), asarray(xp, W), None if b is None else asarray(xp, b)]
    y = fn(*args, stride=s, pad=p)
    _close(y, ref_conv2d(x, W, b, s, p))


@pytest.mark.parametrize("geom", GEOMETRIES, ids=GEOM_IDS)
def test_deconv2d_forward(xp, geom):
    x, W, b = _deconv_arrays(geom)
    _, _, s, p = geom
    y = F.deconv2d(asarray(xp, x), asarray(xp, W), asarray(xp, b), stride=s, pad=p)
    _close(y, ref_deconv2d(x, W, b, s, p))


def test_deconv2d_outsize(xp):
    # stride 2 leaves one trailing row uncovered: outsize (8, 7) instead of the default (7, 7)
    rng = _rng()
    x, W = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 3, 3, 3))
    y = F.deconv2d(asarray(xp, x), asarray(xp, W), stride=2, pad=1, outsize=(8, 7))
    assert y.shape == (1, 3, 8, 7)
    _close(y, ref_deconv2d(x, W, None, (2, 2), (1, 1), outsize=(8, 7)))


@pytest.mark.parametrize("geom", POOL_GEOMETRIES, ids=[GEOM_IDS[GEOMETRIES.index(g)] for g in POOL_GEOMETRIES])
@pytest.mark.parametrize("mode", ["max", "average"])
def test_pooling_forward(xp, geom, mode):
    shape, k, s, p = geom
    x = _rng().standard_normal(shape)
    fn = F.pooling if mode == "max" else F.average_pooling
    _close(fn(asarray(xp, x), k, s, p), ref_pool(x, k, s, p, mode))


# windows that tile the image exactly (stride = kernel, pad 0) take a faster path of their own
TILE_GEOMETRIES = [((2, 3, 4, 6), (2, 2)), ((1, 2, 6, 6), (3, 2)), ((2, 1, 4, 3), (1, 3)), ((1, 2, 3, 4), (3, 1))]
TILE_IDS = [f"x{g[0]}-k{g[1]}" for g in TILE_GEOMETRIES]


@pytest.mark.parametrize(("shape", "k"), TILE_GEOMETRIES, ids=TILE_IDS)
def test_max_pooling_tiles(xp, shape, k):
    x = _rng().standard_normal(shape)
    _close(F.pooling(asarray(xp, x), k, k), ref_pool(x, k, k, (0, 0), "max"))
    check_gradients(lambda v: F.pooling(v, k, k), asarray(xp, x), order=2)


@pytest.mark.parametrize("stride", [(2, 2), (2, 1)], ids=["tiles", "overlapping"])
def test_max_pooling_ties_go_to_the_first_argmax(xp, stride):
    # every window of a constant image is one big tie: the gradient goes to its top-left (row-major first)
    x = Variable(asarray(xp, np.ones((1, 2, 4, 4))))
    F.sum(F.pooling(x, 2, stride) * 3.0).backward()
    expected = np.zeros((1, 2, 4, 4))
    rows = range(0, 3, stride[0])
    cols = range(0, 3, stride[1])
    for i in rows:
        for j in cols:
            expected[:, :, i, j] += 3.0
    _close(x.grad, expected)
    # a tie between the two lower cells (the upper row is smaller) goes to the lower-left one
    y = np.array([[0.0, 1.0], [2.0, 2.0]])[None, None]
    v = Variable(asarray(xp, y))
    F.sum(F.pooling(v, 2, 2)).backward()
    _close(v.grad, np.array([[0.0, 0.0], [1.0, 0.0]])[None, None])


def test_max_pooling_padding_never_wins(xp):
    x = -1.0 - np.arange(16.0).reshape(1, 1, 4, 4)  # all negative: zero padding would win every border window
    _close(F.pooling(asarray(xp, x), 2, 2, 1), ref_pool(x, (2, 2), (2, 2), (1, 1), "max"))


def test_average_pooling_counts_padding(xp):
    x = np.ones((1, 1, 2, 2))
    y = F.average_pooling(asarray(xp, x), 2, 2, 1)
    _close(y, np.full((1, 1, 2, 2), 0.25))  # each corner window holds one input and three padded zeros


@pytest.mark.parametrize("geom", POOL_GEOMETRIES[:3], ids=GEOM_IDS[:3])
def test_pooling_simple_forward(xp, geom):
    shape, k, s, _ = geom
    x = _rng().standard_normal(shape)
    _close(F.pooling_simple(asarray(xp, x), k, s, 0), ref_pool(x, k, s, (0, 0), "max"))


@pytest.mark.parametrize("geom", GEOMETRIES, ids=GEOM_IDS)
def test_im2col_col2im_forward(xp, geom):
    shape, k, s, p = geom
    rng = _rng()
    x = rng.standard_normal(shape)
    col = ref_im2col(x, k, s, p)
    _close(F.im2col(asarray(xp, x), k, s, p, to_matrix=False), col)
    as_matrix = col.transpose(0, 4, 5, 1, 2, 3).reshape(-1, shape[1] * k[0] * k[1])
    _close(F.im2col(asarray(xp, x), k, s, p), as_matrix)

    c = rng.standard_normal(col.shape)
    expected = ref_col2im(c, shape, k, s, p)
    _close(F.col2im(asarray(xp, c), shape, k, s, p, to_matrix=False), expected)
    c_matrix = c.transpose(0, 4, 5, 1, 2, 3).reshape(as_matrix.shape)
    _close(F.col2im(asarray(xp, c_matrix), shape, k, s, p), expected)


# --- derivatives of order 1 and 2 ----------------------------------------------------------------------


def _grad_cases():
    for g, gid in zip(GEOMETRIES, GEOM_IDS):
        _, k, s, p = g
        yield pytest.param(lambda x, W, b, s=s, p=p: F.conv2d(x, W, b, s, p), _conv_arrays(g), id=f"conv2d-{gid}")
        yield pytest.param(
            lambda x, W, s=s, p=p: F.conv2d(x, W, stride=s, pad=p), _conv_arrays(g)[:2], id=f"conv2d_nob-{gid}"
        )
        yield pytest.param(lambda x, W, b, s=s, p=p: F.deconv2d(x, W, b, s, p), _deconv_arrays(g), id=f"deconv-{gid}")
        yield pytest.param(lambda x, k=k, s=s, p=p: F.im2col(x, k, s, p), _conv_arrays(g)[:1], id=f"im2col-{gid}")
        col = ref_im2col(_conv_arrays(g)[0], k, s, p)
        shape = g[0]
        yield pytest.param(
            lambda c, shape=shape, k=k, s=s, p=p: F.col2im(c, shape, k, s, p, to_matrix=False),
            (_rng().standard_normal(col.shape),),
            id=f"col2im-{gid}",
        )
    for g in POOL_GEOMETRIES:
        _, k, s, p = g
        gid = GEOM_IDS[GEOMETRIES.index(g)]
        yield pytest.param(lambda x, k=k, s=s, p=p: F.pooling(x, k, s, p), _conv_arrays(g)[:1], id=f"max-{gid}")
        yield pytest.param(lambda x, k=k, s=s, p=p: F.average_pooling(x, k, s, p), _conv_arrays(g)[:1], id=f"avg-{gid}")
    g = GEOMETRIES[1]
    yield pytest.param(lambda x, W, b: F.conv2d_simple(x, W, b, g[2], g[3]), _conv_arrays(g), id="conv2d_simple")
    yield pytest.param(lambda x: F.pooling_simple(x, 2, 2, 0), _conv_arrays(g)[:1], id="pooling_simple")


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize(("fn", "arrays"), list(_grad_cases()))
def test_gradients(xp, fn, arrays, order):
    check_gradients(fn, *[asarray(xp, a) for a in arrays], order=order)


@pytest.mark.parametrize("op", ["conv2d", "deconv2d"])
def test_third_order_derivatives_match_finite_differences_of_the_second_order(xp, op):
    """Third derivatives of Σ tanh(conv(x, W) + b), each backward itself a convolution: the gradient of
    ⟨∇²·U, V⟩ (the second-order result contracted with fixed U, V) with respect to x and W, against central
    differences of that float64 second-order result along a random direction of (x, W)."""
    geom = GEOMETRIES[1]
    x0, W0, b0 = _deconv_arrays(geom) if op == "deconv2d" else _conv_arrays(geom)
    stride, pad = geom[2], geom[3]
    conv = getattr(F, op)
    rng = np.random.default_rng(11)
    U, V = rng.standard_normal(W0.shape), rng.standard_normal(W0.shape)
    dx, dW = rng.standard_normal(x0.shape), rng.standard_normal(W0.shape)

    def second_order(x_np, W_np):
        """s = ⟨∇_W ⟨∇_W f, U⟩, V⟩ as a Variable of x and W (with the graph to differentiate it once more)."""
        x, W = Variable(asarray(xp, x_np)), Variable(asarray(xp, W_np))
        f = F.sum(F.tanh(conv(x, W, asarray(xp, b0), stride, pad)))
        f.backward(create_graph=True)
        g1 = W.grad
        W.cleargrad()
        x.cleargrad()
        F.sum(g1 * asarray(xp, U)).backward(create_graph=True)
        g2 = W.grad
        W.cleargrad()
        x.cleargrad()
        return F.sum(g2 * asarray(xp, V)), x, W

    s, x, W = second_order(x0, W0)
    s.backward()
    directional = float(np.sum(to_numpy(x.grad) * dx) + np.sum(to_numpy(W.grad) * dW))
    eps = 1e-5
    plus = float(to_numpy(second_order(x0 + eps * dx, W0 + eps * dW)[0]))
    minus = float(to_numpy(second_order(x0 - eps * dx, W0 - eps * dW)[0]))
    assert directional == pytest.approx((plus - minus) / (2 * eps), rel=1e-6, abs=1e-8)
    assert np.any(np.abs(to_numpy(W.grad)) > 1e-3) and np.any(np.abs(to_numpy(x.grad)) > 1e-3)


# --- dtypes --------------------------------------------------------------------------------------------


F32_CASES = [
    ("conv2d", lambda x, W, b: F.conv2d(x, W, b, 2, 1)),
    ("deconv2d", lambda x, W, b: F.deconv2d(x, F.transpose(W, (1, 0, 2, 3)), b, 2, 1)),
    ("pooling", lambda x, W, b: F.pooling(x, 2, 2, 1) * F.sum(W) + F.sum(b)),
    ("average_pooling", lambda x, W, b: F.average_pooling(x, 3, 2, 1) * F.sum(W) + F.sum(b)),
    ("im2col", lambda x, W, b: F.im2col(x, 3, 2, 1) * F.sum(W) + F.sum(b)),
    ("conv2d_simple", lambda x, W, b: F.conv2d_simple(x, W, b, 2, 1)),
    ("pooling_simple", lambda x, W, b: F.pooling_simple(x, 2, 2, 0) * F.sum(W) + F.sum(b)),
]


@pytest.mark.parametrize(("name", "fn"), F32_CASES, ids=[c[0] for c in F32_CASES])
def test_float32_preserved(xp, name, fn):
    x, W, b = _conv_arrays(((2, 3, 6, 6), (3, 3), None, None))
    vs = [Variable(asarray(xp, a, dtype=np.float32)) for a in (x, W, b)]
    y = fn(*vs)
    assert y.dtype == xp.float32, name
    F.sum(y).backward(create_graph=True)
    for v in vs:
        assert v.grad.dtype == xp.float32, name
    gx = vs[0].grad
    vs[0].cleargrad()
    F.sum(gx * gx).backward()
    if vs[0].grad is not None:
        assert vs[0].grad.dtype == xp.float32, name


# --- errors and helpers --------------------------------------------------------------------------------


def test_helpers():
    assert pair(3) == (3, 3) and pair((2, 1)) == (2, 1)
    assert get_conv_outsize(7, 3, 2, 1) == 4
    assert get_deconv_outsize(4, 3, 2, 1) == 7
    with pytest.raises(ValueError, match="pair"):
        pair("a")


def test_errors(xp):
    x = asarray(xp, np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"conv2d: x of shape \(1, 3, 4, 4\) has 3 channels but W .* expects 2"):
        F.conv2d(x, asarray(xp, np.zeros((5, 2, 3, 3))))
    with pytest.raises(ValueError, match=r"conv2d: the 5x5 kernel is larger than the padded input 4x4"):
        F.conv2d(x, asarray(xp, np.zeros((5, 3, 5, 5))))
    with pytest.raises(ValueError, match=r"conv2d: x must be a 4-D \(N, C, H, W\) array, got shape \(3, 4, 4\)"):
        F.conv2d(asarray(xp, np.zeros((3, 4, 4))), asarray(xp, np.zeros((5, 3, 3, 3))))
    with pytest.raises(ValueError, match=r"conv2d: b must have shape \(5,\)"):
        F.conv2d(x, asarray(xp, np.zeros((5, 3, 3, 3))), asarray(xp, np.zeros(4)))
    with pytest.raises(ValueError, match="stride"):
        F.conv2d(x, asarray(xp, np.zeros((5, 3, 3, 3))), stride=0)
    with pytest.raises(ValueError, match=r"deconv2d: x of shape \(1, 3, 4, 4\) has 3 channels but W .* expects 2"):
        F.deconv2d(x, asarray(xp, np.zeros((2, 3, 3, 3))))
    with pytest.raises(ValueError, match=r"deconv2d: outsize \(9, 9\) is inconsistent"):
        F.deconv2d(x, asarray(xp, np.zeros((3, 2, 3, 3))), stride=2, pad=1, outsize=(9, 9))
    with pytest.raises(ValueError, match=r"pooling: the 5x5 kernel is larger than the padded input 4x4"):
        F.pooling(x, 5)
    with pytest.raises(ValueError, match=r"average_pooling: x must be a 4-D"):
        F.average_pooling(asarray(xp, np.zeros((4, 4))), 2)
    with pytest.raises(ValueError, match=r"col2im: for input_shape \(1, 3, 4, 4\) the columns must have shape"):
        F.col2im(asarray(xp, np.zeros((5, 27))), (1, 3, 4, 4), 3)
