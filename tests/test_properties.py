"""Property-based tests (Hypothesis) at the edges the function table avoids: kinks, ties, bounds, labels.

Inputs are drawn from a grid of multiples of 1/16 (exact in float16, so 0, ±1 and ties come up often), plus
float16-representable floats; shapes broadcast and include 0-d and size-0 arrays. Every expected value comes
from an independent reference: PyTorch CPU in float64 (lazily imported: those properties skip without it),
NumPy formulas, or closed-form derivatives. Low-precision results are compared with the float64 reference
computed on the same rounded inputs. The number of examples is set by tests/_hypothesis_profiles.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tests._hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import xdezero.functions as F
from tests.helpers import asarray, library, to_numpy
from xdezero import Parameter, Variable
from xdezero.optimizers import ClipGrad

# --- strategies ----------------------------------------------------------------------------------------

GRID = st.integers(-48, 48).map(lambda k: k / 16)  # exact in float16: zeros and ties come up often
VALUES = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0]), GRID, st.floats(-3, 3, width=16))
POSITIVE = st.one_of(st.integers(1, 48).map(lambda k: k / 16), st.floats(1 / 16, 3, width=16))
NONZERO = st.one_of(POSITIVE, POSITIVE.map(lambda v: -v))
TIES = st.one_of(st.sampled_from([-1.0, 0.0, 1.0]), GRID)  # ties in a max/min are the common case
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=2)  # sides 0, 1, 2: every broadcast case
SEEDS = st.integers(0, 2**32 - 1)
FLOAT_DTYPES = ["float16", "float32", "float64"]


def arrays(shape, elements=VALUES):
    return hnp.arrays(np.float64, shape, elements=elements)


# --- helpers -------------------------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch", reason="PyTorch CPU is the float64 oracle of this property")


@pytest.fixture
def torch_oracle():
    """PyTorch, or a skip before Hypothesis starts (the numpy-only nox session has no torch)."""
    return _torch()


def _skip_missing_dtypes(xp, dtypes):
    if "float16" in dtypes and library(xp) == "array_api_strict":
        pytest.skip("array-api-strict has no float16 (the standard's real floating dtypes are float32, float64)")


# The dtypes come through fixtures (parametrized indirectly) so that a backend without one skips before
# Hypothesis starts, not inside each example.
@pytest.fixture
def dtype(request, xp):
    _skip_missing_dtypes(xp, [request.param])
    return request.param


@pytest.fixture
def dtypes(request, xp):
    _skip_missing_dtypes(xp, request.param)
    return request.param


# rtol, atol (atol scaled by the largest reference magnitude) for a result in each dtype
TOL = {"float16": (1e-2, 1e-2), "float32": (1e-5, 1e-6), "float64": (1e-9, 1e-12)}


def _lowest(dtypes):
    return min(dtypes, key=lambda d: np.finfo(d).bits)


def assert_close(got, ref, dtype, what):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    rtol, atol = TOL[dtype]
    finite = ref[np.isfinite(ref)]
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol * scale, err_msg=what)


def _grads(xs):
    """Each Variable's gradient as a NumPy array (zeros where backward gave none)."""
    return [np.zeros(x.shape, dtype=to_numpy(x).dtype) if x.grad is None else to_numpy(x.grad) for x in xs]


