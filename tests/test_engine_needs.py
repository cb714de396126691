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
