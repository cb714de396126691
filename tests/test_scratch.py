"""backends/_scratch.py: NumPy result buffers reused only once nothing else refers to them."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

import xdezero.functions as F
from xdezero import Variable
from xdezero.backends import _scratch as scratch
from xdezero.layers import Linear

LARGE = (300, 1000)  # 1.2 MB of float32: above the pool's minimum


@pytest.fixture(autouse=True)
def empty_pool():
    scratch.clear()
    yield
    scratch.clear()


def test_a_dropped_buffer_is_reused_and_a_held_one_never():
    a = scratch.empty(LARGE, np.float32)
    b = scratch.empty(LARGE, np.float32)
    assert a is not b
    address = a.__array_interface__["data"][0]
    del a
    c = scratch.empty(LARGE, np.float32)
    assert c.__array_interface__["data"][0] == address  # a's buffer, now free, comes back
    assert c is not b


@pytest.mark.parametrize(
    "keep",
    [
        lambda a: a[10:20],  # a view refers to its base
        lambda a: a.reshape(-1),
        lambda a: memoryview(a),
        lambda a: np.asarray(a),  # the same object
        lambda a: Variable(a),
        lambda a: [a],
    ],
    ids=["slice", "reshape", "memoryview", "asarray", "Variable", "list"],
)
def test_a_buffer_reachable_in_any_way_is_not_handed_out(keep):
    a = scratch.empty(LARGE, np.float32)
    a[...] = 3.0
    holder = keep(a)
    address = a.__array_interface__["data"][0]
    del a
    for _ in range(scratch.PER_SHAPE + 1):
        other = scratch.empty(LARGE, np.float32)
        assert other.__array_interface__["data"][0] != address
        other[...] = -1.0
    assert holder is not None


def test_small_arrays_do_not_come_from_the_pool():
    a = scratch.empty((10, 10), np.float32)
    del a
    assert scratch.held_bytes() == 0


def test_at_most_per_shape_buffers_are_kept_and_the_byte_limit_holds(monkeypatch):
    held = [scratch.empty(LARGE, np.float32) for _ in range(scratch.PER_SHAPE + 3)]
    assert len({id(a) for a in held}) == len(held)
    assert scratch.held_bytes() == scratch.PER_SHAPE * held[0].nbytes
    scratch.clear()
    monkeypatch.setattr(scratch, "MAX_BYTES", 3 * held[0].nbytes)
    for rows in range(300, 310):  # ten different shapes, least recently used forgotten first
        scratch.empty((rows, 1000), np.float32)
        assert scratch.held_bytes() <= scratch.MAX_BYTES


def test_threads_never_share_a_buffer():
    errors = []

    def work(value: float) -> None:
        for _ in range(300):
            a = scratch.empty(LARGE, np.float32)
            a.fill(value)
            b = scratch.empty(LARGE, np.float32)  # while a is held
            b.fill(-value)
            if a[0, 0] != value or a[-1, -1] != value:
                errors.append("a buffer in use was handed to another caller")
            del a, b

    threads = [threading.Thread(target=work, args=(float(k + 1),)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _sigmoid64(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def test_pooled_op_results_are_right_and_live_results_stay_intact():
    rng = np.random.default_rng(0)
    x1, x2, x3 = (rng.standard_normal(LARGE).astype(np.float32) for _ in range(3))
    y1 = F.sigmoid(x1)
    y2 = F.sigmoid(x2)
    keep2 = y2.data.copy()
    del y1  # its buffer is free again
    y3 = F.sigmoid(x3)
    np.testing.assert_allclose(y3.data, _sigmoid64(x3), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y2.data, keep2)  # untouched by the reuse
    r = F.relu(x1)
    np.testing.assert_array_equal(r.data, np.maximum(x1, 0))
    m = F.matmul(x1, rng.standard_normal((1000, 80)).astype(np.float32))
    assert m.data.flags.c_contiguous and m.shape == (300, 80)


def test_relu_gradient_through_the_pooled_mask():
    x = Variable(np.random.default_rng(1).standard_normal(LARGE).astype(np.float32))
    y = F.relu(x)
    y.backward()
    np.testing.assert_array_equal(x.grad.data, (x.data > 0).astype(np.float32))


def test_training_steps_match_numpy_formulas():
    """Three SGD steps of a 2 -> 1000 -> 3 sigmoid MLP on a batch of 300 (large, pooled results), against the
    same steps written out in NumPy float64 from the formulas."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 2))
    t = rng.integers(0, 3, 300)
    l1, l2 = Linear(1000, in_size=2), Linear(3, in_size=1000)
    for layer in (l1, l2):
        layer.W.data = rng.standard_normal(layer.W.shape) * 0.5
        layer.b.data = rng.standard_normal(layer.b.shape) * 0.1
    W1, b1, W2, b2 = (p.data.copy() for p in (l1.W, l1.b, l2.W, l2.b))
    lr = 0.5
    for _ in range(3):
        loss = F.softmax_cross_entropy(l2(F.sigmoid(l1(x))), t)
        for layer in (l1, l2):
            layer.cleargrads()
        loss.backward()
        for p in (*l1.params(), *l2.params()):
            p.data = p.data - lr * p.grad.data
        # The reference step.
        h = 1 / (1 + np.exp(-(x @ W1 + b1)))
        z = h @ W2 + b2
        p_ = np.exp(z - z.max(axis=1, keepdims=True))
        p_ /= p_.sum(axis=1, keepdims=True)
        expected_loss = -np.mean(np.log(p_[np.arange(300), t]))
        gz = p_.copy()
        gz[np.arange(300), t] -= 1
        gz /= 300
        gh = gz @ W2.T * h * (1 - h)
        W2, b2 = W2 - lr * h.T @ gz, b2 - lr * gz.sum(axis=0)
        W1, b1 = W1 - lr * x.T @ gh, b1 - lr * gh.sum(axis=0)
        np.testing.assert_allclose(float(loss.data), expected_loss, rtol=1e-12)
    for p, ref in zip((l1.W, l1.b, l2.W, l2.b), (W1, b1, W2, b2)):
        np.testing.assert_allclose(p.data, ref, rtol=1e-10, atol=1e-12)