def check_against_torch(xp, f, tf, inputs, *, seed, dtypes=None, order=2, what=""):
    """f(*Variables) against tf(torch, *tensors): the value, the gradient for a random cotangent and (order 2,
    float64 only) the double backward along random directions, all against PyTorch in float64 on the same
    (rounded) inputs. Also: the output keeps the inputs' dtype when they agree, each gradient its input's dtype."""
    torch = _torch()
    dtypes = dtypes or ["float64"] * len(inputs)
    inputs = [np.asarray(a, dtype=d) for a, d in zip(inputs, dtypes)]
    low = _lowest(dtypes)
    xs = [Variable(asarray(xp, a)) for a in inputs]
    y = f(*xs)
    ts = [torch.tensor(a.astype(np.float64), requires_grad=True) for a in inputs]
    yt = tf(torch, *ts)
    y_np = to_numpy(y)
    if len(set(dtypes)) == 1:  # mixed dtypes promote by the library's rules (torch: a 0-d operand does not)
        assert y_np.dtype == inputs[0].dtype, f"{what}: output dtype {y_np.dtype} for {dtypes[0]} inputs"
    assert_close(y_np, yt.detach().numpy(), low, f"{what}: value")

    rng = np.random.default_rng(seed)
    gy = rng.standard_normal(y.shape).astype(y_np.dtype)
    y.grad = Variable(asarray(xp, gy))
    second = order == 2 and low == "float64"
    y.backward(create_graph=second)
    gts = torch.autograd.grad(yt, ts, torch.tensor(gy.astype(np.float64)), create_graph=second, allow_unused=True)
    for i, (x, g, gt) in enumerate(zip(xs, _grads(xs), gts)):
        assert g.dtype == inputs[i].dtype, f"{what}: gradient {i} is {g.dtype} for a {inputs[i].dtype} input"
        ref = np.zeros(x.shape) if gt is None else gt.detach().numpy(force=True)
        assert_close(g, ref, low, f"{what}: gradient of input {i}")
    if not second:
        return
    vs = [rng.standard_normal(x.shape) for x in xs]
    z = None
    for x, v in zip(xs, vs):
        if x.grad is not None:
            term = F.sum(x.grad * Variable(asarray(xp, v)))
            z = term if z is None else z + term
    for x in xs:
        x.cleargrad()
    if z is not None:
        z.backward()
    zt = sum((gt * torch.tensor(v)).sum() for gt, v in zip(gts, vs) if gt is not None)
    g2ts = [None] * len(ts)
    if isinstance(zt, torch.Tensor) and zt.requires_grad:
        g2ts = torch.autograd.grad(zt, ts, allow_unused=True)
    for i, (x, g, gt) in enumerate(zip(xs, _grads(xs), g2ts)):
        ref = np.zeros(x.shape) if gt is None else gt.detach().numpy(force=True)  # torch may give a ZeroTensor
        assert_close(g, ref, "float64", f"{what}: second derivative of input {i}")


# --- elementwise ops with broadcasting ------------------------------------------------------------------

BINARY = {
    "add": (lambda a, b: a + b, lambda torch, a, b: a + b),
    "sub": (lambda a, b: a - b, lambda torch, a, b: a - b),
    "mul": (lambda a, b: a * b, lambda torch, a, b: a * b),
    "div": (lambda a, b: a / b, lambda torch, a, b: a / b),
}

BROADCAST = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=2)


@pytest.mark.usefixtures("torch_oracle")
@given(data=st.data(), name=st.sampled_from(sorted(BINARY)), shapes=BROADCAST, seed=SEEDS)
def test_binary_ops_broadcast_like_torch(xp, data, name, shapes, seed):
    """add/sub/mul/div on broadcasting shapes (0-d and size-0 included): value, gradients, second derivatives."""
    s0, s1 = shapes.input_shapes
    a = data.draw(arrays(s0), label="a")
    b = data.draw(arrays(s1, NONZERO if name == "div" else VALUES), label="b")
    f, tf = BINARY[name]
    check_against_torch(xp, f, tf, [a, b], seed=seed, what=f"{name} {s0} {s1}")


@pytest.mark.usefixtures("torch_oracle")
@pytest.mark.parametrize(
    "dtypes",
    [("float32", "float64"), ("float64", "float32"), ("float16", "float32"), ("float16", "float64")],
    indirect=True,
)
@given(data=st.data(), name=st.sampled_from(sorted(BINARY)), shapes=BROADCAST, seed=SEEDS)
def test_mixed_dtype_gradients_keep_each_input_dtype(xp, dtypes, data, name, shapes, seed):
    """float32 * float64: the output follows the library's promotion, but each gradient has its own input's dtype
    (x.grad is float32 for the float32 input; issue 8, item 7)."""
    s0, s1 = shapes.input_shapes
    a = data.draw(arrays(s0), label="a")
    b = data.draw(arrays(s1, NONZERO if name == "div" else VALUES), label="b")
    f, tf = BINARY[name]
    check_against_torch(xp, f, tf, [a, b], dtypes=list(dtypes), seed=seed, what=f"{name} {dtypes}")


