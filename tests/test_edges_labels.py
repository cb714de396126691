"""Class ids at and past their bounds, and losses at p = 0 or 1 in low precision, on every backend.

Out-of-range labels used to be read as flat offsets: label -1 took the previous row's last logit, label C the
next row's first, JAX filled in NaN. Now they raise, with one host transfer per call, and lazily on Dask.
"""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, library, to_numpy
from xdezero import Variable
from xdezero.backends import backend_named

LABEL_OPS = {
    "softmax_cross_entropy": F.softmax_cross_entropy,
    "softmax_cross_entropy_simple": F.softmax_cross_entropy_simple,
    "accuracy": F.accuracy,
}
LOGITS = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])


def np_sce(x, t):
    """Mean of -log softmax(x)[n, tₙ], written independently of xdezero."""
    m = x.max(axis=1, keepdims=True)
    log_p = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(t)), t].mean()


def np_sce_grad(x, t):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True) - np.eye(x.shape[1])[t]) / len(t)


# --- labels out of range ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LABEL_OPS)
@pytest.mark.parametrize(("labels", "bad"), [([0, -1], -1), ([0, 3], 3), ([7, 1], 7), ([-5, 9], -5)])
def test_out_of_range_labels_raise(xp, name, labels, bad):
    x = Variable(asarray(xp, LOGITS))
    t = asarray(xp, np.array(labels))
    with pytest.raises(ValueError, match=rf"^{name}: label {bad} is out of range; accepted: integers in \[0, 2\]$"):
        LABEL_OPS[name](x, t)


@pytest.mark.parametrize("name", LABEL_OPS)
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32"])
def test_out_of_range_labels_raise_in_small_dtypes(xp, name, dtype):
    x = Variable(asarray(xp, LOGITS))
    with pytest.raises(ValueError, match=rf"{name}: label 100 is out of range"):
        LABEL_OPS[name](x, asarray(xp, np.array([100, 0]), dtype=dtype))


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "softmax_cross_entropy_simple"])
def test_labels_at_the_bounds_give_the_numpy_value_and_gradient(xp, name):
    t_np = np.array([2, 0])  # C - 1 and 0
    x = Variable(asarray(xp, LOGITS))
    y = LABEL_OPS[name](x, asarray(xp, t_np))
    y.backward()
    np.testing.assert_allclose(float(to_numpy(y)), np_sce(LOGITS, t_np), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(x.grad), np_sce_grad(LOGITS, t_np), rtol=1e-10, atol=1e-14)
    acc = F.accuracy(asarray(xp, LOGITS), asarray(xp, t_np))
    assert float(to_numpy(acc)) == 1.0


@pytest.mark.parametrize("name", LABEL_OPS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "bool"])
def test_non_integer_labels_are_a_type_error(xp, name, dtype):
    x = Variable(asarray(xp, LOGITS))
    t = asarray(xp, np.array([1, 0]), dtype=dtype)
    with pytest.raises(TypeError, match=rf"{name}: labels t must be an integer array of class ids"):
        LABEL_OPS[name](x, t)


def test_the_check_costs_one_host_transfer_per_call(xp, monkeypatch):
    transfers = []
    backend = type(backend_named(library(xp)))
    original = backend.id_bounds

    def counting(self, arrays):  # each backend's id_bounds moves its result to the host in one transfer
        bounds = original(self, arrays)
        transfers.append((len(bounds),))
        return bounds

    monkeypatch.setattr(backend, "id_bounds", counting)
    # The minima and maxima of all index arrays of one call cross together; CuPy moves one count of the ids out
    # of range instead (its own kernel), and the bounds only when some id is outside.
    cupy = library(xp) == "cupy"

    def together(n):
        return [] if cupy else [(2 * n,)]

    x = Variable(asarray(xp, LOGITS))
    loss = F.softmax_cross_entropy(x, asarray(xp, np.array([2, 0])))
    assert transfers == together(1)
    loss.backward(create_graph=True)
    F.sum(x.grad * x.grad).backward()
    assert transfers == together(1)  # the backward trusts the checked labels
    F.softmax_cross_entropy_simple(x, asarray(xp, np.array([2, 0]))).backward()
    assert transfers == together(1) * 2  # its get_item trusts the checked labels
    F.get_item(x, (asarray(xp, np.array([1, 0])), asarray(xp, np.array([2, -3]))))
    assert transfers == together(1) * 2 + together(2)  # two index arrays, still one transfer


# --- embed_id -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ids", "bad"), [([0, 6], 6), ([[-1, 0]], -1), ([-6], -6), ([100], 100)])
def test_embed_id_out_of_range_raises(xp, ids, bad):
    # A negative id is not counted from the end as in DeZero's W[x]: -1 is a common padding id.
    W = Variable(asarray(xp, np.ones((6, 2))))
    with pytest.raises(ValueError, match=rf"^embed_id: id {bad} is out of range; accepted: integers in \[0, 5\]$"):
        F.embed_id(asarray(xp, np.array(ids)), W)


def test_embed_id_at_the_bounds_matches_numpy(xp):
    rng = np.random.default_rng(0)
    W_np, ids_np = rng.standard_normal((6, 2)), np.array([[5, 0], [0, 5]])
    W = Variable(asarray(xp, W_np))
    y = F.embed_id(asarray(xp, ids_np, dtype="int8"), W)
    np.testing.assert_array_equal(to_numpy(y), W_np[ids_np])
    y.backward()
    expected = np.zeros_like(W_np)
    np.add.at(expected, ids_np, 1.0)
    np.testing.assert_array_equal(to_numpy(W.grad), expected)


