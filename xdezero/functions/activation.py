"""Activations: sigmoid, relu, leaky_relu, softmax, log_softmax (and DeZero's composed `_simple` versions)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from xdezero.backends import array_namespace, device_of, fused
from xdezero.core import Function, Variable, as_variable
from xdezero.functions.math import exp
from xdezero.functions.shape import normalize_axis, sum

__all__ = ["sigmoid", "sigmoid_simple", "relu", "leaky_relu", "softmax", "softmax_simple", "log_softmax"]


def _live_output(f: Function, recompute: Callable[[], Variable]) -> Variable:
    """The function's output if it is still alive and still made by `f`, else an equivalent recomputation."""
    y = f.outputs[0]()
    return y if y is not None and y.creator is f else recompute()


def _sigmoid(xp: Any, x: Any) -> Any:
    # The tanh form never overflows, unlike 1 / (1 + exp(-x)) at x = -1000.
    y = xp.tanh(x * 0.5)
    y *= 0.5  # in place on this call's own fresh array (JAX rebinds)
    y += 0.5
    return y


def _sigmoid_grad(xp: Any, y: Any, gy: Any) -> Any:
    g = 1 - y
    g *= y
    g *= gy
    return g


class Sigmoid(Function):
    """y = 1 / (1 + e⁻ˣ); dy/dx = y (1 - y)."""

    def forward(self, x: Any) -> Any:
        """y = 1 / (1 + e⁻ˣ), computed as (1 + tanh(x/2)) / 2."""
        return fused("sigmoid", _sigmoid, self.xp, x)  # one kernel on CuPy

    def backward(self, gy: Variable) -> Variable:
        """gx = gy y (1 - y)."""
        y = _live_output(self, lambda: sigmoid(self.inputs[0]))
        return SigmoidGrad()(y, gy)


class SigmoidGrad(Function):
    """g = gy y (1 - y); dg/dy = gy (1 - 2y), dg/dgy = y (1 - y)."""

    def forward(self, y: Any, gy: Any) -> Any:
        """g = gy y (1 - y)."""
        # A primitive so that sigmoid's backward is one pass over the batch instead of four (one kernel on CuPy).
        return fused("sigmoid_grad", _sigmoid_grad, self.xp, y, gy)

    def backward(self, gg: Variable) -> tuple[Variable, Variable]:
        """(dy, dgy) = (gg gy (1 - 2y), gg y (1 - y))."""
        y, gy = self.inputs
        return gg * gy * (1 - 2 * y), gg * y * (1 - y)


def sigmoid(x: Any) -> Variable:
    """Logistic sigmoid 1 / (1 + e⁻ˣ), finite for any x."""
    return Sigmoid()(x)


def sigmoid_simple(x: Any) -> Variable:
    """1 / (1 + e⁻ˣ) composed from exp and division (overflows for very negative x; prefer sigmoid)."""
    x = as_variable(x)
    return 1 / (1 + exp(-x))


def _relu(xp: Any, x: Any) -> tuple[Any, Any]:
    # max(x, 0) rather than where(x > 0, x, 0): NumPy's where is ~10x slower on an unpredictable mask.
    zero = xp.zeros((), dtype=x.dtype, device=device_of(x))
    return xp.maximum(x, zero), xp.astype(x > 0, x.dtype)


class ReLU(Function):
    """y = max(x, 0); dy/dx = 1 where x > 0, else 0."""

    saved: tuple[str, ...] = ("mask",)
    keeps_inputs: bool = False
    mask: Any  # dy/dx as a 0/1 array of x's dtype, set by forward

    def forward(self, x: Any) -> Any:
        """y = max(x, 0)."""
        y, self.mask = fused("relu", _relu, self.xp, x)  # NumPy: into reused buffers
        return y

    def backward(self, gy: Variable) -> Variable:
        """gx = gy · [x > 0]."""
        return gy * self.mask


def relu(x: Any) -> Variable:
    """max(x, 0)."""
    return ReLU()(x)