NUMPY_SCALAR_OPS = {
    "x + s": (lambda x, s: x + s, lambda x, s: x + s, lambda x, s: np.ones_like(x)),
    "s + x": (lambda x, s: s + x, lambda x, s: s + x, lambda x, s: np.ones_like(x)),
    "x - s": (lambda x, s: x - s, lambda x, s: x - s, lambda x, s: np.ones_like(x)),
    "s - x": (lambda x, s: s - x, lambda x, s: s - x, lambda x, s: -np.ones_like(x)),
    "x * s": (lambda x, s: x * s, lambda x, s: x * s, lambda x, s: np.full_like(x, s)),
    "s * x": (lambda x, s: s * x, lambda x, s: s * x, lambda x, s: np.full_like(x, s)),
    "x / s": (lambda x, s: x / s, lambda x, s: x / s, lambda x, s: np.full_like(x, 1 / s)),
    "x ** 2": (lambda x, s: x ** np.int64(2), lambda x, s: x**2, lambda x, s: 2 * x),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"], indirect=True)
@given(
    x=arrays(SHAPES),
    name=st.sampled_from(sorted(NUMPY_SCALAR_OPS)),
    scalar=st.sampled_from([np.float64(2.5), np.float32(-0.5), np.sqrt(2.0), np.float64(-3.0)]),
)
def test_numpy_scalars_are_operands_like_python_numbers(xp, dtype, x, name, scalar):
    """`var / np.sqrt(2.0)`, `np.float64(2) * var`, `var ** np.int64(2)` work on every backend (issue 8, item 7)."""
    f, ref, dref = NUMPY_SCALAR_OPS[name]
    x = x.astype(dtype)
    v = Variable(asarray(xp, x))
    y = f(v, scalar)
    y.backward()
    s, x64 = float(scalar), x.astype(np.float64)
    assert_close(to_numpy(y), ref(x64, s), dtype, f"{name} with s = {scalar!r}: value")
    assert to_numpy(v.grad).dtype == x.dtype, f"{name}: gradient dtype {to_numpy(v.grad).dtype} for {dtype} x"
    assert_close(to_numpy(v.grad), dref(x64, s), dtype, f"{name} with s = {scalar!r}: gradient")


# --- unary ops: smooth, and at their kinks ---------------------------------------------------------------

UNARY = {  # name: (xdezero, torch, domain)
    "neg": (lambda x: -x, lambda torch, t: -t, VALUES),
    "square": (F.square, lambda torch, t: torch.square(t), VALUES),
    "exp": (F.exp, lambda torch, t: torch.exp(t), VALUES),
    "sin": (F.sin, lambda torch, t: torch.sin(t), VALUES),
    "cos": (F.cos, lambda torch, t: torch.cos(t), VALUES),
    "tanh": (F.tanh, lambda torch, t: torch.tanh(t), VALUES),
    "sigmoid": (F.sigmoid, lambda torch, t: torch.sigmoid(t), VALUES),
    "log": (F.log, lambda torch, t: torch.log(t), POSITIVE),
    "sqrt": (F.sqrt, lambda torch, t: torch.sqrt(t), POSITIVE),
    "x**2": (lambda x: x**2, lambda torch, t: t**2, VALUES),
    "x**3": (lambda x: x**3, lambda torch, t: t**3, VALUES),
    "x**-1": (lambda x: x**-1, lambda torch, t: t**-1, NONZERO),
    "x**0.5": (lambda x: x**0.5, lambda torch, t: t**0.5, POSITIVE),
    "2**x": (lambda x: 2**x, lambda torch, t: 2**t, VALUES),
    # kinks: relu'(0) = abs'(0) = 0 and leaky_relu'(0) = slope, as in PyTorch
    "relu": (F.relu, lambda torch, t: torch.relu(t), VALUES),
    "abs": (F.abs, lambda torch, t: torch.abs(t), VALUES),
    "leaky_relu": (F.leaky_relu, lambda torch, t: torch.nn.functional.leaky_relu(t, 0.2), VALUES),
}


@pytest.mark.usefixtures("torch_oracle")
@given(data=st.data(), name=st.sampled_from(sorted(UNARY)), shape=SHAPES, seed=SEEDS)
def test_unary_ops_like_torch(xp, data, name, shape, seed):
    """Elementwise ops, kinks at 0 included: value, gradient, second derivative against PyTorch (float64)."""
    f, tf, domain = UNARY[name]
    x = data.draw(arrays(shape, domain), label="x")
    check_against_torch(xp, f, tf, [x], seed=seed, what=name)


@pytest.mark.usefixtures("torch_oracle")
@pytest.mark.parametrize("dtype", ["float16", "float32"], indirect=True)
@given(data=st.data(), name=st.sampled_from(sorted(UNARY)), shape=SHAPES, seed=SEEDS)
def test_unary_ops_in_low_precision(xp, dtype, data, name, shape, seed):
    """float16/float32 in: output and gradient keep the dtype and stay close to the float64 reference."""
    f, tf, domain = UNARY[name]
    x = data.draw(arrays(shape, domain), label="x")
    check_against_torch(xp, f, tf, [x], dtypes=[dtype], seed=seed, what=f"{name} {dtype}")


@pytest.mark.usefixtures("torch_oracle")
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(data=st.data(), shape=SHAPES.filter(lambda s: len(s) > 0), seed=SEEDS)
def test_softmax_along_any_axis_like_torch(xp, name, data, shape, seed):
    """softmax / log_softmax over a drawn axis, with ties in the logits."""
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    assume(shape[axis] > 0)
    x = data.draw(arrays(shape), label="x")
    f = getattr(F, name)
    check_against_torch(
        xp, lambda v: f(v, axis=axis), lambda torch, t: getattr(torch, name)(t, axis), [x], seed=seed, what=name
    )


# --- pow at 0 and higher derivatives ---------------------------------------------------------------------


def _nth_derivative(x: Variable, fn, n: int):
    """The n-th derivative of the elementwise fn at x, by n backward(create_graph=True) passes (None: zero)."""
    g = fn(x)
    for _ in range(n):
        x.cleargrad()
        F.sum(g).backward(create_graph=True)
        if x.grad is None:
            return None
        g = x.grad
    return g


@pytest.mark.parametrize("dtype", ["float32", "float64"], indirect=True)
@given(x=arrays(SHAPES, GRID), c=st.integers(0, 4), n=st.integers(1, 5))
@example(x=np.array([0.0, 1.0]), c=0, n=1)
@example(x=np.array([0.0, -2.0]), c=3, n=4)
def test_pow_derivatives_at_zero(xp, dtype, x, c, n):
    """d^n/dx^n x**c = c!/(c-n)! x**(c-n) (0 for n > c), finite at x = 0 (issue 8, item 2)."""
    x = x.astype(dtype)
    v = Variable(asarray(xp, x))
    g = _nth_derivative(v, lambda u: u**c, n)
    expected = math.perm(c, n) * x.astype(np.float64) ** max(c - n, 0) if n <= c else np.zeros(x.shape)
    got = np.zeros(x.shape) if g is None else to_numpy(g)
    if g is not None:
        assert got.dtype == x.dtype, f"d^{n}/dx^{n} x**{c}: dtype {got.dtype} for a {dtype} x"
    assert_close(got, expected, dtype, f"d^{n}/dx^{n} x**{c}")


@given(x=arrays(SHAPES, GRID))
@example(x=np.array(0.0))
def test_polynomial_with_x_to_the_zero(xp, x):
    """p(x) = 1 + 2x + 3x² + 0.5x⁰: p' = 2 + 6x (2 at 0), p'' = 6, p''' = 0 (issue 8, item 2)."""
    expected = {1: 2 + 6 * x, 2: np.full(x.shape, 6.0), 3: np.zeros(x.shape)}
    for n, ref in expected.items():
        g = _nth_derivative(Variable(asarray(xp, x)), lambda u: 1 + 2 * u + 3 * u**2 + 0.5 * u**0, n)
        assert_close(np.zeros(x.shape) if g is None else to_numpy(g), ref, "float64", f"p^({n})")


# --- reductions: axes, keepdims, empty arrays, ties ------------------------------------------------------


@st.composite
def reduction_args(draw, allow_empty_reduction=True):
    shape = draw(SHAPES)
    ndim = len(shape)
    if ndim == 0:
        axis = None
    else:
        axis = draw(
            st.one_of(
                st.none(),
                st.integers(-ndim, ndim - 1),
                st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).map(tuple),
            )
        )
    axes = tuple(range(ndim)) if axis is None else tuple(a % ndim for a in np.atleast_1d(axis).tolist())
    if not allow_empty_reduction:
        assume(all(shape[a] > 0 for a in axes))
    return shape, axis, axes, draw(st.booleans())


