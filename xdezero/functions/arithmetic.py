"""Arithmetic, the ops behind Variable's operators, and the broadcast / sum-to pair that undoes broadcasting.

A Python or NumPy number as an operand takes the array's dtype (NumPy 2's rule for Python numbers), so
`float32_variable * 2.0` and `float32_variable * np.float64(2.0)` stay float32, and it becomes a constant of
the op (AddConstant, MulConstant, ...) instead of an input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from xdezero.backends import describe, fused
from xdezero.core import Function, Variable, as_variable

__all__ = ["add", "sub", "rsub", "mul", "div", "rdiv", "neg", "pow", "rpow", "sum_to", "broadcast_to", "sum_to_array"]


def _is_scalar(x: Any) -> bool:
    """A Python or NumPy number used as an operand: it takes the array's dtype instead of forcing float64."""
    t = type(x)
    return t is float or t is int or (not isinstance(x, Variable) and isinstance(x, numbers.Number))


def _number(c: Any) -> Any:
    """A scalar operand as a Python number (NumPy scalars too, so that every library accepts it)."""
    return c.item() if isinstance(c, np.generic) else c


def _check_broadcastable(name: str, a: Any, b: Any) -> None:
    for m, n in zip(reversed(a.shape), reversed(b.shape)):
        if m != n and m != 1 and n != 1:
            raise ValueError(
                f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together "
                "(trailing dimensions must be equal or 1)"
            )


def _unbroadcast(gx: Variable, shape: tuple[int, ...]) -> Variable:
    return gx if gx.shape == shape else sum_to(gx, shape)


class Add(Function):
    """y = x0 + x1; dy/dx0 = dy/dx1 = 1 (summed over broadcast axes)."""

    keeps_inputs = False

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = x0 + x1, broadcasting."""
        self.shapes: tuple[tuple[int, ...], tuple[int, ...]] = (tuple(x0.shape), tuple(x1.shape))
        if self.shapes[0] != self.shapes[1]:
            _check_broadcastable("add", x0, x1)
        return x0 + x1

    def backward(self, gy: Variable) -> tuple[Variable | None, Variable | None]:
        """gx0, gx1 = (gy, gy), each summed over its broadcast axes."""
        n0, n1 = self.needs_grad
        return (_unbroadcast(gy, self.shapes[0]) if n0 else None, _unbroadcast(gy, self.shapes[1]) if n1 else None)


class Sub(Function):
    """y = x0 - x1; dy/dx0 = 1, dy/dx1 = -1."""

    keeps_inputs = False

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = x0 - x1, broadcasting."""
        self.shapes: tuple[tuple[int, ...], tuple[int, ...]] = (tuple(x0.shape), tuple(x1.shape))
        if self.shapes[0] != self.shapes[1]:
            _check_broadcastable("sub", x0, x1)
        return x0 - x1

    def backward(self, gy: Variable) -> tuple[Variable | None, Variable | None]:
        """gx0, gx1 = (gy, -gy), each summed over its broadcast axes."""
        n0, n1 = self.needs_grad
        return (_unbroadcast(gy, self.shapes[0]) if n0 else None, _unbroadcast(-gy, self.shapes[1]) if n1 else None)


class Mul(Function):
    """y = x0 * x1; dy/dx0 = x1, dy/dx1 = x0."""

    inputs_read: tuple[tuple[int, ...], ...] | None = ((1,), (0,))

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = x0 * x1, broadcasting."""
        self.shapes: tuple[tuple[int, ...], tuple[int, ...]] = (tuple(x0.shape), tuple(x1.shape))
        if self.shapes[0] != self.shapes[1]:
            _check_broadcastable("mul", x0, x1)
        return x0 * x1

    def backward(self, gy: Variable) -> tuple[Variable | None, Variable | None]:
        """gx0, gx1 = (gy x1, gy x0), each summed over its broadcast axes."""
        x0, x1 = self.inputs
        n0, n1 = self.needs_grad
        return (
            _unbroadcast(gy * x1, self.shapes[0]) if n0 else None,
            _unbroadcast(gy * x0, self.shapes[1]) if n1 else None,
        )


class Div(Function):
    """y = x0 / x1; dy/dx0 = 1/x1, dy/dx1 = -x0/x1²."""

    inputs_read: tuple[tuple[int, ...], ...] | None = ((1,), (0, 1))

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = x0 / x1, broadcasting."""
        self.shapes: tuple[tuple[int, ...], tuple[int, ...]] = (tuple(x0.shape), tuple(x1.shape))
        if self.shapes[0] != self.shapes[1]:
            _check_broadcastable("div", x0, x1)
        return x0 / x1

    def backward(self, gy: Variable) -> tuple[Variable | None, Variable | None]:
        """gx0, gx1 = (gy / x1, -gy x0 / x1²), each summed over its broadcast axes."""
        x0, x1 = self.inputs
        n0, n1 = self.needs_grad
        gx0 = gy / x1
        return (
            _unbroadcast(gx0, self.shapes[0]) if n0 else None,
            _unbroadcast(-gx0 * x0 / x1, self.shapes[1]) if n1 else None,
        )


