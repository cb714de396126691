"""Gradient checking against float64 finite differences, on any backend.

`check_gradients(f, *inputs, order=2)` draws a random upstream gradient `gy` and, for every differentiable
input, a random direction `v`, then compares the analytic directional derivative ⟨∇ₓ⟨gy, f⟩, v⟩ with the
central difference (⟨gy, f(x + εv)⟩ − ⟨gy, f(x − εv)⟩) / 2ε. Order 2 repeats the check on the function
x ↦ Σᵢ⟨wᵢ, ∇ₓᵢ⟨gy, f⟩⟩ built with `backward(create_graph=True)`, i.e. it checks the double backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xdezero._config import no_grad
from xdezero.backends import array_namespace, device_of, library_name
from xdezero.core import Variable

__all__ = ["GradientCheckError", "check_gradients"]


class GradientCheckError(AssertionError):
    """An analytic gradient disagrees with finite differences (or has the wrong library, dtype or shape)."""


def _is_float(x: Any) -> bool:
    xp = array_namespace(x)
    return xp.isdtype(x.dtype, "real floating")


def _random_like(rng: np.random.Generator, x: Any) -> Any:
    xp = array_namespace(x)
    return xp.asarray(rng.standard_normal(tuple(x.shape)).astype(np.float64), dtype=x.dtype, device=device_of(x))


def _dot(a: Any, b: Any) -> float:
    xp = array_namespace(a)
    return float(xp.sum(a * b))


def _as_output(y: Any, name: str) -> Variable:
    if not isinstance(y, Variable):
        raise TypeError(f"{name} must return a Variable, got {type(y).__name__}")
    return y


def check_gradients(
    f: Callable[..., Variable],
    *inputs: Any,
    order: int = 2,
    wrt: Sequence[int] | None = None,
    eps: float = 1e-6,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    seed: int = 0,
    name: str | None = None,
) -> None:
    """Raise GradientCheckError unless `f`'s derivatives up to `order` (1 or 2) match finite differences.

    `inputs` are raw arrays (float64 recommended); `wrt` picks the inputs to differentiate (by default every
    real floating input). Gradients must also come back in the input's library, dtype and shape.
    """
    if order not in (1, 2):
        raise ValueError(f"check_gradients: order must be 1 or 2, got {order!r}")
    name = name or getattr(f, "__name__", repr(f))
    rng = np.random.default_rng(seed)
    wrt = [i for i, x in enumerate(inputs) if _is_float(x)] if wrt is None else list(wrt)
    if not wrt:
        raise ValueError(f"check_gradients({name}): no real floating input to differentiate")

    def value_and_grads(*xs: Any) -> tuple[Variable, list]:
        vs = [Variable(x) for x in xs]
        y = _as_output(f(*vs), name)
        return y, vs

    y0, _ = value_and_grads(*inputs)
    gy = _random_like(rng, y0.data)

    def first(*xs: Any) -> list:
        """∇ₓ⟨gy, f(x)⟩ for each input in wrt, computed analytically."""
        y, vs = value_and_grads(*xs)
        y.grad = Variable(gy)
        y.backward()
        return [vs[i].grad for i in wrt]

    def objective(*xs: Any) -> float:
        with no_grad():
            return _dot(gy, _as_output(f(*[Variable(x) for x in xs]), name).data)

    _compare(name, 1, inputs, wrt, first(*inputs), objective, rng, eps, rtol, atol)
    if order == 1:
        return

    weights = [_random_like(rng, inputs[i]) for i in wrt]

    def second(*xs: Any) -> list:
        y, vs = value_and_grads(*xs)
        y.grad = Variable(gy)
        y.backward(create_graph=True)
        total = None
        for i, w in zip(wrt, weights):
            g = vs[i].grad
            if g is None or g.creator is None:
                continue  # a gradient that does not depend on the inputs: its derivative is zero
            term = (g * Variable(w)).sum()
            total = term if total is None else total + term
        if total is None:
            return [None] * len(wrt)
        for v in vs:
            v.cleargrad()
        total.backward()
        return [vs[i].grad for i in wrt]

    def first_objective(*xs: Any) -> float:
        grads = first(*xs)
        return sum(_dot(w, g.data) for w, g in zip(weights, grads) if g is not None)

    _compare(name, 2, inputs, wrt, second(*inputs), first_objective, rng, eps, rtol, atol)


def _compare(name, order, inputs, wrt, grads, objective, rng, eps, rtol, atol) -> None:
    for i, g in zip(wrt, grads):
        x = inputs[i]
        where = f"{name}, order {order}, input {i} ({library_name(x)} {x.dtype} {tuple(x.shape)})"
        if g is not None:
            gd = g.data
            if library_name(gd) != library_name(x) or gd.dtype != x.dtype or tuple(gd.shape) != tuple(x.shape):
                raise GradientCheckError(
                    f"gradient check failed for {where}: the gradient is a {library_name(gd)} {gd.dtype} array "
                    f"of shape {tuple(gd.shape)}; expected the input's library, dtype and shape"
                )
        v = _random_like(rng, x)
        plus = [xi + eps * v if j == i else xi for j, xi in enumerate(inputs)]
        minus = [xi - eps * v if j == i else xi for j, xi in enumerate(inputs)]
        numerical = (objective(*plus) - objective(*minus)) / (2 * eps)
        analytic = 0.0 if g is None else _dot(g.data, v)
        if not abs(analytic - numerical) <= atol + rtol * abs(numerical):
            raise GradientCheckError(
                f"gradient check failed for {where}: analytic directional derivative {analytic:.10g}, "
                f"finite difference {numerical:.10g} (eps={eps}, rtol={rtol}, atol={atol})"
            )
