"""The function table: every DeZero function × every backend, against NumPy formulas.

Each row gives the function (on Variables), an independent NumPy reference, and an input generator whose
domain keeps away from kinks (ReLU at 0, ties in max, clip bounds). Every row is checked for its forward value,
for first and second derivatives in float64, and for float32 in → float32 out and float32 gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import xdezero
import xdezero.functions as F
from tests.helpers import asarray, library, to_numpy
from xdezero import Variable
from xdezero.backends import seed
from xdezero.testing import check_gradients

# --- NumPy references (written independently of xdezero) ---------------------------------------------


def np_softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x, axis=1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_sce(x, t):
    return -np_log_softmax(x)[np.arange(len(t)), t].mean()


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_bce(p, t):
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() / len(p)


def np_batch_norm_train(x, gamma, beta, eps=2e-5):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return gamma.reshape(shape) * (x - mu) / np.sqrt(var + eps) + beta.reshape(shape)


# --- input domains -----------------------------------------------------------------------------------


def normal(*shape):
    return lambda rng: rng.standard_normal(shape)


def away_from_zero(*shape):
    """|x| in [0.2, 2]: away from the kink of relu/abs/leaky_relu."""
    return lambda rng: rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.2, 2.0, size=shape)


def distinct(*shape):
    """A shuffled grid with gaps of 0.5: no ties, so max/min are differentiable with a margin."""

    def make(rng):
        return rng.permutation(np.arange(int(np.prod(shape))) * 0.5 - 3.0).reshape(shape)

    return make


def positive(*shape):
    return lambda rng: rng.uniform(0.5, 2.0, size=shape)


def probabilities(*shape):
    return lambda rng: rng.uniform(0.1, 0.9, size=shape)


def clip_domain(*shape):
    """Values at least 0.1 away from the clip bounds -1 and 1."""
    return lambda rng: rng.choice([-1.6, -0.5, 0.4, 1.5], size=shape) + rng.uniform(-0.05, 0.05, size=shape)


def labels(n, classes):
    return lambda rng: rng.integers(0, classes, size=n)


def zeros_ones(*shape):
    return lambda rng: rng.integers(0, 2, size=shape)


def constant(a):
    return lambda rng: np.asarray(a)


@dataclass
class Case:
    name: str
    f: Any  # on Variables / raw arrays
    ref: Any  # on NumPy arrays
    inputs: list
    order: int = 2
    rtol: float = 1e-6
    wrt: list | None = None  # inputs to differentiate (default: every float input)

    def __str__(self):
        return self.name


def _bn_train(x, gamma, beta):
    c = x.shape[1]
    xp, device = xdezero.backends.array_namespace(x.data), xdezero.backends.device_of(x.data)
    mean = Variable(xp.zeros((c,), dtype=x.dtype, device=device))
    var = Variable(xp.ones((c,), dtype=x.dtype, device=device))
    return F.batch_norm(x, gamma, beta, mean, var)


def _bn_test(x, gamma, beta, mean, var):
    with xdezero.test_mode():
        return F.batch_norm(x, gamma, beta, mean, var)


def _dropout_seeded(x):
    seed(7)  # torch, JAX, CuPy, array-api-strict: xdezero's generators
    np.random.seed(7)  # NumPy arrays: NumPy's global generator, as in DeZero
    return F.dropout(x, 0.3)


CASES = [
    Case("sigmoid", F.sigmoid, np_sigmoid, [normal(3, 4)]),
    Case("sigmoid_simple", F.sigmoid_simple, np_sigmoid, [normal(3, 4)]),
    Case("tanh", F.tanh, np.tanh, [normal(3, 4)]),
    Case("relu", F.relu, lambda x: np.maximum(x, 0), [away_from_zero(3, 4)]),
    Case("leaky_relu", F.leaky_relu, lambda x: np.where(x > 0, x, 0.2 * x), [away_from_zero(3, 4)]),
    Case(
        "leaky_relu_0.1",
        lambda x: F.leaky_relu(x, slope=0.1),
        lambda x: np.where(x > 0, x, 0.1 * x),
        [away_from_zero(5)],
    ),
    Case("abs", F.abs, np.abs, [away_from_zero(3, 4)]),
    Case("softmax", F.softmax, np_softmax, [normal(3, 5)]),
    Case("softmax_axis-1_3d", lambda x: F.softmax(x, axis=-1), lambda x: np_softmax(x, -1), [normal(2, 3, 4)]),
    Case("softmax_simple", F.softmax_simple, np_softmax, [normal(3, 5)]),
    Case("log_softmax", F.log_softmax, np_log_softmax, [normal(3, 5)]),
    Case("log_softmax_axis0", lambda x: F.log_softmax(x, axis=0), lambda x: np_log_softmax(x, 0), [normal(3, 5)]),
    Case("linear", F.linear, lambda x, W, b: x @ W + b, [normal(4, 3), normal(3, 2), normal(2)]),
    Case("linear_nobias", F.linear, lambda x, W: x @ W, [normal(4, 3), normal(3, 2)]),
    Case("linear_3d", F.linear, lambda x, W, b: x @ W + b, [normal(2, 4, 3), normal(3, 2), normal(2)]),
    Case("linear_simple", F.linear_simple, lambda x, W, b: x @ W + b, [normal(4, 3), normal(3, 2), normal(2)]),
    Case("matmul", F.matmul, lambda a, b: a @ b, [normal(4, 3), normal(3, 2)]),
    Case(
        "mean_squared_error",
        F.mean_squared_error,
        lambda a, b: ((a - b) ** 2).sum() / len(a),
        [normal(5, 2), normal(5, 2)],
    ),
    Case(
        "mean_squared_error_simple",
        F.mean_squared_error_simple,
        lambda a, b: ((a - b) ** 2).sum() / len(a),
        [normal(5, 2), normal(5, 2)],
    ),
    Case("softmax_cross_entropy", F.softmax_cross_entropy, np_sce, [normal(6, 4), labels(6, 4)]),
    Case("softmax_cross_entropy_simple", F.softmax_cross_entropy_simple, np_sce, [normal(6, 4), labels(6, 4)]),
    Case(
        "sigmoid_cross_entropy",
        F.sigmoid_cross_entropy,
        lambda x, t: np_bce(np_sigmoid(x), t),
        [normal(6, 1), zeros_ones(6, 1)],
    ),
    Case(
        "sigmoid_cross_entropy_1d_targets",
        F.sigmoid_cross_entropy,
        lambda x, t: np_bce(np_sigmoid(x), t.reshape(x.shape)),
        [normal(6, 1), zeros_ones(6)],
    ),
    Case("binary_cross_entropy", F.binary_cross_entropy, np_bce, [probabilities(6, 1), zeros_ones(6, 1)]),
    Case("max_all", F.max, np.max, [distinct(3, 4)]),
    Case("max_axis1", lambda x: F.max(x, axis=1), lambda x: x.max(axis=1), [distinct(3, 4)]),
    Case(
        "max_axes_keepdims",
        lambda x: F.max(x, axis=(0, 2), keepdims=True),
        lambda x: x.max(axis=(0, 2), keepdims=True),
        [distinct(2, 3, 4)],
    ),
    Case("min_axis0", lambda x: F.min(x, axis=0), lambda x: x.min(axis=0), [distinct(3, 4)]),
    Case(
        "min_neg_axis_keepdims",
        lambda x: F.min(x, axis=-1, keepdims=True),
        lambda x: x.min(axis=-1, keepdims=True),
        [distinct(3, 4)],
    ),
    Case("clip", lambda x: F.clip(x, -1.0, 1.0), lambda x: np.clip(x, -1, 1), [clip_domain(3, 4)]),
    Case("average_all", F.average, np.mean, [normal(3, 4)]),
    Case(
        "mean_axis1_keepdims",
        lambda x: F.mean(x, axis=1, keepdims=True),
        lambda x: x.mean(axis=1, keepdims=True),
        [normal(3, 4)],
    ),
    Case("expand_dims_1", lambda x: F.expand_dims(x, 1), lambda x: np.expand_dims(x, 1), [normal(3, 4)]),
    Case("expand_dims_-1", lambda x: F.expand_dims(x, -1), lambda x: np.expand_dims(x, -1), [normal(3, 4)]),
    Case("flatten", F.flatten, lambda x: x.reshape(len(x), -1), [normal(2, 3, 4)]),
    Case("sum_axis", lambda x: F.sum(x, axis=(0, 2)), lambda x: x.sum(axis=(0, 2)), [normal(2, 3, 4)]),
    Case("get_item_slice", lambda x: x[1:, ::2], lambda x: x[1:, ::2], [normal(3, 5)]),
    Case("get_item_negative", lambda x: x[-1], lambda x: x[-1], [normal(3, 5)]),
    Case(
        "get_item_repeated",
        lambda x, i: F.get_item(x, i),
        lambda x, i: x[i],
        [normal(4, 3), constant([0, 2, 2, -1, 0])],
    ),
    Case(
        "get_item_pairs",
        lambda x, i, j: F.get_item(x, (i, j)),
        lambda x, i, j: x[i, j],
        [normal(4, 3), constant([0, 3, 3, -1]), constant([1, 2, 2, 0])],
    ),
    Case(
        "embed_id",
        lambda ids, W: F.embed_id(ids, W),
        lambda ids, W: W[ids],
        [constant([[0, 4, 4], [2, 0, 4]]), normal(5, 3)],
    ),
    Case("batch_norm_2d", _bn_train, np_batch_norm_train, [normal(8, 3), positive(3), normal(3)], rtol=1e-5),
    Case("batch_norm_4d", _bn_train, np_batch_norm_train, [normal(4, 2, 3, 3), positive(2), normal(2)], rtol=1e-5),
    Case(
        "batch_norm_test_mode",
        _bn_test,
        lambda x, g, b, m, v: g * (x - m) / np.sqrt(v + 2e-5) + b,
        [normal(5, 3), positive(3), normal(3), normal(3), positive(3)],
        wrt=[0, 1, 2],  # the running statistics are constants in test mode
    ),
    Case("dropout_seeded", _dropout_seeded, None, [normal(4, 5)]),
]

IDS = [str(c) for c in CASES]


def _inputs(case: Case, xp, dtype=np.float64, seed_=0):
    rng = np.random.default_rng(seed_)
    raw = [make(rng) for make in case.inputs]
    np_inputs = [a.astype(dtype) if a.dtype.kind == "f" else a for a in raw]
    return np_inputs, [asarray(xp, a) for a in np_inputs]


WITH_REFERENCE = [c for c in CASES if c.ref is not None]  # the others have dedicated forward tests


@pytest.mark.parametrize("case", WITH_REFERENCE, ids=[str(c) for c in WITH_REFERENCE])
def test_forward(xp, case):
    np_inputs, arrays = _inputs(case, xp)
    y = case.f(*[Variable(a) for a in arrays])
    assert isinstance(y, Variable)
    assert library(xp) == xdezero.backends.library_name(y.data)
    expected = np.asarray(case.ref(*np_inputs))
    np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-10, atol=1e-12)
    assert y.shape == expected.shape


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients(xp, case):
    _, arrays = _inputs(case, xp)
    check_gradients(case.f, *arrays, order=case.order, rtol=case.rtol, wrt=case.wrt, name=case.name)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_preserved(xp, case):
    _, arrays = _inputs(case, xp, dtype=np.float32)
    vs = [Variable(a) for a in arrays]
    y = case.f(*vs)
    assert y.dtype == xp.float32, f"{case.name}: float32 in, {y.dtype} out"
    y.backward()
    for i, v in enumerate(vs):
        if (case.wrt is None and xp.isdtype(v.dtype, "real floating")) or i in (case.wrt or ()):
            assert v.grad is not None, f"{case.name}: no gradient"
            assert v.grad.dtype == xp.float32, f"{case.name}: float32 input got a {v.grad.dtype} gradient"
            assert v.grad.shape == v.shape


# --- numerical stability -----------------------------------------------------------------------------

STABLE = {
    "softmax": lambda x, t: F.softmax(x),
    "log_softmax": lambda x, t: F.log_softmax(x),
    "softmax_cross_entropy": F.softmax_cross_entropy,
    "sigmoid": lambda x, t: F.sigmoid(x),
    "sigmoid_cross_entropy": lambda x, t: F.sigmoid_cross_entropy(x, F.broadcast_to(t[:, None] % 2, x.shape).data),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(STABLE))
def test_large_logits_stay_finite(xp, name, dtype):
    x = Variable(asarray(xp, [[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, 1000.0]], dtype=dtype))
    t = asarray(xp, np.array([1, 2]))
    y = STABLE[name](x, t)
    y.backward()
    assert np.isfinite(to_numpy(y)).all(), f"{name}: {to_numpy(y)}"
    assert np.isfinite(to_numpy(x.grad)).all(), f"{name} gradient: {to_numpy(x.grad)}"
    assert x.grad.dtype == x.dtype


@pytest.mark.parametrize("fn", [F.sigmoid, F.sigmoid_simple], ids=["sigmoid", "sigmoid_simple"])
def test_sigmoid_derivatives_up_to_the_third_follow_the_closed_forms(xp, fn):
    """s′ = s(1-s), s″ = s′(1-2s), s‴ = s′(1-6s+6s²), from repeated backward(create_graph=True), at points
    where each derivative changes sign and where s saturates (|x| = 30: no NaN from 0·inf)."""
    points = np.array([-30.0, -4.0, -1.3169578969248166, 0.0, 0.5, 1.3169578969248166, 4.0, 30.0])
    s = 1 / (1 + np.exp(-points))
    d1 = s * (1 - s)
    expected = [d1, d1 * (1 - 2 * s), d1 * (1 - 6 * s + 6 * s * s)]
    x = Variable(asarray(xp, points))
    y = fn(x)
    for order, want in enumerate(expected, start=1):
        x.cleargrad()
        F.sum(y).backward(create_graph=True)
        y = x.grad
        np.testing.assert_allclose(to_numpy(y), want, rtol=1e-9, atol=1e-15, err_msg=f"order {order}")


def test_large_logits_values(xp):
    x = asarray(xp, [[1000.0, -1000.0, 0.0]])
    np.testing.assert_allclose(to_numpy(F.log_softmax(Variable(x))), [[0.0, -2000.0, -1000.0]])
    loss = F.softmax_cross_entropy(x, asarray(xp, np.array([1])))
    np.testing.assert_allclose(float(to_numpy(loss)), 2000.0)
    s = F.sigmoid_cross_entropy(asarray(xp, [[-1000.0], [1000.0]]), asarray(xp, np.array([[1], [0]])))
    np.testing.assert_allclose(float(to_numpy(s)), 1000.0)


def test_logsumexp_stable_and_guarded(xp):
    from xdezero.utils import logsumexp

    x = asarray(xp, [[1000.0, 1000.0], [-1000.0, -1000.0], [-np.inf, -np.inf]])
    y = to_numpy(logsumexp(x, axis=1))
    assert y.shape == (3, 1)
    np.testing.assert_allclose(y[:2, 0], [1000 + np.log(2), -1000 + np.log(2)])
    assert y[2, 0] == -np.inf


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_binary_cross_entropy_guards_log_zero(xp, p):
    for dtype in ("float32", "float64"):
        pv = Variable(asarray(xp, [[p], [0.5]], dtype=dtype))
        y = F.binary_cross_entropy(pv, asarray(xp, np.array([[1 - int(p)], [1]])))
        y.backward()
        assert np.isfinite(to_numpy(y)).all() and np.isfinite(to_numpy(pv.grad)).all()
        assert y.dtype == pv.dtype and pv.grad.dtype == pv.dtype


# --- integer labels of every dtype ---------------------------------------------------------------------

INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8"]


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_label_dtypes(xp, dtype):
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((5, 3))
    t_np = np.array([0, 2, 1, 2, 0])
    t = asarray(xp, t_np, dtype=dtype)
    for f in (F.softmax_cross_entropy, F.softmax_cross_entropy_simple):
        x = Variable(asarray(xp, x_np))
        y = f(x, t)
        np.testing.assert_allclose(float(to_numpy(y)), np_sce(x_np, t_np), rtol=1e-10)
        y.backward()
        expected = (np_softmax(x_np) - np.eye(3)[t_np]) / 5
        np.testing.assert_allclose(to_numpy(x.grad), expected, rtol=1e-8, atol=1e-12)
    acc = F.accuracy(asarray(xp, x_np), t)
    assert float(to_numpy(acc)) == pytest.approx(np.mean(x_np.argmax(axis=1) == t_np))
    W = Variable(asarray(xp, rng.standard_normal((4, 2))))
    ids = asarray(xp, np.array([[3, 1], [3, 3]]), dtype=dtype)
    e = F.embed_id(ids, W)
    np.testing.assert_allclose(to_numpy(e), to_numpy(W)[np.array([[3, 1], [3, 3]])])
    e.backward()
    np.testing.assert_allclose(to_numpy(W.grad)[:, 0], [0, 1, 0, 3])


def test_accuracy_is_a_constant_0d_variable(xp):
    y = Variable(asarray(xp, [[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype="float32"))
    acc = F.accuracy(y, asarray(xp, np.array([1, 0, 0, 0])))
    assert isinstance(acc, Variable) and acc.creator is None
    assert acc.shape == () and acc.dtype == xp.float32
    assert float(to_numpy(acc)) == pytest.approx(0.75)


# --- gradient semantics ------------------------------------------------------------------------------


def test_gradients_are_fresh_and_unshared(xp):
    x0 = Variable(asarray(xp, np.ones((2, 3))))
    x1 = Variable(asarray(xp, np.ones((2, 3))))
    b = Variable(asarray(xp, np.ones(3)))
    y = F.sum(x0 + x1 + F.broadcast_to(b, (2, 3)))
    y.backward()
    assert x0.grad is not x1.grad and x0.grad.data is not x1.grad.data
    if library(xp) == "numpy":
        arrays = [v.data for v in (x0, x1, b)] + [v.grad.data for v in (x0, x1, b)]
        for i, g in enumerate(arrays[3:], 3):
            assert g.flags.writeable
            assert not any(np.shares_memory(g, other) for other in arrays[:i]), "a gradient shares memory"
    np.testing.assert_allclose(to_numpy(b.grad), [2.0, 2.0, 2.0])


def test_max_min_ties_share_the_gradient_equally(xp):
    # torch.amax's convention: the gradient of a tied maximum is split among the tied elements.
    x = Variable(asarray(xp, [[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]))
    F.max(x, axis=1).backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [[0, 0.5, 0.5], [0.5, 0, 0.5]])
    x.cleargrad()
    F.min(x).backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [[0, 0, 0], [0, 1, 0]])


def test_clip_passes_gradient_inside_inclusive_bounds(xp):
    x = Variable(asarray(xp, [-2.0, -1.0, 0.0, 1.0, 2.0], dtype="float32"))
    y = F.clip(x, -1.0, 1.0)
    y.backward()
    np.testing.assert_array_equal(to_numpy(y), [-1, -1, 0, 1, 1])
    np.testing.assert_array_equal(to_numpy(x.grad), [0, 1, 1, 1, 0])
    assert y.dtype == xp.float32 and x.grad.dtype == xp.float32


def test_get_item_repeated_and_negative_indices_accumulate(xp):
    x = Variable(asarray(xp, np.arange(12.0).reshape(4, 3)))
    y = F.get_item(x, asarray(xp, np.array([0, -1, 3, 0, 0])))
    np.testing.assert_array_equal(to_numpy(y), np.arange(12.0).reshape(4, 3)[[0, -1, 3, 0, 0]])
    y.backward()
    np.testing.assert_array_equal(to_numpy(x.grad)[:, 0], [3, 0, 0, 2])


# --- batch_norm running statistics -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 2)])
def test_batch_norm_updates_running_stats_of_variables(xp, shape):
    rng = np.random.default_rng(3)
    x_np = rng.standard_normal(shape) * 2 + 1
    mean0, var0 = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    mean, var = xdezero.Parameter(asarray(xp, mean0)), xdezero.Parameter(asarray(xp, var0))
    gamma, beta = asarray(xp, np.ones(3)), asarray(xp, np.zeros(3))
    F.batch_norm(asarray(xp, x_np), gamma, beta, mean, var, decay=0.8)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    np.testing.assert_allclose(to_numpy(mean), 0.8 * mean0 + 0.2 * x_np.mean(axis=axes))
    np.testing.assert_allclose(to_numpy(var), 0.8 * var0 + 0.2 * x_np.var(axis=axes, ddof=1))
    with xdezero.test_mode():
        before = to_numpy(mean).copy()
        y = F.batch_norm(asarray(xp, x_np), gamma, beta, mean, var)
        np.testing.assert_array_equal(to_numpy(mean), before)
    bshape = (1, 3) if len(shape) == 2 else (1, 3, 1, 1)
    expected = (x_np - to_numpy(mean).reshape(bshape)) / np.sqrt(to_numpy(var).reshape(bshape) + 2e-5)
    np.testing.assert_allclose(to_numpy(y), expected)


def test_batch_norm_raw_arrays(xp):
    x = asarray(xp, np.random.default_rng(0).standard_normal((5, 2)))
    gamma, beta = asarray(xp, np.ones(2)), asarray(xp, np.zeros(2))
    mean, var = asarray(xp, np.zeros(2)), asarray(xp, np.ones(2))
    if library(xp) == "jax":
        with pytest.raises(TypeError, match=r"batch_norm: cannot update the running mean.*Variable"):
            F.batch_norm(x, gamma, beta, mean, var)
        return
    F.batch_norm(x, gamma, beta, mean, var)  # DeZero's behaviour: mutable arrays are updated in place
    np.testing.assert_allclose(to_numpy(mean), 0.1 * to_numpy(x).mean(axis=0))


# --- dropout -----------------------------------------------------------------------------------------


def test_dropout_train_and_test_mode(xp):
    x = Variable(asarray(xp, np.ones((200, 50)), dtype="float32"))
    numpy = library(xp) == "numpy"

    def reseed():
        seed(123)
        if numpy:
            np.random.seed(123)

    reseed()
    state = np.random.get_state()  # xdezero.seed seeds NumPy's generator too; dropout must not draw from it
    y = F.dropout(x, 0.4)
    values = to_numpy(y)
    assert y.dtype == xp.float32
    assert set(np.unique(values)) <= {0.0, np.float32(1 / 0.6)}
    assert abs((values == 0).mean() - 0.4) < 0.02
    reseed()
    np.testing.assert_array_equal(to_numpy(F.dropout(x, 0.4)), values)
    assert not np.array_equal(to_numpy(F.dropout(x, 0.4)), values)
    y.backward()
    np.testing.assert_array_equal(to_numpy(x.grad), values)
    with xdezero.test_mode():
        assert F.dropout(x) is x
    if numpy:  # DeZero's mask: np.random.rand(*shape) > ratio from NumPy's global generator
        np.random.seed(123)
        np.testing.assert_array_equal(values, (np.random.rand(200, 50) > 0.4) / np.float32(0.6))
    else:  # other libraries never touch NumPy's global generator
        np.testing.assert_equal(np.random.get_state(), state)


# --- xdezero.utils -----------------------------------------------------------------------------------


def test_utils_helpers(xp):
    from xdezero import utils

    a = np.arange(24.0).reshape(2, 3, 4)
    s = utils.sum_to(asarray(xp, a), (3, 1))
    np.testing.assert_array_equal(to_numpy(s), a.sum(axis=(0, 2)).reshape(3, 1))
    assert utils.max_backward_shape(asarray(xp, a), 1) == [2, 1, 4]
    assert utils.max_backward_shape(asarray(xp, a), None) == [1, 1, 1]
    assert utils.max_backward_shape(asarray(xp, a), (0, 2)) == [1, 3, 1]
    gy = utils.reshape_sum_backward(Variable(asarray(xp, np.ones((2, 4)))), (2, 3, 4), 1, False)
    assert gy.shape == (2, 1, 4)
    assert utils.array_equal(Variable(asarray(xp, a)), a)
    assert not utils.array_equal(asarray(xp, a), a + 1)
    assert utils.array_allclose(asarray(xp, a), a + 1e-7)
    assert not utils.array_allclose(asarray(xp, a), a + 1e-2)


def test_numerical_grad_and_gradient_check(xp):
    from xdezero import utils

    x_np = np.random.default_rng(0).standard_normal((2, 3))
    g = utils.numerical_grad(F.sin, asarray(xp, x_np))
    np.testing.assert_allclose(to_numpy(g), np.cos(x_np), rtol=1e-6)
    assert utils.gradient_check(F.sin, asarray(xp, x_np))
    assert utils.gradient_check(F.softmax_cross_entropy, asarray(xp, x_np), asarray(xp, np.array([2, 0])))

    class WrongSquare(xdezero.Function):
        def forward(self, x):
            return x * x

        def backward(self, gy):
            return gy * self.inputs[0] * 3

    assert not utils.gradient_check(lambda x: WrongSquare()(x), asarray(xp, x_np))
