"""The engine's functions, one table: forward against NumPy, first and second derivatives against finite
differences (float64), dtype preservation (float32) -- on every backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, library, to_numpy
from xdezero import Variable
from xdezero.testing import GradientCheckError, check_gradients


@dataclass
class Case:
    name: str
    fn: Callable  # on Variables
    ref: Callable  # the same on NumPy arrays
    shapes: tuple  # input shapes
    low: float = -2.0  # input domain
    high: float = 2.0
    kwargs: dict = field(default_factory=dict)


CASES = [
    Case("add", F.add, np.add, ((2, 3), (2, 3))),
    Case("add-broadcast", F.add, np.add, ((2, 3), (3,))),
    Case("add-scalar", lambda x: F.add(x, 1.5), lambda x: x + 1.5, ((2, 3),)),
    Case("sub", F.sub, np.subtract, ((2, 3), (2, 1))),
    Case("rsub-scalar", lambda x: 2.0 - x, lambda x: 2.0 - x, ((3,),)),
    Case("mul", F.mul, np.multiply, ((2, 3), (1, 3))),
    Case("mul-scalar", lambda x: 3.0 * x, lambda x: 3.0 * x, ((3,),)),
    Case("div", F.div, np.divide, ((2, 3), (2, 3)), 0.5, 2.0),
    Case("div-scalar", lambda x: x / 4.0, lambda x: x / 4.0, ((3,),)),
    Case("rdiv-scalar", lambda x: 2.0 / x, lambda x: 2.0 / x, ((3,),), 0.5, 2.0),
    Case("neg", F.neg, np.negative, ((2, 3),)),
    Case("pow", lambda x: F.pow(x, 3), lambda x: x**3, ((2, 3),)),
    Case("pow-fractional", lambda x: x**2.5, lambda x: x**2.5, ((4,),), 0.5, 2.0),
    Case("rpow", lambda x: 2.0**x, lambda x: 2.0**x, ((4,),)),
    Case("square", F.square, np.square, ((2, 3),)),
    Case("exp", F.exp, np.exp, ((2, 3),)),
    Case("log", F.log, np.log, ((2, 3),), 0.5, 3.0),
    Case("sin", F.sin, np.sin, ((2, 3),)),
    Case("cos", F.cos, np.cos, ((2, 3),)),
    Case("tanh", F.tanh, np.tanh, ((2, 3),)),
    Case("reshape", lambda x: F.reshape(x, (3, 2)), lambda x: x.reshape(3, 2), ((2, 3),)),
    Case("reshape-infer", lambda x: F.reshape(x, (-1,)), lambda x: x.reshape(-1), ((2, 3),)),
    Case("transpose", F.transpose, np.transpose, ((2, 3),)),
    Case("transpose-axes", lambda x: F.transpose(x, (1, 2, 0)), lambda x: x.transpose(1, 2, 0), ((2, 3, 4),)),
    Case("sum", F.sum, np.sum, ((2, 3),)),
    Case("sum-axis", lambda x: F.sum(x, axis=1), lambda x: x.sum(axis=1), ((2, 3),)),
    Case("sum-axes-keepdims", lambda x: F.sum(x, (0, 2), True), lambda x: x.sum((0, 2), keepdims=True), ((2, 3, 4),)),
    Case("sum-negative-axis", lambda x: F.sum(x, -1), lambda x: x.sum(-1), ((2, 3),)),
    Case("sum_to", lambda x: F.sum_to(x, (1, 3)), lambda x: x.sum(0, keepdims=True), ((2, 3),)),
    Case("sum_to-lead", lambda x: F.sum_to(x, (3,)), lambda x: x.sum(0), ((2, 3),)),
    Case("broadcast_to", lambda x: F.broadcast_to(x, (2, 3)), lambda x: np.broadcast_to(x, (2, 3)), ((3,),)),
    Case("matmul", F.matmul, np.matmul, ((2, 3), (3, 4))),
    Case("matmul-batched", F.matmul, np.matmul, ((2, 2, 3), (3, 4))),
    Case("matmul-vector", F.matmul, np.matmul, ((3,), (3, 2))),
    Case("get_item", lambda x: x[1:, ::2], lambda x: x[1:, ::2], ((3, 4),)),
    Case("get_item-repeated", lambda x: x[np.array([0, 2, 0, -1])], lambda x: x[[0, 2, 0, -1]], ((3, 2),)),
]


def _inputs(xp, case, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(case.low, case.high, s).astype(dtype) for s in case.shapes]
    return arrays, [asarray(xp, a) for a in arrays]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_forward_matches_numpy(xp, case):
    ref_inputs, inputs = _inputs(xp, case)
    y = case.fn(*[Variable(a) for a in inputs])
    np.testing.assert_allclose(to_numpy(y), case.ref(*ref_inputs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_first_and_second_derivatives(xp, case):
    _, inputs = _inputs(xp, case)
    check_gradients(case.fn, *inputs, order=2, name=case.name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_float32_stays_float32(xp, case):
    _, inputs = _inputs(xp, case, np.float32)
    xs = [Variable(a) for a in inputs]
    y = case.fn(*xs)
    F.sum(y).backward()
    assert y.dtype == inputs[0].dtype
    for x in xs:
        assert x.grad.dtype == x.dtype
        assert type(x.grad.data) is type(x.data)


def test_checker_catches_a_wrong_first_derivative(xp):
    class BadSin(F.math.Sin):
        def backward(self, gy):
            (x,) = self.inputs
            return gy * F.cos(x) * 1.01

    x = asarray(xp, [0.3, 0.7])
    with pytest.raises(GradientCheckError, match=r"bad_sin, order 1, input 0"):
        check_gradients(lambda v: BadSin()(v), x, name="bad_sin")


def test_checker_catches_a_wrong_second_derivative(xp):
    class DetachedSin(F.math.Sin):
        """Right first derivative, but computed off the graph: the second derivative comes out zero."""

        def backward(self, gy):
            (x,) = self.inputs
            return gy * Variable(self.xp.cos(x.data))

    x = asarray(xp, [0.3, 0.7])
    check_gradients(lambda v: DetachedSin()(v), x, order=1)
    with pytest.raises(GradientCheckError, match=r"order 2, input 0"):
        check_gradients(lambda v: DetachedSin()(v), x, order=2)


def test_a_gradient_in_the_wrong_dtype_is_given_the_input_dtype(xp):
    # The engine converts an op's gradient to its input's dtype, so even a backward that changes the dtype
    # cannot hand a float64 input a float32 gradient (the checker's own dtype check stays as a second line).
    if library(xp) == "array_api_strict":
        pytest.skip("array-api-strict refuses mixed-dtype arithmetic before the check can run")

    class DemotingSquare(F.math.Square):
        def backward(self, gy):
            (x,) = self.inputs
            return Variable(self.xp.astype(gy.data * 2 * x.data, self.xp.float32))

    x = Variable(asarray(xp, [0.3, 0.7]))
    DemotingSquare()(x).backward()
    assert x.grad.dtype == x.dtype
    np.testing.assert_allclose(to_numpy(x.grad), [0.6, 1.4], rtol=1e-6)
    check_gradients(lambda v: DemotingSquare()(v), x.data, order=1, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: F.reshape(Variable(np.ones((2, 3))), (4, 2)),
            r"reshape: cannot reshape an array of size 6 into shape \(4, 2\)",
        ),
        (
            lambda: F.matmul(Variable(np.ones((2, 3))), Variable(np.ones((4, 2)))),
            r"matmul: shapes \(2, 3\) and \(4, 2\) do not align",
        ),
        (lambda: F.sum(Variable(np.ones((2, 3))), axis=2), r"sum: axis 2 is out of range for an array of 2 dimensions"),
        (
            lambda: F.add(Variable(np.ones((2, 3))), Variable(np.ones((4,)))),
            r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast",
        ),
        (
            lambda: F.broadcast_to(Variable(np.ones((2, 3))), (3, 3)),
            r"broadcast_to: cannot broadcast shape \(2, 3\) to \(3, 3\)",
        ),
        (lambda: F.sum_to(Variable(np.ones((2, 3))), (4,)), r"sum_to: shape \(2, 3\) cannot be summed to \(4,\)"),
        (lambda: F.transpose(Variable(np.ones((2, 3))), (0, 0)), r"transpose: axes \(0, 0\) are not a permutation"),
    ],
)
def test_bad_input_errors_name_the_function_and_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _shares_memory(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return np.shares_memory(a, b)
    if type(a).__module__.startswith("array_api_strict"):
        return np.shares_memory(a._array, b._array)  # the test looks behind the wrapper; the library cannot
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # torch


def test_gradients_are_writable_and_own_their_memory(xp):
    """A hook that edits one gradient in place must not change another gradient, the output's or an input."""
    if library(xp) not in ("numpy", "torch", "array_api_strict"):
        pytest.skip("JAX arrays are immutable: nothing can be edited in place")
    for case in CASES:
        _, arrays = _inputs(xp, case)
        xs = [Variable(a) for a in arrays]
        y = case.fn(*xs)
        y.backward(retain_grad=True)
        grads = [x.grad.data for x in xs]
        for i, g in enumerate(grads):
            if library(xp) == "numpy":
                assert g.flags.writeable, f"{case.name}: the gradient of input {i} is read-only"
            others = [x.data for x in xs] + grads[:i] + grads[i + 1 :] + [y.grad.data]
            assert not any(_shares_memory(g, o) for o in others), f"{case.name}: gradient {i} shares memory"
