"""The engine: Variable, Function, backward, on every backend (the book's seed examples among them)."""

from __future__ import annotations

import math
import subprocess
import sys
import weakref

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, library, to_numpy
from xdezero import Function, Parameter, Variable, as_array, as_variable, no_grad
from xdezero.backends import library_name


def var(xp, value, dtype=np.float64) -> Variable:
    return Variable(asarray(xp, value, dtype))


# --- the book's seed examples, on every backend ----------------------------------------------------


def test_square_exp_square(xp):
    x = var(xp, 0.5)
    y = F.square(F.exp(F.square(x)))
    y.backward()
    # d/dx exp(x²)² = 4x exp(2x²)
    assert to_numpy(y) == pytest.approx(math.exp(0.5))  # exp(0.25)² = e^0.5
    assert to_numpy(x.grad) == pytest.approx(3.297442541400256)
    assert to_numpy(x.grad) == pytest.approx(4 * 0.5 * math.exp(2 * 0.25))


def test_repeated_input_and_cleargrad(xp):
    x = var(xp, 3.0)
    y = F.add(x, x)
    y.backward()
    assert to_numpy(x.grad) == 2.0
    x.cleargrad()
    y = F.add(F.add(x, x), x)
    y.backward()
    assert to_numpy(x.grad) == 3.0


def test_grad_accumulates_without_cleargrad(xp):
    x = var(xp, 3.0)
    F.add(x, x).backward()
    F.add(F.add(x, x), x).backward()
    assert to_numpy(x.grad) == 5.0


def test_generation_example(xp):
    x = var(xp, 2.0)
    a = F.square(x)
    y = F.add(F.square(a), F.square(a))
    y.backward()
    assert to_numpy(y) == 32.0
    assert to_numpy(x.grad) == 64.0


def test_operators_a_times_b_plus_c(xp):
    a, b, c = var(xp, 3.0), var(xp, 2.0), var(xp, 1.0)
    y = a * b + c
    y.backward()
    assert to_numpy(y) == 7.0
    assert to_numpy(a.grad) == 2.0
    assert to_numpy(b.grad) == 3.0
    assert to_numpy(c.grad) == 1.0


def test_newton_method_with_second_derivative(xp):
    """Minimise x⁴ - 2x² from x = 2 with Newton's method; f'' comes from backward(create_graph=True)."""
    x = var(xp, 2.0)
    expected = 2.0
    for _ in range(8):
        y = x**4 - 2 * x**2
        x.cleargrad()
        y.backward(create_graph=True)
        gx = x.grad
        x.cleargrad()
        gx.backward()
        gx2 = x.grad
        x.data = x.data - gx.data / gx2.data
        # independent reference: the closed-form Newton step x - f'(x)/f''(x)
        expected = expected - (4 * expected**3 - 4 * expected) / (12 * expected**2 - 4)
        assert to_numpy(x) == pytest.approx(expected, rel=1e-12)
    assert to_numpy(x) == pytest.approx(1.0)


def test_third_derivative_of_sin(xp):
    x = var(xp, 1.0)
    y = F.sin(x)
    y.backward(create_graph=True)
    for expected in (-math.sin(1.0), -math.cos(1.0), math.sin(1.0)):
        gx = x.grad
        x.cleargrad()
        gx.backward(create_graph=True)
        assert to_numpy(x.grad) == pytest.approx(expected)


# --- gradients: library, device, dtype, ownership ----------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved_through_scalar_operands(xp, dtype):
    x = var(xp, [1.0, 2.0, 3.0], dtype)
    y = ((x * 2.0 + 1) / 3.0 - 0.5) ** 2 + 2.0**x + 1.0 / x + (1 - x)
    y = F.sum(F.exp(F.sin(y)) * F.cos(x) + F.tanh(x) + F.log(x))
    y.backward()
    assert y.dtype == x.dtype
    assert x.grad.dtype == x.dtype
    assert library_name(x.grad.data) == library(xp)