@pytest.mark.parametrize("dtype", ["float32", "bool"])
def test_embed_id_non_integer_ids_are_a_type_error(xp, dtype):
    W = Variable(asarray(xp, np.ones((6, 2))))
    with pytest.raises(TypeError, match="embed_id: x must be an integer array of ids"):
        F.embed_id(asarray(xp, np.array([1, 0]), dtype=dtype), W)


# --- JAX: inside jit the labels are tracers, with no value to check -----------------------------------


def test_labels_under_jax_jit_still_trace(xp):
    if library(xp) != "jax":
        pytest.skip("jax.jit only")
    import jax

    def loss(x, t):
        return F.softmax_cross_entropy(Variable(x), t).data

    t_np = np.array([2, 0])
    value = jax.jit(loss)(asarray(xp, LOGITS), asarray(xp, t_np))
    np.testing.assert_allclose(float(value), np_sce(LOGITS, t_np), rtol=1e-12)


# --- Dask: the check waits for the compute ------------------------------------------------------------


def _refuse_to_compute(*args, **kwargs):
    raise AssertionError("a Dask graph was computed while it was being built")


def test_dask_labels_are_checked_lazily_at_compute_time():
    da = pytest.importorskip("dask.array")
    import dask

    x = Variable(da.from_array(LOGITS, chunks=(1, -1)))
    with dask.config.set(scheduler=_refuse_to_compute):
        good = F.softmax_cross_entropy(x, da.from_array(np.array([2, 0]), chunks=1))
        good.backward()
        bad = F.softmax_cross_entropy(Variable(x.data), da.from_array(np.array([0, 3]), chunks=1))
        bad_acc = F.accuracy(x, da.from_array(np.array([-1, 0]), chunks=1))
    np.testing.assert_allclose(float(good.data.compute()), np_sce(LOGITS, np.array([2, 0])), rtol=1e-12)
    np.testing.assert_allclose(x.grad.data.compute(), np_sce_grad(LOGITS, np.array([2, 0])), rtol=1e-10)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: label 3 is out of range"):
        bad.data.compute()
    with pytest.raises(ValueError, match=r"accuracy: label -1 is out of range"):
        bad_acc.data.compute()


def test_dask_embed_id_is_checked_lazily_at_compute_time():
    da = pytest.importorskip("dask.array")
    import dask

    W = Variable(da.from_array(np.ones((6, 2)), chunks=(3, -1)))
    with dask.config.set(scheduler=_refuse_to_compute):
        y = F.embed_id(da.from_array(np.array([0, 6]), chunks=1), W)
    with pytest.raises(ValueError, match=r"embed_id: id 6 is out of range"):
        y.data.compute()


# --- binary cross-entropy and log floors in low precision ---------------------------------------------


def _low_precision(xp, dtype):
    if dtype == "bfloat16":
        if library(xp) != "torch":
            pytest.skip("bfloat16 arrays are tested with torch")
        import torch

        return torch.bfloat16
    if not hasattr(xp, dtype):
        pytest.skip(f"{library(xp)} has no {dtype}")
    return getattr(xp, dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_binary_cross_entropy_at_0_and_1_is_finite_in_low_precision(xp, dtype):
    dtype = _low_precision(xp, dtype)
    p_np, t_np = np.array([[0.0], [1.0], [0.25], [0.5]]), np.array([[1], [0], [1], [0]])
    p = Variable(xp.astype(asarray(xp, p_np), dtype))
    y = F.binary_cross_entropy(p, asarray(xp, t_np))
    y.backward()
    assert y.dtype == dtype and p.grad.dtype == dtype
    value, grad = to_numpy(xp.astype(y.data, xp.float32)), to_numpy(xp.astype(p.grad.data, xp.float32))
    assert np.isfinite(value) and np.isfinite(grad).all(), (value, grad)
    # Rows 0 and 1 are clipped into (0, 1): their loss is large but finite; rows 2 and 3 are exact.
    assert value > (-np.log(0.25) - np.log(0.5)) / 4
    np.testing.assert_allclose(grad[2:, 0], [-1 / 0.25 / 4, 1 / 0.5 / 4], rtol=1e-2)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_softmax_cross_entropy_simple_with_an_underflowing_class_is_finite(xp, dtype):
    dtype = _low_precision(xp, dtype)
    x_np = np.array([[0.0, -200.0], [0.0, 0.0]])  # softmax gives exactly 0 for class 1 of row 0
    x = Variable(xp.astype(asarray(xp, x_np), dtype))
    y = F.softmax_cross_entropy_simple(x, asarray(xp, np.array([1, 0])))
    y.backward()
    assert np.isfinite(to_numpy(xp.astype(y.data, xp.float32)))
    assert np.isfinite(to_numpy(xp.astype(x.grad.data, xp.float32))).all()


def test_log_softmax_keeps_float32_precision_at_large_logits(xp):
    # x - logsumexp(x) rounded at the scale of the max: 3e-5 off at x = 1000 in float32.
    x_np = np.array([[1000.0, 1000.0], [1000.0, 999.0], [-1000.0, -1001.0]])
    y = F.log_softmax(Variable(asarray(xp, x_np, dtype="float32")))
    m = x_np.max(axis=1, keepdims=True)
    expected = x_np - m - np.log(np.exp(x_np - m).sum(axis=1, keepdims=True))
    assert y.dtype == xp.float32
    np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-6)