def test_reused_conv_buffers_start_clean():
    """The padded-image buffers of conv2d come back from the pool holding whatever the last user wrote, also
    in their margins (the input gradient accumulates there): results must not depend on it."""
    from tests.test_conv import ref_conv2d

    rng = np.random.default_rng(3)
    W = Variable(rng.standard_normal((8, 16, 3, 3)).astype(np.float32))
    for _ in range(3):
        x = Variable(rng.standard_normal((8, 16, 32, 32)).astype(np.float32))
        y = F.conv2d(x, W, pad=1)
        y.backward()  # the input gradient writes its buffer, of the same shape as the padded input's, everywhere
        expected = ref_conv2d(x.data.astype(np.float64), W.data.astype(np.float64), None, (1, 1), (1, 1))
        np.testing.assert_allclose(y.data, expected, rtol=1e-4, atol=1e-4)
        W.cleargrad()


@pytest.mark.parametrize("kernel", [2, 3, (2, 3)])
def test_max_pooling_gradient_written_in_place_matches_a_numpy_formula(kernel):
    """Large enough for the in-place slot writes (the NumPy table's spread_slots), twice in a row so the second
    backward gets the first one's buffers back: each input position gets gy of its window where it holds the
    window's first maximum, 0 elsewhere."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    rng = np.random.default_rng(4)
    for _ in range(2):
        # Rounded values make ties common; ties go to the first position in row-major window order.
        x = Variable(np.round(rng.standard_normal((32, 16, 12 * kh, 12 * kw)) * 2).astype(np.float32))
        y = F.pooling(x, (kh, kw), (kh, kw))
        gy = rng.standard_normal(y.shape).astype(np.float32)
        F.sum(y * gy).backward()
        n, c, h, w = x.shape
        windows = (
            x.data.reshape(n, c, h // kh, kh, w // kw, kw)
            .transpose(0, 1, 2, 4, 3, 5)
            .reshape(n, c, h // kh, w // kw, -1)
        )
        first = windows.argmax(axis=-1)
        expected = (np.arange(kh * kw) == first[..., None]) * gy[..., None]
        expected = expected.reshape(n, c, h // kh, w // kw, kh, kw).transpose(0, 1, 2, 4, 3, 5).reshape(x.shape)
        np.testing.assert_array_equal(y.data, windows.max(axis=-1))
        np.testing.assert_array_equal(x.grad.data, expected)


def test_softmax_cross_entropy_in_reused_buffers_matches_a_numpy_formula():
    """Large enough for the NumPy table's in-place loss and gradient, twice in a row (the second call gets the
    first one's buffers back)."""
    rng = np.random.default_rng(5)
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 1e-5), (np.float64, 1e-12)):
        x64 = rng.standard_normal((1000, 100)) * 5
        t = rng.integers(0, 100, 1000)
        x = Variable(x64.astype(dtype))
        loss = F.softmax_cross_entropy(x, t)
        loss.backward()
        z = x.data.astype(np.float64) - x.data.astype(np.float64).max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        expected_grad = np.exp(log_p)
        expected_grad[np.arange(1000), t] -= 1
        assert loss.dtype == dtype and x.grad.dtype == dtype
        np.testing.assert_allclose(float(loss.data), -log_p[np.arange(1000), t].mean(), rtol=rtol)
        np.testing.assert_allclose(x.grad.data, expected_grad / 1000, rtol=rtol, atol=rtol / 1000)


def test_a_result_reshaped_or_frozen_in_place_is_not_handed_out_again():
    rng = np.random.default_rng(6)
    a, b = (rng.standard_normal(LARGE).astype(np.float32) for _ in range(2))
    y = F.sigmoid(a)
    with warnings.catch_warnings():  # deprecated from NumPy 2.5 on, still allowed
        warnings.simplefilter("ignore", DeprecationWarning)
        y.data.shape = (1, *LARGE)  # on the very array the user holds
    del y
    z = F.sigmoid(b)
    assert z.shape == LARGE
    np.testing.assert_allclose(z.data, _sigmoid64(b), rtol=1e-6, atol=1e-7)
    r = F.relu(a)
    r.data.flags.writeable = False
    del r
    np.testing.assert_array_equal(F.relu(b).data, np.maximum(b, 0))  # no "output array is read-only"


@pytest.mark.parametrize("shape", [(4, 5), (300, 1000)])
def test_a_nan_logit_gives_a_nan_loss(shape):
    """As PyTorch and DeZero give: a NaN logit (not at the label) makes its row's log-sum-exp NaN."""
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    x[2, 3] = np.nan
    t = np.zeros(shape[0], dtype=np.int64)
    assert np.isnan(float(F.softmax_cross_entropy(x, t).data))
