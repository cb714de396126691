"""Layers: parameter registration, lazy shapes, placement on the input's backend, and forward values."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, library, to_numpy
from xdezero import Parameter, Variable, models, test_mode
from xdezero import layers as L
from xdezero.backends import is_cupy_available, library_name

# --- registration ---------------------------------------------------------------------------------


class Block(L.Layer):
    def __init__(self):
        super().__init__()
        self.z = Parameter(np.zeros(1, np.float32), name="z")
        self.inner = L.Linear(2, in_size=3)
        self.a = Parameter(np.ones(2, np.float32), name="a")
        self.not_a_param = np.zeros(3)


def test_parameters_in_assignment_order_including_nested_layers():
    block = Block()
    assert [k for k, _ in block.named_params()] == ["z", "inner/W", "inner/b", "a"]
    assert [p.name for p in block.params()] == ["z", "W", "b", "a"]


def test_reassigning_or_deleting_an_attribute_unregisters_it():
    block = Block()
    block.a = None
    del block.z
    assert [k for k, _ in block.named_params()] == ["inner/W", "inner/b"]
    block.z = Parameter(np.zeros(1, np.float32))  # registered again, now last
    assert [k for k, _ in block.named_params()] == ["inner/W", "inner/b", "z"]


def test_a_shared_layer_is_listed_once():
    shared = L.Linear(2, in_size=2)
    model = L.Layer()
    model.first = shared
    model.second = shared
    model.me = model  # a cycle does not loop forever
    assert [k for k, _ in model.named_params()] == ["first/W", "first/b"]
    assert len(list(model.params())) == 2


def test_subclass_that_skips_layer_init_still_registers():
    class Lazy(L.Layer):
        def __init__(self):
            self.w = Parameter(np.zeros(2))

    assert [k for k, _ in Lazy().named_params()] == ["w"]

    class Bare(L.Layer):
        def __init__(self):
            pass

        def forward(self, x):
            return x * 2

    bare = Bare()
    assert list(bare.params()) == []
    np.testing.assert_array_equal(bare(Variable(np.ones(2))).data, [2.0, 2.0])


def test_call_returns_one_output_or_a_tuple_and_keeps_weak_references():
    class Split(L.Layer):
        def forward(self, x):
            return x * 2, x * 3

    class One(L.Layer):
        def forward(self, x):
            return x + 1

    x = Variable(np.ones(2))
    _, y1 = Split()(x)
    layer = One()
    y = layer(x)
    assert isinstance(y, Variable)
    assert layer.inputs[0]() is x and layer.outputs[0]() is y
    del y
    assert layer.outputs[0]() is None
    np.testing.assert_array_equal(y1.data, [3.0, 3.0])


def test_cleargrads():
    layer = L.Linear(2, in_size=3)
    F.sum(layer(np.ones((4, 3), np.float32))).backward()
    assert all(p.grad is not None for p in layer.params())
    layer.cleargrads()
    assert all(p.grad is None for p in layer.params())


def test_forward_not_implemented_says_which_layer():
    with pytest.raises(NotImplementedError, match="Layer"):
        L.Layer()(np.ones(1))


# --- Linear ---------------------------------------------------------------------------------------


def test_linear_lazy_weights_follow_input_backend(xp):
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    layer = L.Linear(5)
    assert layer.W.data is None
    y = layer(asarray(xp, x))
    W, b = to_numpy(layer.W), to_numpy(layer.b)
    assert W.shape == (3, 5) and W.dtype == np.float32 and b.dtype == np.float32
    assert library_name(layer.W.data) == library(xp) == library_name(layer.b.data) == library_name(y.data)
    np.testing.assert_allclose(to_numpy(y), x @ W + b, rtol=1e-5, atol=1e-6)
    assert to_numpy(y).dtype == np.float32


def test_linear_with_in_size_created_on_host_then_follows_input(xp):
    layer = L.Linear(2, in_size=3)
    assert isinstance(layer.W.data, np.ndarray)
    W = layer.W.data.copy()
    y = layer(asarray(xp, np.ones((1, 3), np.float32)))
    assert library_name(layer.W.data) == library(xp)
    np.testing.assert_allclose(to_numpy(y), np.ones((1, 3)) @ W, rtol=1e-6)


def test_linear_gradients_are_float32_on_the_backend(xp):
    layer = L.Linear(2, in_size=3)
    F.sum(layer(asarray(xp, np.ones((4, 3), np.float32)))).backward()
    for p in layer.params():
        assert library_name(p.grad.data) == library(xp)
        assert to_numpy(p.grad).dtype == np.float32
    np.testing.assert_allclose(to_numpy(layer.b.grad), [4.0, 4.0])
    np.testing.assert_allclose(to_numpy(layer.W.grad), np.full((3, 2), 4.0))


def test_linear_nobias_and_dtype():
    layer = L.Linear(2, nobias=True, dtype=np.float64, in_size=3)
    assert layer.b is None
    assert [k for k, _ in layer.named_params()] == ["W"]
    assert layer.W.dtype == np.float64


def test_init_draws_from_numpy_global_rng():
    np.random.seed(7)
    expected = np.random.randn(3, 4).astype(np.float32) * math.sqrt(1 / 3)
    np.random.seed(7)
    layer = L.Linear(4)
    layer(np.ones((1, 3), np.float32))
    np.testing.assert_array_equal(layer.W.data, expected)


def test_same_seed_same_model(xp):
    def build():
        np.random.seed(3)
        layer = L.Linear(4)
        layer(asarray(xp, np.ones((2, 5), np.float32)))
        return to_numpy(layer.W)

    np.testing.assert_array_equal(build(), build())


# --- convolutions ---------------------------------------------------------------------------------


def conv_reference(x, W, b, stride, pad):
    n, _, h, w = x.shape
    oc, _, kh, kw = W.shape
    xp_ = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    y = np.zeros((n, oc, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp_[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            y[:, :, i, j] = np.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3]))
    return y + b[None, :, None, None]


def deconv_reference(x, W, b, stride, pad):
    n, _, h, w = x.shape
    _, oc, kh, kw = W.shape
    full = np.zeros((n, oc, stride * (h - 1) + kh, stride * (w - 1) + kw))
    for i in range(h):
        for j in range(w):
            full[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw] += np.tensordot(
                x[:, :, i, j].astype(np.float64), W, axes=([1], [0])
            )
    oh, ow = full.shape[2] - 2 * pad, full.shape[3] - 2 * pad
    return full[:, :, pad : pad + oh, pad : pad + ow] + b[None, :, None, None]


def test_conv2d_lazy_channels_and_values(xp):
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 6)).astype(np.float32)
    layer = L.Conv2d(4, kernel_size=3, stride=2, pad=1)
    y = layer(asarray(xp, x))
    W = to_numpy(layer.W)
    assert W.shape == (4, 3, 3, 3) and W.dtype == np.float32
    assert library_name(layer.W.data) == library(xp)
    layer.b.data = asarray(xp, np.arange(4, dtype=np.float32))
    y = layer(asarray(xp, x))
    np.testing.assert_allclose(to_numpy(y), conv_reference(x, W, np.arange(4), 2, 1), rtol=1e-4, atol=1e-5)


def test_conv2d_init_scale_uses_fan_in():
    np.random.seed(0)
    expected = np.random.randn(4, 2, 3, 1).astype(np.float32) * math.sqrt(1 / (2 * 3 * 1))
    np.random.seed(0)
    layer = L.Conv2d(4, kernel_size=(3, 1), in_channels=2, nobias=True)
    np.testing.assert_array_equal(layer.W.data, expected)
    assert layer.b is None


def test_deconv2d_lazy_channels_and_values(xp):
    x = np.random.default_rng(2).standard_normal((2, 3, 3, 4)).astype(np.float32)
    layer = L.Deconv2d(2, kernel_size=3, stride=2, pad=1)
    y = layer(asarray(xp, x))
    W = to_numpy(layer.W)
    assert W.shape == (3, 2, 3, 3)
    np.testing.assert_allclose(to_numpy(y), deconv_reference(x, W, np.zeros(2), 2, 1), rtol=1e-4, atol=1e-5)


def test_conv_rejects_bad_kernel_size():
    with pytest.raises(ValueError, match="kernel_size"):
        L.Conv2d(2, kernel_size=(1, 2, 3))


# --- recurrent layers -----------------------------------------------------------------------------


def test_rnn_with_in_size_different_from_hidden_size(xp):
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(3)]
    rnn = L.RNN(4)
    hs = [to_numpy(rnn(asarray(xp, x))) for x in xs]
    Wx, b, Wh = to_numpy(rnn.x2h.W), to_numpy(rnn.x2h.b), to_numpy(rnn.h2h.W)
    assert Wx.shape == (3, 4) and Wh.shape == (4, 4)
    h = np.tanh(xs[0] @ Wx + b)
    np.testing.assert_allclose(hs[0], h, rtol=1e-5, atol=1e-6)
    for x, got in zip(xs[1:], hs[1:]):
        h = np.tanh(x @ Wx + b + h @ Wh)
        np.testing.assert_allclose(got, h, rtol=1e-5, atol=1e-6)
    rnn.reset_state()
    np.testing.assert_allclose(to_numpy(rnn(asarray(xp, xs[0]))), hs[0], rtol=1e-6)


def test_lstm_two_steps(xp):
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(2)]
    lstm = L.LSTM(5, in_size=3)
    got = [to_numpy(lstm(asarray(xp, x))) for x in xs]

    def sig(a):
        return 1 / (1 + np.exp(-a))

    def gate(g, x, h):
        lin = getattr(lstm, f"x2{g}")
        a = x @ to_numpy(lin.W) + to_numpy(lin.b)
        return a if h is None else a + h @ to_numpy(getattr(lstm, f"h2{g}").W)

    h = c = None
    for x, y in zip(xs, got):
        f, i, o, u = sig(gate("f", x, h)), sig(gate("i", x, h)), sig(gate("o", x, h)), np.tanh(gate("u", x, h))
        c = i * u if c is None else f * c + i * u
        h = o * np.tanh(c)
        np.testing.assert_allclose(y, h, rtol=1e-5, atol=1e-6)
    F.sum(lstm.h).backward()
    assert lstm.h2f.W.grad is not None


def test_embed_id(xp):
    layer = L.EmbedID(10, 3)
    ids = asarray(xp, np.array([[1, 4], [4, 9]]))
    y = layer(ids)
    W = to_numpy(layer.W)
    np.testing.assert_array_equal(to_numpy(y), W[np.array([[1, 4], [4, 9]])])
    F.sum(y).backward()
    np.testing.assert_allclose(to_numpy(layer.W.grad)[4], [2.0, 2.0, 2.0])


# --- BatchNorm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 2)])
def test_batchnorm_train_then_test_mode(xp, shape):
    x = (np.random.default_rng(5).standard_normal(shape) * 3 + 1).astype(np.float32)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    bn = L.BatchNorm()
    y = to_numpy(bn(asarray(xp, x)))
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-3)
    m = x.size // shape[1]
    mean, var = x.mean(axis=axes), x.var(axis=axes) * m / (m - 1)
    np.testing.assert_allclose(to_numpy(bn.avg_mean), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(bn.avg_var), 0.9 + 0.1 * var, rtol=1e-5)
    assert library_name(bn.avg_mean.data) == library(xp)
    with test_mode():
        y = to_numpy(bn(asarray(xp, x)))
    per = (1, -1) if len(shape) == 2 else (1, -1, 1, 1)
    expected = (x - to_numpy(bn.avg_mean).reshape(per)) / np.sqrt(to_numpy(bn.avg_var).reshape(per) + 2e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_batchnorm_rebinds_running_statistics():
    bn = L.BatchNorm()
    x = np.random.default_rng(6).standard_normal((6, 2)).astype(np.float32)
    bn(x)
    old_mean = bn.avg_mean.data
    old_copy = old_mean.copy()
    bn(x + 1)
    assert bn.avg_mean.data is not old_mean
    np.testing.assert_array_equal(old_mean, old_copy)


def test_batchnorm_parameters_get_gradients_but_statistics_do_not(xp):
    bn = L.BatchNorm()
    x = asarray(xp, np.random.default_rng(7).standard_normal((5, 3)).astype(np.float32))
    F.sum(bn(x) * Variable(asarray(xp, np.arange(3, dtype=np.float32)))).backward()
    assert bn.gamma.grad is not None and bn.beta.grad is not None
    assert bn.avg_mean.grad is None and bn.avg_var.grad is None
    np.testing.assert_allclose(to_numpy(bn.beta.grad), [0.0, 5.0, 10.0])


# --- devices --------------------------------------------------------------------------------------


def test_to_cpu_and_to_device_cpu_keep_values(xp):
    layer = L.Linear(2)
    layer(asarray(xp, np.ones((1, 3), np.float32)))
    W = to_numpy(layer.W).copy()
    assert layer.to_cpu() is layer
    np.testing.assert_array_equal(to_numpy(layer.W), W)
    layer.to_device(layer.W.data.device if library(xp) != "numpy" else "cpu")
    np.testing.assert_array_equal(to_numpy(layer.W), W)


@pytest.mark.skipif(is_cupy_available(), reason="needs a machine without a usable CuPy GPU")
def test_to_gpu_without_gpu_is_a_clear_error_and_changes_nothing():
    layer = L.Linear(2, in_size=3)
    W = layer.W.data
    with pytest.raises(RuntimeError, match=r"to_gpu.*'W'.*(CuPy|GPU)"):
        layer.to_gpu()
    assert layer.W.data is W and isinstance(layer.b.data, np.ndarray)


def test_failed_move_part_way_changes_nothing(monkeypatch):
    layer = L.Linear(2, in_size=3)
    before = [p.data for p in layer.params()]
    calls = []

    def fail_on_second(a):
        calls.append(a)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return a.copy()

    monkeypatch.setattr(L, "to_gpu", fail_on_second)
    with pytest.raises(RuntimeError, match=r"to_gpu.*'b'.*device lost"):
        layer.to_gpu()
    assert all(p.data is b for p, b in zip(layer.params(), before))


def test_sublayers_walks_every_layer_once_in_registration_order():
    shared = L.Linear(2, in_size=2)
    inner = models.Sequential(shared, L.BatchNorm())
    outer = models.Sequential(L.Linear(2, in_size=2), inner, shared)
    found = list(outer.sublayers())
    assert found[0] is outer
    assert found[2] is inner and found[3] is shared  # depth first; `shared` reached through `inner` first
    assert len(found) == 5 and len({id(x) for x in found}) == 5


def test_params_follow_every_change_of_the_layer_tree():
    """params() is remembered between calls; any registration anywhere in the tree must show in the next call."""
    from xdezero import Parameter
    from xdezero.models import Model

    class Net(Model):
        def __init__(self):
            super().__init__()
            self.l1 = L.Linear(3, in_size=2)
            self.l2 = L.Linear(2, in_size=3)

    net = Net()
    first = list(net.params())
    assert len(first) == 4 and list(net.params()) == first
    w = Parameter(np.ones((2, 3)), name="W")
    net.l1.W = w  # replaced inside a sublayer
    assert any(p is w for p in net.params()) and len(list(net.params())) == 4
    net.l3 = L.Linear(1, in_size=2)  # a new sublayer: its W (b) counted once created
    assert len(list(net.params())) == 6
    del net.l2
    assert len(list(net.params())) == 4
    net.l3.extra = Parameter(np.zeros(1))
    assert [k for k, _ in net.named_params()][-1] == "l3/extra"
    net.l1.W = "no longer a parameter"  # unregistered by assignment
    assert len(list(net.params())) == 4 and not any(p is w for p in net.params())