def test_gradients_are_not_shared_between_inputs(xp):
    x, y = var(xp, [1.0, 2.0]), var(xp, [3.0, 4.0])
    z = F.sum(x + y)
    z.backward()
    assert x.grad is not y.grad
    assert x.grad.data is not y.grad.data


def test_raw_array_operands_on_either_side(xp):
    x = var(xp, [1.0, 2.0, 3.0])
    raw = asarray(xp, [2.0, 2.0, 2.0])
    for y in (x * raw, x + raw, x - raw, x / raw):
        assert isinstance(y, Variable)
    if library(xp) != "array_api_strict":  # array-api-strict raises instead of deferring (documented)
        for y in (raw * x, raw + x, raw - x, raw / x):
            assert isinstance(y, Variable)
        np.testing.assert_allclose(to_numpy(raw - x), [1.0, 0.0, -1.0])


def test_numpy_array_times_variable_gives_variable():
    y = np.ones(3) * Variable(np.array([1.0, 2.0, 3.0]))
    assert isinstance(y, Variable)
    np.testing.assert_array_equal(y.data, [1.0, 2.0, 3.0])


def test_matmul_operator_and_reflected(xp):
    x = var(xp, [[1.0, 2.0]])
    W = var(xp, [[1.0], [3.0]])
    y = x @ W
    y.backward()
    np.testing.assert_allclose(to_numpy(y), [[7.0]])
    np.testing.assert_allclose(to_numpy(W.grad), [[1.0], [2.0]])
    if library(xp) != "array_api_strict":
        np.testing.assert_allclose(to_numpy(asarray(xp, [[1.0, 2.0]]) @ W), [[7.0]])


def test_unary_and_getitem_operators(xp):
    x = var(xp, [1.0, -2.0, 3.0])
    y = F.sum(-x[1:] + +x[0])
    y.backward()
    np.testing.assert_allclose(to_numpy(x.grad), [2.0, -1.0, -1.0])


def test_mixed_libraries_raise_type_error_naming_both():
    import array_api_strict

    a = Variable(np.ones(2))
    b = Variable(array_api_strict.ones(2, dtype=array_api_strict.float64))
    with pytest.raises(TypeError, match=r"different libraries in one operation: array_api_strict and numpy"):
        F.add(a, b)
    with pytest.raises(TypeError, match=r"move them to one library first: xdezero\.backends\.to_library\(x, 'numpy'\)"):
        F.mul(a, b)
    with pytest.raises(TypeError, match=r"array_api_strict and numpy"):
        a * b.data


# --- Variable -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1.0, 3, [1.0, 2.0], "abc", {"a": 1}, (1, 2)])
def test_variable_rejects_non_arrays(bad):
    with pytest.raises(TypeError, match=type(bad).__name__) as info:
        Variable(bad)
    assert "array" in str(info.value)


def test_setting_data_is_checked_and_keeps_old_value():
    x = Variable(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="float"):
        x.data = 1.0
    np.testing.assert_array_equal(x.data, [1.0, 2.0])
    x.data = None
    assert x.data is None


def test_numpy_scalars_become_0d_arrays():
    x = Variable(np.float64(2.5))
    assert type(x.data) is np.ndarray and x.data.ndim == 0
    y = F.sum(Variable(np.ones(3)))  # NumPy reductions return np.float64
    assert type(y.data) is np.ndarray


def test_variable_properties_and_repr(xp):
    x = Variable(asarray(xp, np.zeros((2, 3))), name="x")
    assert (x.shape, x.ndim, x.size, len(x), x.name) == ((2, 3), 2, 6, 2, "x")
    assert x.dtype == asarray(xp, np.zeros(1)).dtype
    assert repr(Variable(None)) == "variable(None)"
    if library(xp) == "numpy":
        assert repr(Variable(np.array([[1, 2], [3, 4]]))) == "variable([[1 2]\n          [3 4]])"
        assert repr(Variable(np.array(32.0))) == "variable(32.0)"


