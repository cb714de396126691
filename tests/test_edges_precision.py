"""float16 and bfloat16 at the edges: gradient clipping, the adaptive optimizers' eps, batch-norm statistics.

Each result is compared with a float64 NumPy reference of the same formula (inputs rounded to the low dtype
first), with a tolerance of a few units in the last place of that dtype. Every backend with the dtype runs:
NumPy, torch and JAX have float16; torch and JAX also bfloat16; array-api-strict has neither (float32/64
cases run there too).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import library, to_numpy
from xdezero import Parameter, Variable
from xdezero import optimizers as O
from xdezero.backends import array_namespace
from xdezero.layers import Layer


def narrow_dtypes(xp):
    """(name, dtype) of the float16/bfloat16 dtypes of this backend."""
    lib = library(xp)
    if lib == "torch":
        import torch

        return [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
    if lib == "jax":
        import jax.numpy as jnp

        return [("float16", jnp.float16), ("bfloat16", jnp.bfloat16)]
    if lib == "numpy":
        return [("float16", np.float16)]
    return []


# Relative size of one unit in the last place, for tolerances.
ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def each_narrow(xp):
    dtypes = narrow_dtypes(xp)
    if not dtypes:
        pytest.skip(f"{library(xp)} has no float16/bfloat16")
    return dtypes


def narrow(xp, a, dtype):
    """NumPy array `a` as a backend array of `dtype` (through float32, which every dtype converts from)."""
    return xp.astype(xp.asarray(np.asarray(a, np.float32)), dtype)


def wide(a):
    """Any backend array (bfloat16 included) as a float64 NumPy array."""
    a = a.data if isinstance(a, Variable) else a
    xp = array_namespace(a)
    return to_numpy(xp.astype(a, xp.float32)).astype(np.float64)


class Params(Layer):
    def __init__(self, *arrays):
        super().__init__()
        for i, a in enumerate(arrays):
            setattr(self, f"p{i}", a if isinstance(a, Parameter) else Parameter(a))


# --- ClipGrad ----------------------------------------------------------------------------------------------


def clip_reference(grads, max_norm):
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads))
    return [g * min(1.0, max_norm / (norm + 1e-6)) for g in grads]


def test_clip_grad_clips_float16_and_bfloat16_instead_of_zeroing(xp):
    # 300² and a sum of 70,000 ones both overflow float16 (max 65504): the old norm was inf and the factor 0.
    grads = [np.array([300.0, -400.0, 0.0, 1.5]), np.ones(70_000)]
    for name, dtype in each_narrow(xp):
        model = Params(*(narrow(xp, np.zeros_like(g), dtype) for g in grads))
        params = list(model.params())
        for p, g in zip(params, grads):
            p.grad = Variable(narrow(xp, g, dtype))
        expected = clip_reference([wide(p.grad) for p in params], 1.0)  # from the rounded inputs
        O.ClipGrad(1.0)(params)
        for p, e in zip(params, expected):
            assert p.grad.dtype == dtype, name
            np.testing.assert_allclose(wide(p.grad), e, rtol=2 * ULP[name], atol=0, err_msg=name)


@pytest.mark.parametrize(("dtype", "scale"), [("float32", 1e20), ("float64", 1e200)])
def test_clip_grad_norm_does_not_overflow_in_float32_or_float64(xp, dtype, scale):
    g = np.array([3.0, -4.0, 0.0]) * scale
    p = Parameter(xp.asarray(np.zeros(3, dtype)))
    p.grad = Variable(xp.asarray(g.astype(dtype)))
    O.ClipGrad(2.0)([p])
    np.testing.assert_allclose(to_numpy(p.grad), [1.2, -1.6, 0.0], rtol=1e-6)


def test_clip_grad_of_zero_and_infinite_gradients_matches_torch(xp, torch):
    zero = Parameter(xp.asarray(np.zeros(2)))
    zero.grad = Variable(xp.asarray(np.zeros(2)))
    O.ClipGrad(1.0)([zero])
    np.testing.assert_array_equal(to_numpy(zero.grad), [0.0, 0.0])

    g = np.array([1.0, np.inf, -2.0])
    p = Parameter(xp.asarray(np.zeros(3)))
    p.grad = Variable(xp.asarray(g))
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_([t], 1.0)
    with warnings.catch_warnings():  # NumPy warns on inf·0, the NaN that torch gives too
        warnings.simplefilter("ignore", RuntimeWarning)
        O.ClipGrad(1.0)([p])
    np.testing.assert_array_equal(to_numpy(p.grad), t.grad.numpy())  # [0, nan, -0]: inf·0


# --- adaptive optimizers: finite updates, state in float32 -------------------------------------------------

# |g| = 1e-4 squares to 1e-8, below float16's smallest subnormal (6e-8): v = 0 while m != 0.
GRAD = np.array([1e-4, -3e-4, 0.5, -2.0, 0.0, 7.0])
P0 = np.array([0.01, -0.02, 0.03, 0.0, 0.05, -0.04])


def ref_steps(name, g, steps, **kw):
    """P0 after `steps` updates with the constant gradient g, in float64 (DeZero's formulas)."""
    p, s = P0.copy(), {"m": 0.0, "v": 0.0, "h": 0.0, "msg": 0.0, "msdx": 0.0}
    for t in range(1, steps + 1):
        if name == "Adam":
            b1, b2, eps = 0.9, 0.999, 1e-8
            s["m"] = s["m"] + (1 - b1) * (g - s["m"])
            s["v"] = s["v"] + (1 - b2) * (g * g - s["v"])
            lr = kw["alpha"] * math.sqrt(1 - b2**t) / (1 - b1**t)
            p = p - lr * s["m"] / (np.sqrt(s["v"]) + eps)
        elif name == "AdaGrad":
            s["h"] = s["h"] + g * g
            p = p - kw["lr"] * g / (np.sqrt(s["h"]) + 1e-8)
        elif name == "AdaDelta":
            rho, eps = 0.95, 1e-6
            s["msg"] = rho * s["msg"] + (1 - rho) * g * g
            dx = np.sqrt((s["msdx"] + eps) / (s["msg"] + eps)) * g
            s["msdx"] = rho * s["msdx"] + (1 - rho) * dx * dx
            p = p - dx
        elif name == "MomentumSGD":
            s["v"] = 0.9 * s["v"] - kw["lr"] * g
            p = p + s["v"]
    return p


OPTIMIZERS = [
    ("Adam", {"alpha": 1e-3}),
    ("AdaGrad", {"lr": 1e-3}),
    ("AdaDelta", {}),
    ("MomentumSGD", {"lr": 1e-4}),
]


@pytest.mark.parametrize(("name", "kw"), OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizers_on_narrow_parameters_follow_the_float64_reference(xp, name, kw):
    steps = 30
    for dname, dtype in each_narrow(xp):
        p = Parameter(narrow(xp, P0, dtype))
        g = narrow(xp, GRAD, dtype)
        opt = getattr(O, name)(**kw).setup(Params(p))
        for _ in range(steps):
            p.grad = Variable(g)
            opt.update()
        assert p.dtype == dtype
        got = wide(p)
        assert np.isfinite(got).all(), f"{name} {dname}: {got}"
        expected = ref_steps(name, wide(g), steps, **kw)
        # Each step rounds p to the dtype: allow one unit in the last place of |p| per step.
        atol = steps * ULP[dname] * np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=f"{name} {dname}")


def test_adam_on_a_zero_float16_gradient_leaves_the_parameter_unchanged(xp):
    # eps = 1e-8 rounds to 0 in float16: the old update was 0 / (0 + 0) = NaN.
    for dname, dtype in each_narrow(xp):
        p = Parameter(narrow(xp, [1.0, -2.0], dtype))
        opt = O.Adam().setup(Params(p))
        p.grad = Variable(narrow(xp, [0.0, 0.0], dtype))
        opt.update()
        np.testing.assert_array_equal(wide(p), [1.0, -2.0], err_msg=dname)


def test_state_is_float32_for_narrow_parameters_and_the_parameters_own_dtype_otherwise(xp):
    for dname, dtype in [*narrow_dtypes(xp), ("float32", xp.float32), ("float64", xp.float64)]:
        p = Parameter(narrow(xp, [1.0, 2.0], dtype))
        opt = O.Adam().setup(Params(p))
        p.grad = Variable(narrow(xp, [0.5, -0.5], dtype))
        opt.update()
        assert p.dtype == dtype
        assert opt.ms[p].dtype == (xp.float32 if dname in ULP else dtype), dname


# --- batch normalization: statistics of many values ---------------------------------------------------------


def test_batch_norm_of_a_large_narrow_batch_is_finite_and_right(xp):
    # 4·100·100 = 40,000 values per channel around 2: their float16 sum (80,000) overflows.
    rng = np.random.default_rng(0)
    x = 2.0 + 0.1 * rng.standard_normal((4, 2, 100, 100))
    for dname, dtype in each_narrow(xp):
        xv = Variable(narrow(xp, x, dtype))
        gamma = Variable(narrow(xp, [1.0, 2.0], dtype))
        mean, var = Variable(narrow(xp, [0.0, 0.0], dtype)), Variable(narrow(xp, [1.0, 1.0], dtype))
        y = F.batch_norm(xv, gamma, narrow(xp, [0.0, 0.5], dtype), mean, var)
        assert y.dtype == dtype
        xr = wide(xv)
        mu, s2 = xr.mean(axis=(0, 2, 3), keepdims=True), xr.var(axis=(0, 2, 3), keepdims=True)
        expected = (xr - mu) / np.sqrt(s2 + 2e-5) * np.array([1.0, 2.0]).reshape(1, 2, 1, 1)
        expected += np.array([0.0, 0.5]).reshape(1, 2, 1, 1)
        np.testing.assert_allclose(wide(y), expected, rtol=0, atol=8 * ULP[dname] * np.abs(expected).max())
        np.testing.assert_allclose(wide(mean), 0.1 * mu.ravel(), rtol=4 * ULP[dname])
        F.sum(y * (1.0 / y.size)).backward()
        assert np.isfinite(wide(xv.grad)).all() and np.isfinite(wide(gamma.grad)).all(), dname