@pytest.mark.usefixtures("torch_oracle")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, indirect=True)
@pytest.mark.parametrize("name", ["sum", "mean"])
@given(data=st.data(), seed=SEEDS)
def test_sum_mean_like_torch(xp, dtype, name, data, seed):
    """sum/mean over None, an int, a negative int or a tuple of axes, with keepdims, on every dtype (a sum over
    an empty axis is 0; the mean of nothing is left out: NumPy warns and returns nan)."""
    shape, axis, axes, keepdims = data.draw(reduction_args(allow_empty_reduction=name == "sum"), label="args")
    x = data.draw(arrays(shape), label="x")
    f = getattr(F, name)
    check_against_torch(
        xp,
        lambda v: f(v, axis=axis, keepdims=keepdims),
        lambda torch, t: getattr(torch, name)(t, dim=axes, keepdim=keepdims),
        [x],
        dtypes=[dtype],
        seed=seed,
        what=f"{name}(axis={axis}, keepdims={keepdims}) {dtype}",
    )


@pytest.mark.usefixtures("torch_oracle")
@pytest.mark.parametrize("dtype", ["float32", "float64"], indirect=True)
@pytest.mark.parametrize("name", ["max", "min"])
@given(data=st.data(), args=reduction_args(), seed=SEEDS)
def test_max_min_ties_like_torch_amax_amin(xp, dtype, name, data, args, seed):
    """max/min with ties share the gradient equally among the tied elements, as torch.amax/amin do (issue 8,
    item 11); reducing an empty axis is a ValueError."""
    shape, axis, axes, keepdims = args
    x = data.draw(arrays(shape, TIES), label="x")
    f = getattr(F, name)
    if any(shape[a] == 0 for a in axes):
        with pytest.raises(ValueError, match=name):
            f(Variable(asarray(xp, x)), axis=axis, keepdims=keepdims)
        return
    tname = {"max": "amax", "min": "amin"}[name]
    check_against_torch(
        xp,
        lambda v: f(v, axis=axis, keepdims=keepdims),
        lambda torch, t: getattr(torch, tname)(t, dim=axes, keepdim=keepdims),
        [x],
        dtypes=[dtype],
        seed=seed,
        what=f"{name}(axis={axis}, keepdims={keepdims}) {dtype}",
    )