def test_shape_methods(xp):
    x = var(xp, np.arange(6.0).reshape(2, 3))
    assert x.reshape(3, 2).shape == (3, 2)
    assert x.reshape((6,)).shape == (6,)
    assert x.T.shape == (3, 2)
    assert x.transpose(1, 0).shape == (3, 2)
    assert x.sum().shape == ()
    assert x.sum(axis=0).shape == (3,)
    assert x.sum(axis=1, keepdims=True).shape == (2, 1)


def test_parameter_is_a_variable_and_helpers():
    p = Parameter(np.ones(2))
    assert isinstance(p, Variable)
    assert as_variable(p) is p
    assert isinstance(as_variable(np.ones(2)), Variable)
    assert as_array(1.5).shape == () and isinstance(as_array(1.5), np.ndarray)


# --- graph structure and memory --------------------------------------------------------------------


def test_outputs_are_weak_and_inputs_kept_only_with_backprop():
    x = Variable(np.array(1.0))
    y = F.sin(x)
    f = y.creator
    assert f.outputs[0]() is y and f.inputs == [x]
    assert f.generation == 0 and y.generation == 1
    del y
    assert f.outputs[0]() is None
    with no_grad():
        z = F.sin(x)
    assert z.creator is None


def test_generation_is_max_of_inputs():
    x = Variable(np.array(1.0))
    a = F.sin(F.sin(x))
    y = a + x
    assert y.creator.generation == 2 and y.generation == 3


class Counted(Function):
    """y = Σᵢ xᵢ (any number of inputs, of one shape); counts its backward calls. The deep input's position is
    the test's choice, so the generation rule is checked for every arity and every argument position."""

    def __init__(self) -> None:
        self.backward_calls = 0

    def forward(self, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y

    def backward(self, gy):
        self.backward_calls += 1
        return tuple(gy for _ in self.inputs)


class CountedSin(Counted):
    """y = sin(x); dy/dx = cos(x); counts its backward calls."""

    def forward(self, x):
        return self.xp.sin(x)

    def backward(self, gy):
        self.backward_calls += 1
        return gy * F.cos(self.inputs[0])


@pytest.mark.parametrize("loss_order", ["shallow_first", "deep_first"])
@pytest.mark.parametrize(("arity", "deep_at"), [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2), (4, 3)])
def test_every_backward_runs_once_and_intermediate_gradients_are_complete(xp, arity, deep_at, loss_order):
    """h = sin(x) feeds the loss twice: directly, and through sin(h) into an op of `arity` inputs whose other
    inputs are leaves. Whichever input is the deep one, the op must run its backward before sin(x)'s does, so
    that sin(x) runs once with its whole gradient; a retained h.grad holds both paths: 1 + cos(h)."""
    x = var(xp, 0.3)
    first_sin = CountedSin()
    h = first_sin(x)
    deep = F.sin(h)
    op = Counted()
    inputs = [var(xp, 0.1 * (i + 1)) for i in range(arity)]
    inputs[deep_at] = deep
    y = op(*inputs)
    loss = F.add(h, y) if loss_order == "shallow_first" else F.add(y, h)
    loss.backward(retain_grad=True)
    assert first_sin.backward_calls == 1 and op.backward_calls == 1
    assert to_numpy(h.grad) == pytest.approx(1 + math.cos(math.sin(0.3)), rel=1e-12)
    assert to_numpy(x.grad) == pytest.approx((1 + math.cos(math.sin(0.3))) * math.cos(0.3), rel=1e-12)


