"""Only the gradients someone needs: constants get none, ops are asked only for needed ones and keep only
what those read."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, to_numpy
from xdezero import Function, Parameter, Variable, no_grad


def test_user_variables_and_parameters_get_gradients_constants_do_not(xp):
    x = Variable(asarray(xp, [1.0, 2.0]))
    p = Parameter(asarray(xp, [3.0, 4.0]))
    frozen = Variable(asarray(xp, [5.0, 6.0]), requires_grad=False)
    c = asarray(xp, [0.5, 0.25])
    y = F.sum(x * p * frozen * c)
    y.backward()
    np.testing.assert_allclose(to_numpy(x.grad), [3.0 * 5.0 * 0.5, 4.0 * 6.0 * 0.25])
    np.testing.assert_allclose(to_numpy(p.grad), [1.0 * 5.0 * 0.5, 2.0 * 6.0 * 0.25])
    assert frozen.grad is None


def test_an_op_on_constants_only_records_nothing(xp):
    a = asarray(xp, [1.0, 2.0])
    for y in (F.sin(a), Variable(a, requires_grad=False) * a, F.matmul(Variable(a, requires_grad=False), a)):
        assert y.creator is None and y.requires_grad is False
    x = Variable(a)
    y = F.sin(x)
    assert y.creator is not None and y.requires_grad is True


def test_results_under_no_grad_are_constants(xp):
    x = Variable(asarray(xp, [1.0, 2.0]))
    with no_grad():
        h = F.sin(x) * 2.0
    assert h.requires_grad is False
    F.sum(h * x).backward()
    assert h.grad is None
    np.testing.assert_allclose(to_numpy(x.grad), 2.0 * np.sin([1.0, 2.0]))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_ops_compute_only_the_needed_gradient(xp, op):
    x = Variable(asarray(xp, [[1.0, 2.0], [3.0, 4.0]]))
    c = asarray(xp, [0.5, 2.0])
    fn = {"add": F.add, "sub": F.sub, "mul": F.mul, "div": F.div}[op]
    for y, needed in ((fn(x, c), (True, False)), (fn(c, x), (False, True))):
        f = y.creator
        assert f.needs_grad == needed
        gxs = f.backward(Variable(asarray(xp, np.ones((2, 2)))))
        assert [g is not None for g in gxs] == list(needed)


def test_mul_keeps_the_constant_and_lets_the_intermediate_go(xp):
    x = Variable(asarray(xp, [1.0, 2.0]))
    h = F.sin(x)
    freed = weakref.ref(h)
    y = h * asarray(xp, [3.0, 4.0])  # d/dh reads only the constant
    del h
    gc.collect()
    assert freed() is None
    F.sum(y).backward()
    np.testing.assert_allclose(to_numpy(x.grad), np.cos([1.0, 2.0]) * [3.0, 4.0])


def test_mul_of_two_needed_inputs_keeps_both(xp):
    x = Variable(asarray(xp, [1.0, 2.0]))
    h = F.sin(x)
    kept = weakref.ref(h)
    y = h * x
    del h
    gc.collect()
    assert kept() is not None
    F.sum(y).backward()
    np.testing.assert_allclose(to_numpy(x.grad), np.cos([1.0, 2.0]) * [1.0, 2.0] + np.sin([1.0, 2.0]))


def test_a_custom_function_sees_which_inputs_need_a_gradient():
    seen = []

    class Spy(Function):
        def forward(self, a, b):
            seen.append(self.needs_grad)
            return a + b

        def backward(self, gy):
            return gy, gy

    a, b = np.array([1.0]), np.array([2.0])
    Spy()(Variable(a), b)
    Spy()(a, Variable(b))
    Spy()(a, b)
    with no_grad():
        Spy()(Variable(a), Variable(b))
    assert seen == [(True, False), (False, True), (False, False), (False, False)]


def test_double_backward_through_a_constant_operand(xp):
    x = Variable(asarray(xp, [0.5, 1.5]))
    c = asarray(xp, [2.0, 3.0])
    y = F.sum(x * x * c)  # dy/dx = 2cx, d2y/dx2 = 2c
    y.backward(create_graph=True)
    gx = x.grad
    np.testing.assert_allclose(to_numpy(gx), 2 * np.array([2.0, 3.0]) * [0.5, 1.5])
    x.cleargrad()
    F.sum(gx).backward()
    np.testing.assert_allclose(to_numpy(x.grad), [4.0, 6.0])


def test_the_seed_gradient_is_a_constant(xp):
    x = Variable(asarray(xp, 2.0))
    y = x**3
    y.backward(create_graph=True)
    gx = x.grad
    x.cleargrad()
    gx.backward()
    assert float(to_numpy(x.grad)) == 12.0


def _op_cases(xp):
    rng = np.random.default_rng(0)
    a = lambda *shape: asarray(xp, rng.standard_normal(shape))  # noqa: E731
    return {
        "linear": (lambda x, W, b: F.linear(x, W, b), [a(4, 3), a(3, 2), a(2)]),
        "matmul": (lambda x, W: F.matmul(x, W), [a(2, 4, 3), a(3, 5)]),
        "conv2d": (lambda x, W, b: F.conv2d(x, W, b, pad=1), [a(2, 3, 5, 5), a(4, 3, 3, 3), a(4)]),
        "deconv2d": (lambda x, W, b: F.deconv2d(x, W, b, stride=2), [a(2, 3, 4, 4), a(3, 2, 3, 3), a(2)]),
    }


@pytest.mark.parametrize("op", ["linear", "matmul", "conv2d", "deconv2d"])
def test_parametric_ops_are_asked_only_for_needed_gradients(xp, op):
    fn, arrays = _op_cases(xp)[op]
    for wanted in range(len(arrays)):
        inputs = [Variable(a) if i == wanted else a for i, a in enumerate(arrays)]
        y = fn(*inputs)
        f = y.creator
        assert f.needs_grad == tuple(i == wanted for i in range(len(arrays)))
        gxs = f.backward(Variable(xp.ones_like(y.data)))
        assert [g is not None for g in gxs] == [i == wanted for i in range(len(arrays))], (op, wanted)
        # ... and the one computed is the gradient the full computation gives
        full = [Variable(a) for a in arrays]
        y_full = fn(*full)
        y_full.backward()
        np.testing.assert_allclose(to_numpy(gxs[wanted]), to_numpy(full[wanted].grad), rtol=1e-10, atol=1e-12)


def test_a_cnn_does_not_compute_the_gradient_of_its_input_images(monkeypatch):
    import xdezero.functions.conv as conv
    import xdezero.layers as L

    calls = []
    for name in ("deconv2d", "Conv2DGrad"):
        original = getattr(conv, name)
        monkeypatch.setattr(conv, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    layer = L.Conv2d(4, kernel_size=3, pad=1, in_channels=2)
    images = np.random.default_rng(0).standard_normal((3, 2, 6, 6))
    F.sum(layer(images)).backward()
    assert calls == [] and layer.W.grad is not None and layer.b.grad is not None
    layer.cleargrads()
    x = Variable(images)
    F.sum(layer(x)).backward()
    assert calls == ["Conv2DGrad"] and x.grad is not None