BOUNDS = st.tuples(GRID, GRID).map(sorted)


@pytest.mark.usefixtures("torch_oracle")
@given(data=st.data(), shape=SHAPES, bounds=BOUNDS, seed=SEEDS)
def test_clip_at_the_bounds_like_torch_clamp(xp, data, shape, bounds, seed):
    """clip(x, lo, hi) with x drawn at lo and hi (and lo == hi): gradient 1 on [lo, hi], as torch.clamp."""
    lo, hi = bounds
    x = data.draw(arrays(shape, st.one_of(st.sampled_from([lo, hi]), VALUES)), label="x")
    check_against_torch(
        xp,
        lambda v: F.clip(v, lo, hi),
        lambda torch, t: torch.clamp(t, lo, hi),
        [x],
        seed=seed,
        what=f"clip(x, {lo}, {hi})",
    )


# --- shape ops, against NumPy --------------------------------------------------------------------------


def _check_shape_op(xp, f, x, dtype, ref_value, ref_grad, seed, what):
    """A linear shape op: its value against NumPy, its gradient (the adjoint) against NumPy."""
    x = x.astype(dtype)
    v = Variable(asarray(xp, x))
    y = f(v)
    expected = ref_value(x)
    got = to_numpy(y)
    assert got.dtype == x.dtype, f"{what}: output dtype {got.dtype} for a {dtype} input"
    assert_close(got, expected, dtype, f"{what}: value")
    gy = np.random.default_rng(seed).standard_normal(expected.shape).astype(dtype)
    y.grad = Variable(asarray(xp, gy))
    y.backward()
    g = to_numpy(v.grad)
    assert g.dtype == x.dtype, f"{what}: gradient dtype {g.dtype} for a {dtype} input"
    assert_close(g, ref_grad(gy.astype(np.float64)), dtype, f"{what}: gradient")


def unbroadcast(g, shape):
    """NumPy's g summed down to `shape` (the adjoint of broadcasting)."""
    lead = g.ndim - len(shape)
    axes = (*range(lead), *(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1))
    return g.sum(axis=axes, keepdims=True).reshape(shape)


@st.composite
def shape_ops(draw):
    """(name, xdezero fn, input shape, NumPy value, NumPy adjoint) for a drawn reshape/transpose/broadcast op."""
    kind = draw(st.sampled_from(["reshape", "transpose", "broadcast_to", "sum_to", "expand_dims"]))
    if kind in ("broadcast_to", "sum_to"):
        shapes = draw(BROADCAST)
        small, big = shapes.input_shapes[0], shapes.result_shape

        if kind == "broadcast_to":
            return (
                f"broadcast_to({small} -> {big})",
                lambda v: F.broadcast_to(v, big),
                small,
                lambda x: np.broadcast_to(x, big),
                lambda g: unbroadcast(g, small),
            )
        return (
            f"sum_to({big} -> {small})",
            lambda v: F.sum_to(v, small),
            big,
            lambda x: unbroadcast(x, small),
            lambda g: np.broadcast_to(g, big),
        )
    shape = draw(SHAPES)
    if kind == "reshape":
        size = math.prod(shape)
        new = draw(st.sampled_from([(-1,), (size,), shape[::-1], (*shape, 1), (1, *shape), (1, -1)]))
        target = np.empty(shape).reshape(new).shape
        return (
            f"reshape({shape} -> {new})",
            lambda v: F.reshape(v, new),
            shape,
            lambda x: x.reshape(target),
            lambda g: g.reshape(shape),
        )
    if kind == "transpose":
        axes = tuple(draw(st.permutations(range(len(shape)))))
        inverse = tuple(np.argsort(axes))
        return (
            f"transpose({shape}, {axes})",
            lambda v: F.transpose(v, axes),
            shape,
            lambda x: x.transpose(axes),
            lambda g: g.transpose(inverse),
        )
    axis = draw(st.integers(-len(shape) - 1, len(shape)))
    return (
        f"expand_dims({shape}, {axis})",
        lambda v: F.expand_dims(v, axis),
        shape,
        lambda x: np.expand_dims(x, axis),
        lambda g: np.squeeze(g, axis),
    )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, indirect=True)