class LeakyReLU(Function):
    """y = x where x > 0, else slope·x; dy/dx = 1 or slope."""

    saved: tuple[str, ...] = ("mask",)
    keeps_inputs: bool = False
    mask: Any  # dy/dx: 1 or slope per element, set by forward

    def __init__(self, slope: float) -> None:
        self.slope = slope

    def forward(self, x: Any) -> Any:
        """y = x · (1 where x > 0, else slope)."""
        self.mask = self.xp.astype(x > 0, x.dtype) * (1 - self.slope) + self.slope
        return x * self.mask  # a product, not `where`, which NumPy runs ~10x slower on an unpredictable mask

    def backward(self, gy: Variable) -> Variable:
        """gx = gy · (1 where x > 0, else slope)."""
        return gy * self.mask


def leaky_relu(x: Any, slope: float = 0.2) -> Variable:
    """x for x > 0, slope·x otherwise."""
    return LeakyReLU(slope)(x)


class Softmax(Function):
    """y = eˣ / Σ eˣ over `axis`; dx = y (gy - Σ y gy)."""

    def __init__(self, axis: tuple[int, ...]) -> None:
        self.axis = axis

    def forward(self, x: Any) -> Any:
        """y = eˣ⁻ᵐ / Σ eˣ⁻ᵐ with m = max x over `axis`."""
        xp = self.xp
        # A primitive because exp(x) alone overflows: shift by the max, which leaves softmax unchanged.
        e = xp.exp(x - xp.max(x, axis=self.axis, keepdims=True))
        return e / xp.sum(e, axis=self.axis, keepdims=True)

    def backward(self, gy: Variable) -> Variable:
        """gx = y (gy - Σ y gy)."""
        y = _live_output(self, lambda: softmax(self.inputs[0], self.axis))
        gx = y * gy
        return gx - y * sum(gx, self.axis, keepdims=True)


def softmax(x: Any, axis: int | tuple[int, ...] = 1) -> Variable:
    """eˣ / Σ eˣ over `axis`, finite for any finite x."""
    x = as_variable(x)
    return Softmax(normalize_axis(axis, x.ndim, "softmax"))(x)


def softmax_simple(x: Any, axis: int | tuple[int, ...] = 1) -> Variable:
    """Softmax composed from exp, sum and division."""
    x = as_variable(x)
    axes = normalize_axis(axis, x.ndim, "softmax_simple")
    # Shifting by a constant leaves softmax and its gradient unchanged and keeps exp from overflowing.
    y = exp(x - as_variable(_finite_max(x.data, axes)))
    return y / sum(y, axes, keepdims=True)


def _finite_max(data: Any, axes: tuple[int, ...]) -> Any:
    xp = array_namespace(data)
    m = xp.max(data, axis=axes, keepdims=True)
    return xp.where(xp.isfinite(m), m, xp.zeros_like(m))


class LogSoftmax(Function):
    """y = x - log Σ eˣ over `axis`; dx = gy - eʸ Σ gy."""

    def __init__(self, axis: tuple[int, ...]) -> None:
        self.axis = axis

    def forward(self, x: Any) -> Any:
        """y = (x - m) - log Σ eˣ⁻ᵐ with m = max x over `axis`."""
        # A primitive because log(softmax(x)) underflows to log 0 for logits far below the max. It is (x - m) - log s,
        # not x - logsumexp(x): x - (m + log s) rounds at the scale of m (3e-5 off at x = 1000 in float32).
        xp = self.xp
        m = xp.max(x, axis=self.axis, keepdims=True)
        z = x - xp.where(xp.isfinite(m), m, 0.0)  # a row of -inf (or an inf) is shifted by 0, not made NaN
        s = xp.sum(xp.exp(z), axis=self.axis, keepdims=True)
        # log 0 = -inf is the right answer for a row of -inf, so the log is guarded only against the warning.
        return z - xp.where(s > 0, xp.log(xp.where(s > 0, s, 1.0)), -math.inf)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy - eʸ Σ gy."""
        y = self.outputs[0]()
        p = exp(y) if y is not None and y.creator is self else softmax(self.inputs[0], self.axis)
        return gy - p * sum(gy, self.axis, keepdims=True)


def log_softmax(x: Any, axis: int | tuple[int, ...] = 1) -> Variable:
    """log softmax(x) over `axis`, finite for any finite x."""
    x = as_variable(x)
    return LogSoftmax(normalize_axis(axis, x.ndim, "log_softmax"))(x)