class Neg(Function):
    """y = -x; dy/dx = -1."""

    keeps_inputs = False

    def forward(self, x: Any) -> Any:
        """y = -x."""
        return -x

    def backward(self, gy: Variable) -> Variable:
        """gx = -gy."""
        return -gy


class AddConstant(Function):
    """y = x + c for a Python number c; dy/dx = 1."""

    keeps_inputs = False

    def __init__(self, c: float) -> None:
        self.c: float = c

    def forward(self, x: Any) -> Any:
        """y = x + c."""
        return x + self.c

    def backward(self, gy: Variable) -> Variable:
        """gx = gy."""
        return gy


class RSubConstant(Function):
    """y = c - x for a Python number c; dy/dx = -1."""

    keeps_inputs = False

    def __init__(self, c: float) -> None:
        self.c: float = c

    def forward(self, x: Any) -> Any:
        """y = c - x."""
        return self.c - x

    def backward(self, gy: Variable) -> Variable:
        """gx = -gy."""
        return -gy


class MulConstant(Function):
    """y = c * x for a Python number c; dy/dx = c."""

    keeps_inputs = False

    def __init__(self, c: float) -> None:
        self.c: float = c

    def forward(self, x: Any) -> Any:
        """y = c x."""
        return x * self.c

    def backward(self, gy: Variable) -> Variable:
        """gx = c gy."""
        return gy * self.c


class DivConstant(Function):
    """y = x / c for a Python number c; dy/dx = 1/c."""

    keeps_inputs = False

    def __init__(self, c: float) -> None:
        self.c: float = c

    def forward(self, x: Any) -> Any:
        """y = x / c."""
        return x / self.c

    def backward(self, gy: Variable) -> Variable:
        """gx = gy / c."""
        return gy / self.c


class RDivConstant(Function):
    """y = c / x for a Python number c; dy/dx = -c/x²."""

    def __init__(self, c: float) -> None:
        self.c: float = c

    def forward(self, x: Any) -> Any:
        """y = c / x."""
        return self.c / x

    def backward(self, gy: Variable) -> Variable:
        """gx = -c gy / x²."""
        (x,) = self.inputs
        return gy * (-self.c) / (x * x)


class Pow(Function):
    """y = x ** c for a Python number c; dy/dx = c x^(c-1)."""

    def __init__(self, c: float) -> None:
        self.c: float = c

    def forward(self, x: Any) -> Any:
        """y = x ** c."""
        return x**self.c

    def backward(self, gy: Variable) -> Variable:
        """gx = c x^(c-1) gy (zero for c = 0)."""
        (x,) = self.inputs
        if self.c == 0:  # x**0 is constant; c x^(c-1) would be 0 * inf = nan at x = 0
            return Variable(self.xp.zeros_like(x.data), requires_grad=False)
        return gy * (self.c * x ** (self.c - 1))


class RPow(Function):
    """y = c ** x for a positive Python number c; dy/dx = log(c) c^x."""

    def __init__(self, c: float) -> None:
        self.c: float = c

    def forward(self, x: Any) -> Any:
        """y = c ** x."""
        return self.c**x

    def backward(self, gy: Variable) -> Variable:
        """gx = log(c) c^x gy."""
        (x,) = self.inputs
        return gy * rpow(x, self.c) * math.log(self.c)