@given(data=st.data(), op=shape_ops(), seed=SEEDS)
def test_shape_ops_like_numpy(xp, dtype, data, op, seed):
    """reshape, transpose, broadcast_to, sum_to, expand_dims on 0-d and size-0 arrays too, in every dtype."""
    what, f, shape, ref_value, ref_grad = op
    x = data.draw(arrays(shape), label="x")
    _check_shape_op(xp, f, x, dtype, ref_value, ref_grad, seed, what)


@st.composite
def basic_indices(draw, shape):
    """A basic index: per axis an int, a slice with a positive step, or a new axis; sometimes an Ellipsis.
    Slice bounds stay in [-n, n]: the standard leaves others unspecified (array-api-strict rejects them)."""
    parts = []
    for n in shape:
        kind = draw(st.sampled_from(["slice", "int", "full"] if n else ["slice", "full"]))
        if kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            bound = st.none() | st.integers(-n, n)
            parts.append(slice(draw(bound), draw(bound), draw(st.none() | st.integers(1, 3))))
        else:
            parts.append(slice(None))
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), None)
    if parts and draw(st.booleans()):  # drop trailing axes behind an Ellipsis
        cut = draw(st.integers(0, len(parts) - 1))
        parts = [*parts[:cut], Ellipsis]
    return tuple(parts)


def _scatter_reference(shape, index):
    def adjoint(g):
        out = np.zeros(shape)
        if isinstance(index, np.ndarray):
            np.add.at(out, index, g)  # repeated ids accumulate
        else:
            out[index] += g  # a basic index selects each element at most once
        return out

    return adjoint


@given(data=st.data(), shape=SHAPES, seed=SEEDS)
def test_get_item_basic_and_integer_arrays_like_numpy(xp, data, shape, seed):
    """x[basic index] and x[int array] (repeated and negative ids): the gradient accumulates repeats."""
    if shape and data.draw(st.booleans(), label="integer array"):
        n = shape[0]
        ids_shapes = hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4 if n else 0)
        ids = data.draw(hnp.arrays(np.int64, ids_shapes, elements=st.integers(-n, max(n - 1, -n))), label="ids")
        index, pass_index = ids, asarray(xp, ids)
    else:
        index = pass_index = data.draw(basic_indices(shape), label="index")
    x = data.draw(arrays(shape), label="x")
    _check_shape_op(
        xp,
        lambda v: F.get_item(v, pass_index),
        x,
        "float64",
        lambda a: np.asarray(a[index]),
        _scatter_reference(shape, index),
        seed,
        f"get_item({shape}, {index!r})",
    )


@given(data=st.data(), shape=SHAPES.filter(lambda s: len(s) > 0), seed=SEEDS)
def test_get_item_boolean_mask_like_numpy(xp, data, shape, seed):
    """x[x.data > t] forward and backward (issue 8, item 8)."""
    x = data.draw(arrays(shape, GRID), label="x")
    threshold = data.draw(GRID, label="threshold")
    mask = x > threshold
    v = Variable(asarray(xp, x))
    y = v[v.data > threshold]
    assert_close(to_numpy(y), x[mask], "float64", "x[mask]: value")
    gy = np.random.default_rng(seed).standard_normal(int(mask.sum()))
    y.grad = Variable(asarray(xp, gy))
    y.backward()
    expected = np.zeros(shape)
    expected[mask] = gy
    assert_close(to_numpy(v.grad), expected, "float64", "x[mask]: gradient")


# --- class ids: labels at 0 and C-1, out-of-range ids -------------------------------------------------


@st.composite
def logits_and_labels(draw, values=VALUES):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    x = draw(arrays((n, c), values))
    t = draw(hnp.arrays(np.int64, (n,), elements=st.one_of(st.sampled_from([0, c - 1]), st.integers(0, c - 1))))
    return x, t