def test_a_linear_with_a_bias_after_a_deep_input_gives_the_retained_gradients_of_torch(xp):
    """linear(x, W, b) with x three ops deep and W, b leaves: retained gradients of the intermediates as torch's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x0, W0, b0 = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal(2)
    x, W, b = (Variable(asarray(xp, a)) for a in (x0, W0, b0))
    h = F.tanh(x)
    y = F.linear(F.sin(F.exp(h)), W, b)
    loss = F.sum(h) + F.sum(y * y)
    loss.backward(retain_grad=True)

    xt, Wt, bt = (torch.tensor(a, requires_grad=True) for a in (x0, W0, b0))
    ht = torch.tanh(xt)
    ht.retain_grad()
    yt = torch.sin(torch.exp(ht)) @ Wt + bt
    yt.retain_grad()
    (ht.sum() + (yt * yt).sum()).backward()
    for ours, theirs in ((h, ht), (y, yt), (x, xt), (W, Wt), (b, bt)):
        np.testing.assert_allclose(to_numpy(ours.grad), theirs.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("retain_grad", [False, True])
def test_a_plain_backward_builds_no_graph_of_the_gradients(xp, retain_grad):
    """Without create_graph, gradients are plain values: no creator, nothing recorded that keeps the forward
    pass's arrays alive; with it, the gradient is itself a node of a graph (the two must differ)."""
    for create_graph in (False, True):
        x = var(xp, [0.5, -1.0, 2.0])
        W = var(xp, [[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
        a = F.sin(x)
        y = F.sum(F.tanh(F.matmul(F.reshape(a * x, (1, 3)), W))) + F.sum(a * a)  # x and a reach y twice
        y.backward(retain_grad=retain_grad, create_graph=create_graph)
        grads = [x.grad, W.grad] + ([a.grad] if retain_grad else [])
        if create_graph:
            assert all(g.creator is not None for g in grads)
            continue
        assert all(g.creator is None for g in grads), [type(g.creator).__name__ for g in grads]
        held = weakref.ref(a.creator)
        del a, y
        assert held() is None  # nothing in the gradients holds the forward graph


def test_intermediate_grads_dropped_unless_retained():
    x = Variable(np.array(1.0))
    a = F.sin(x)
    y = F.exp(a)
    y.backward()
    assert a.grad is None and y.grad is None and x.grad is not None
    x.cleargrad()
    y = F.exp(a)
    y.backward(retain_grad=True)
    assert to_numpy(a.grad) == pytest.approx(math.exp(math.sin(1.0)))
    assert to_numpy(y.grad) == 1.0


def test_intermediates_that_backward_does_not_need_are_freed():
    x = Variable(np.ones(3))
    a = F.sin(x)
    ref = weakref.ref(a)
    y = a * 2.0  # MulConstant reads no input data in backward
    del a
    assert ref() is None
    y.backward()  # the gradient still flows through the freed variable's creator
    np.testing.assert_allclose(x.grad.data, 2 * np.cos(np.ones(3)))


def test_backward_order_is_deterministic():
    order = []

    class Tap(Function):
        def __init__(self, tag):
            self.tag = tag

        def forward(self, x):
            return x

        def backward(self, gy):
            order.append(self.tag)
            return gy

    def run():
        order.clear()
        x = Variable(np.array(1.0))
        y = F.add(F.add(Tap("a")(x), Tap("b")(x)), Tap("c")(x))
        y.backward()
        return list(order)

    assert run() == run() == run()


def test_diamond_graph_runs_each_function_once():
    calls = []

    class Count(Function):
        def forward(self, x):
            return x * 1.0

        def backward(self, gy):
            calls.append(1)
            return gy

    x = Variable(np.array(2.0))
    a = Count()(x)
    y = F.square(a) + F.exp(a)
    y.backward()
    assert len(calls) == 1
    assert to_numpy(x.grad) == pytest.approx(4.0 + math.exp(2.0))


def test_unchain_stops_backward():
    x = Variable(np.array(1.0))
    a = F.sin(x)
    y = F.exp(a)
    a.unchain()
    y.backward()
    assert x.grad is None


def test_unchain_backward_cuts_the_whole_graph():
    x = Variable(np.array(1.0))
    y = x
    for _ in range(50):
        y = F.sin(y) * 1.0
    y.unchain_backward()
    y.backward()
    assert x.grad is None


def test_backward_returns_wrong_number_of_grads():
    class Bad(Function):
        def forward(self, x, y):
            return x + y

        def backward(self, gy):
            return gy

    y = Bad()(Variable(np.array(1.0)), Variable(np.array(2.0)))
    with pytest.raises(ValueError, match=r"Bad\.backward returned 1 gradients for 2 inputs"):
        y.backward()


def test_backward_without_data_is_an_error():
    with pytest.raises(ValueError, match="no data"):
        Variable(None).backward()


def test_pow_needs_a_number_exponent():
    x = Variable(np.array(2.0))
    with pytest.raises(TypeError, match="exponent must be a Python number"):
        x ** Variable(np.array(2.0))


DEEP_CHAIN = r"""
import gc, sys
import numpy as np
import xdezero.functions as F
from xdezero import Variable
sys.setrecursionlimit(1000)  # the default: nothing may recurse per node
x = Variable(np.array(0.5))
y = x
for _ in range(100_000):
    y = F.sin(y) * 1.0 + 0.0
y.backward()
assert x.grad is not None
z = F.sin(x)
for _ in range(100_000):
    z = F.sin(z)
z.unchain_backward()
del y, z
gc.collect()
print("ok")
"""


@pytest.mark.slow
def test_100k_op_chain_builds_backprops_and_is_freed():
    out = subprocess.run([sys.executable, "-c", DEEP_CHAIN], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_import_does_not_import_gpu_or_other_array_libraries():
    code = (
        "import sys, xdezero, xdezero.functions; print(sorted(m for m in ('cupy', 'torch', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- torch habits: item(), float(v), int(v) ----------------------------------------------------------------


@pytest.mark.parametrize("value", [2.5, -3.75])
def test_item_float_and_int_of_a_one_element_variable(xp, value):
    for shape in ((), (1,), (1, 1)):
        v = Variable(asarray(xp, np.full(shape, value)))
        assert v.item() == value and type(v.item()) is float
        assert float(v) == value and int(v) == int(value)
    assert Variable(asarray(xp, np.array([7], np.int64))).item() == 7


def test_item_of_more_than_one_element_says_how_to_get_one(xp):
    with pytest.raises(
        TypeError, match=r"item\(\) needs a Variable of exactly one element, this one has shape \(2, 3\)"
    ):
        Variable(asarray(xp, np.ones((2, 3)))).item()
    with pytest.raises(TypeError, match=r"exactly one element.*shape \(0,\)"):
        float(Variable(asarray(xp, np.ones(0))))


def test_xdezero_seed_seeds_numpys_global_generator_too():
    """One call makes a NumPy program reproducible, as torch.manual_seed does a torch one."""
    import xdezero

    xdezero.seed(11)
    first = (np.random.random(3), np.random.permutation(5))
    np.random.seed(11)
    assert np.array_equal(np.random.random(3), first[0]) and np.array_equal(np.random.permutation(5), first[1])
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match=r"seed: expected an integer from 0 to 2\*\*32 - 1"):
            xdezero.seed(bad)


def test_a_grad_hook_sees_every_addition_to_a_leaf_and_travels_with_no_copy():
    import pickle

    x = Variable(np.array([1.0, 2.0]))
    seen = []
    remove = x.register_grad_hook(lambda v: seen.append(np.array(v.grad.data)))
    y = x * x + x * 3.0  # x feeds three products: three additions to x.grad
    F.sum(y).backward()
    assert len(seen) == 3
    np.testing.assert_allclose(seen[-1], 2 * x.data + 3.0)  # the hook runs after the addition
    copy = pickle.loads(pickle.dumps(x))
    copy.cleargrad()
    F.sum(copy * copy).backward()
    assert len(seen) == 3  # the copy carries no hook
    remove()
    x.cleargrad()
    F.sum(x * x).backward()
    assert len(seen) == 3