class SumTo(Function):
    """y = x summed down to `shape` (the inverse of broadcasting); dy/dx = broadcast back."""

    keeps_inputs = False

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape: tuple[int, ...] = tuple(shape)

    def forward(self, x: Any) -> Any:
        """y = x summed down to `shape`."""
        self.x_shape: tuple[int, ...] = tuple(x.shape)
        if self.x_shape == self.shape:
            return sum_to_array(self.xp, x, self.shape)  # nothing to sum (a fresh copy is not needed)
        return fused("sum_to", sum_to_array, self.xp, x, self.shape)  # JAX: one compiled call

    def backward(self, gy: Variable) -> Variable:
        """gx = gy broadcast to x's shape."""
        return broadcast_to(gy, self.x_shape)


class BroadcastTo(Function):
    """y = x broadcast to `shape` (a fresh, writable array); dy/dx = sum back to x's shape."""

    keeps_inputs = False

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape: tuple[int, ...] = tuple(shape)

    def forward(self, x: Any) -> Any:
        """y = x broadcast to `shape`, as a fresh array."""
        self.x_shape: tuple[int, ...] = tuple(x.shape)
        try:
            y = self.xp.broadcast_to(x, self.shape)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"broadcast_to: cannot broadcast shape {self.x_shape} to {self.shape}") from e
        return self.xp.asarray(y, copy=True)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy summed down to x's shape."""
        return sum_to(gy, self.x_shape)


def sum_to_array(xp: Any, x: Any, shape: Sequence[int]) -> Any:
    """Sum the raw array `x` down to `shape` (undoing a broadcast)."""
    shape = tuple(shape)
    if tuple(x.shape) == shape:
        return x
    lead = x.ndim - len(shape)
    if lead < 0 or any(s != 1 and s != n for s, n in zip(shape, tuple(x.shape)[lead:])):
        raise ValueError(f"sum_to: shape {tuple(x.shape)} cannot be summed to {shape}")
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
    y = xp.sum(x, axis=axes, keepdims=True)
    return xp.reshape(y, shape) if lead else y


def add(x0: Any, x1: Any) -> Variable:
    """x0 + x1, broadcasting; a Python number operand takes the other operand's dtype."""
    if _is_scalar(x1):
        return AddConstant(_number(x1))(x0)
    if _is_scalar(x0):
        return AddConstant(_number(x0))(x1)
    return Add()(x0, x1)


def sub(x0: Any, x1: Any) -> Variable:
    """x0 - x1, broadcasting."""
    if _is_scalar(x1):
        return AddConstant(-_number(x1))(x0)
    if _is_scalar(x0):
        return RSubConstant(_number(x0))(x1)
    return Sub()(x0, x1)


def rsub(x0: Any, x1: Any) -> Variable:
    """x1 - x0 (DeZero's reflected subtraction)."""
    return sub(x1, x0)


def mul(x0: Any, x1: Any) -> Variable:
    """x0 * x1, broadcasting."""
    if _is_scalar(x1):
        return MulConstant(_number(x1))(x0)
    if _is_scalar(x0):
        return MulConstant(_number(x0))(x1)
    return Mul()(x0, x1)


def div(x0: Any, x1: Any) -> Variable:
    """x0 / x1, broadcasting."""
    if _is_scalar(x1):
        return DivConstant(_number(x1))(x0)
    if _is_scalar(x0):
        return RDivConstant(_number(x0))(x1)
    return Div()(x0, x1)


def rdiv(x0: Any, x1: Any) -> Variable:
    """x1 / x0 (DeZero's reflected division)."""
    return div(x1, x0)


def neg(x: Any) -> Variable:
    """-x."""
    return Neg()(x)


def pow(x: Any, c: Any) -> Variable:
    """x ** c for a Python number c."""
    if not _is_scalar(c):
        raise TypeError(f"pow: the exponent must be a Python number, not {describe(c)}")
    return Pow(_number(c))(x)


def rpow(x: Any, c: Any) -> Variable:
    """c ** x for a positive Python number c (the reflected power)."""
    if not _is_scalar(c):
        raise TypeError(f"pow: the base of `base ** Variable` must be a Python number, not {describe(c)}")
    return RPow(_number(c))(x)


def sum_to(x: Any, shape: Sequence[int]) -> Variable:
    """Sum x down to `shape`; the backward of broadcasting."""
    x = as_variable(x)
    if x.shape == tuple(shape):
        return x
    return SumTo(shape)(x)


def broadcast_to(x: Any, shape: Sequence[int]) -> Variable:
    """Broadcast x to `shape`."""
    x = as_variable(x)
    if x.shape == tuple(shape):
        return x
    return BroadcastTo(shape)(x)