@pytest.mark.usefixtures("torch_oracle")
@pytest.mark.parametrize("name", ["softmax_cross_entropy", "softmax_cross_entropy_simple"])
@given(xt=logits_and_labels(), label_dtype=st.sampled_from(["int64", "int32", "uint8"]), seed=SEEDS)
def test_softmax_cross_entropy_labels_at_bounds_like_torch(xp, name, xt, label_dtype, seed):
    """Labels 0 and C-1 (C = 1 included) against torch.nn.functional.cross_entropy."""
    x, t = xt
    labels = asarray(xp, t, dtype=label_dtype)
    check_against_torch(
        xp,
        lambda v: getattr(F, name)(v, labels),
        lambda torch, v: torch.nn.functional.cross_entropy(v, torch.tensor(t)),
        [x],
        seed=seed,
        order=2 if name == "softmax_cross_entropy" else 1,  # the _simple one's clip makes it piecewise
        what=f"{name} labels {t.tolist()}",
    )


@given(xt=logits_and_labels(GRID))
def test_accuracy_labels_at_bounds_like_numpy(xp, xt):
    """accuracy with labels 0 and C-1 and tied logits: argmax picks the first maximum (the standard's rule)."""
    x, t = xt
    acc = F.accuracy(Variable(asarray(xp, x)), asarray(xp, t))
    np.testing.assert_allclose(float(to_numpy(acc)), np.mean(np.argmax(x, axis=1) == t), rtol=1e-12)


@pytest.mark.usefixtures("torch_oracle")
@given(data=st.data(), vocabulary=st.integers(1, 5), dim=st.integers(1, 3), seed=SEEDS)
def test_embed_id_ids_at_bounds_like_torch(xp, data, vocabulary, dim, seed):
    """embed_id with ids 0 and V-1, repeated, in any shape (0-d included): rows and accumulated gradient."""
    ids = data.draw(
        hnp.arrays(
            np.int64,
            hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
            elements=st.one_of(st.sampled_from([0, vocabulary - 1]), st.integers(0, vocabulary - 1)),
        ),
        label="ids",
    )
    W = data.draw(arrays((vocabulary, dim)), label="W")
    check_against_torch(
        xp,
        lambda w: F.embed_id(asarray(xp, ids), w),
        lambda torch, w: torch.nn.functional.embedding(torch.tensor(ids), w),
        [W],
        seed=seed,
        what=f"embed_id ids {ids.tolist()}",
    )


LABEL_OPS = {
    "softmax_cross_entropy": lambda x, t: F.softmax_cross_entropy(x, t),
    "softmax_cross_entropy_simple": lambda x, t: F.softmax_cross_entropy_simple(x, t),
    "accuracy": lambda x, t: F.accuracy(x, t),
    "embed_id": lambda x, t: F.embed_id(t, x),  # x plays W (C rows), t the ids
}


@pytest.mark.parametrize("name", sorted(LABEL_OPS))
@given(data=st.data(), n=st.integers(1, 3), c=st.integers(1, 3))
def test_out_of_range_class_ids_raise(xp, name, data, n, c):
    """A class id outside [0, C) (-1, C, ...) is a ValueError naming the op and the value (issue 8, item 1)."""
    bad = data.draw(st.sampled_from([-1, c, c + 1, -c - 1]), label="bad id")
    t = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)), label="labels")
    t[data.draw(st.integers(0, n - 1), label="where")] = bad
    x = Variable(asarray(xp, data.draw(arrays((n, c) if name != "embed_id" else (c, 2)), label="x")))
    with pytest.raises(ValueError) as info:
        LABEL_OPS[name](x, asarray(xp, t))
    message = str(info.value)
    assert name.removesuffix("_simple") in message and str(bad) in message, f"unhelpful message: {message!r}"


# --- low precision: ClipGrad, binary_cross_entropy, large logits ------------------------------------------


FLOAT16_GRADS = hnp.arrays(
    np.float16, hnp.array_shapes(min_dims=1, max_dims=1, max_side=4), elements=st.floats(-1000, 1000, width=16)
)


@pytest.mark.parametrize("dtype", ["float16"], indirect=True)
@given(grads=st.lists(FLOAT16_GRADS, min_size=1, max_size=3), max_norm=st.sampled_from([0.5, 1.0, 10.0, 100.0]))
@example(grads=[np.array([256.0], dtype=np.float16)], max_norm=0.5)  # ‖g‖² = 65536 > float16's largest
def test_clip_grad_clips_float16_gradients(xp, dtype, grads, max_norm):
    """ClipGrad scales float16 gradients by min(1, max_norm / (‖g‖ + 1e-6)) even when ‖g‖² overflows float16
    (issue 8, item 3: they were zeroed)."""
    params = []
    for g in grads:
        p = Parameter(asarray(xp, np.zeros_like(g)))
        p.grad = Variable(asarray(xp, g))
        params.append(p)
    ClipGrad(max_norm)(params)
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    scale = min(1.0, max_norm / (norm + 1e-6))
    for i, (p, g) in enumerate(zip(params, grads)):
        got = to_numpy(p.grad)
        assert got.dtype == np.float16, f"gradient {i} became {got.dtype}"
        assert_close(got, g.astype(np.float64) * scale, "float16", f"ClipGrad({max_norm}) gradient {i}, ‖g‖ = {norm}")


PROBABILITIES = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1, width=16))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, indirect=True)
@given(
    data=st.data(),
    shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=3),
    seed=SEEDS,
)
def test_binary_cross_entropy_finite_at_0_and_1(xp, dtype, data, shape, seed):
    """binary_cross_entropy at p = 0 and p = 1 is finite, value and gradient, in every dtype (issue 8, item 3);
    away from the bounds it matches -Σ [t log p + (1-t) log(1-p)] / N."""
    p = data.draw(hnp.arrays(np.float64, shape, elements=PROBABILITIES), label="p")
    t = data.draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([0.0, 1.0])), label="t")
    p = p.astype(dtype)
    v = Variable(asarray(xp, p))
    y = F.binary_cross_entropy(v, asarray(xp, t, dtype=dtype))
    y.backward()
    value, grad = to_numpy(y), to_numpy(v.grad)
    assert value.dtype == p.dtype and grad.dtype == p.dtype, f"dtypes {value.dtype}, {grad.dtype} for {dtype} p"
    assert np.isfinite(value).all(), f"loss {value} for p = {p.tolist()}, t = {t.tolist()}"
    assert np.isfinite(grad).all(), f"gradient {grad.tolist()} for p = {p.tolist()}, t = {t.tolist()}"
    p64 = p.astype(np.float64)
    if np.all((p64 >= 1 / 64) & (p64 <= 63 / 64)):
        ref = -np.sum(t * np.log(p64) + (1 - t) * np.log1p(-p64)) / shape[0]
        assert_close(value, ref, dtype, "binary_cross_entropy value")
        assert_close(grad, -(t / p64 - (1 - t) / (1 - p64)) / shape[0], dtype, "binary_cross_entropy gradient")


LARGE = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 30.0, -30.0, 100.0, -100.0, 1000.0, -1000.0]), st.floats(-1000, 1000, width=16)
)

STABLE = {  # ops built to stay finite for large |x|: (xdezero, torch) on logits x, labels t, one-hot targets h
    "sigmoid": (lambda x, t, h: F.sigmoid(x), lambda torch, x, t, h: torch.sigmoid(x)),
    "softmax": (lambda x, t, h: F.softmax(x), lambda torch, x, t, h: torch.softmax(x, 1)),
    "log_softmax": (lambda x, t, h: F.log_softmax(x), lambda torch, x, t, h: torch.log_softmax(x, 1)),
    "softmax_cross_entropy": (
        lambda x, t, h: F.softmax_cross_entropy(x, t),
        lambda torch, x, t, h: torch.nn.functional.cross_entropy(x, t),
    ),
    "sigmoid_cross_entropy": (
        lambda x, t, h: F.sigmoid_cross_entropy(x, h),
        lambda torch, x, t, h: torch.nn.functional.binary_cross_entropy_with_logits(x, h, reduction="sum") / len(x),
    ),
}


@pytest.mark.usefixtures("torch_oracle")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, indirect=True)
@given(name=st.sampled_from(sorted(STABLE)), xt=logits_and_labels(LARGE), seed=SEEDS)
@example(name="log_softmax", xt=(np.array([[1000.0, 1000.0], [1000.0, 999.0]]), np.array([0, 1])), seed=0)
def test_stable_ops_finite_for_large_logits(xp, dtype, name, xt, seed):
    """sigmoid, softmax, log_softmax and the cross-entropies at |x| up to 1000 in float16/32/64: finite where
    the math is finite, close to the float64 reference."""
    x, t = xt
    f, tf = STABLE[name]
    h = (t[:, None] == np.arange(x.shape[1])).astype(np.float64)
    labels, targets = asarray(xp, t), asarray(xp, h)
    check_against_torch(
        xp,
        lambda v: f(v, labels, targets),
        lambda torch, v: tf(torch, v, torch.tensor(t), torch.tensor(h)),
        [x],
        dtypes=[dtype],
        seed=seed,
        order=1,
        what=f"{name} {dtype}",
    )
