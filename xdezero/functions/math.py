"""Elementwise math: square, exp, log, sin, cos, tanh, sqrt, abs."""

from __future__ import annotations

from typing import Any

from xdezero.core import Function, Variable

__all__ = ["square", "exp", "log", "sin", "cos", "tanh", "sqrt", "abs"]


class Square(Function):
    """y = x²; dy/dx = 2x."""

    def forward(self, x: Any) -> Any:
        """y = x²."""
        return x * x

    def backward(self, gy: Variable) -> Variable:
        """gx = 2x gy."""
        (x,) = self.inputs
        return gy * (x * 2)


class Exp(Function):
    """y = eˣ; dy/dx = y."""

    def forward(self, x: Any) -> Any:
        """y = eˣ."""
        return self.xp.exp(x)

    def backward(self, gy: Variable) -> Variable:
        """gx = eˣ gy."""
        (x,) = self.inputs
        return gy * exp(x)


class Log(Function):
    """y = log x; dy/dx = 1/x."""

    def forward(self, x: Any) -> Any:
        """y = log x."""
        return self.xp.log(x)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy / x."""
        (x,) = self.inputs
        return gy / x


class Sin(Function):
    """y = sin x; dy/dx = cos x."""

    def forward(self, x: Any) -> Any:
        """y = sin x."""
        return self.xp.sin(x)

    def backward(self, gy: Variable) -> Variable:
        """gx = cos(x) gy."""
        (x,) = self.inputs
        return gy * cos(x)


class Cos(Function):
    """y = cos x; dy/dx = -sin x."""

    def forward(self, x: Any) -> Any:
        """y = cos x."""
        return self.xp.cos(x)

    def backward(self, gy: Variable) -> Variable:
        """gx = -sin(x) gy."""
        (x,) = self.inputs
        return gy * -sin(x)


class Tanh(Function):
    """y = tanh x; dy/dx = 1 - y²."""

    def forward(self, x: Any) -> Any:
        """y = tanh x."""
        return self.xp.tanh(x)

    def backward(self, gy: Variable) -> Variable:
        """gx = (1 - y²) gy."""
        (x,) = self.inputs
        y = tanh(x)  # recomputed from the input, so the output need not stay alive
        return gy * (1 - y * y)


class Sqrt(Function):
    """y = √x; dy/dx = 1/(2y)."""

    def forward(self, x: Any) -> Any:
        """y = √x."""
        return self.xp.sqrt(x)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy / (2√x)."""
        (x,) = self.inputs
        return gy / (sqrt(x) * 2)


class Abs(Function):
    """y = |x|; dy/dx = sign(x)."""

    def forward(self, x: Any) -> Any:
        """y = |x|."""
        return self.xp.abs(x)

    def backward(self, gy: Variable) -> Variable:
        """gx = sign(x) gy."""
        (x,) = self.inputs
        return gy * Sign()(x)


class Sign(Function):
    """y = sign(x) ∈ {-1, 0, 1}; dy/dx = 0 (none is passed on)."""

    keeps_inputs: bool = False

    def forward(self, x: Any) -> Any:
        """y = sign(x)."""
        return self.xp.sign(x)

    def backward(self, gy: Variable) -> None:
        """No gradient: sign is piecewise constant."""
        return None


def square(x: Any) -> Variable:
    """x²."""
    return Square()(x)


def exp(x: Any) -> Variable:
    """eˣ."""
    return Exp()(x)


def log(x: Any) -> Variable:
    """Natural logarithm."""
    return Log()(x)


def sin(x: Any) -> Variable:
    """sin x."""
    return Sin()(x)


def cos(x: Any) -> Variable:
    """cos x."""
    return Cos()(x)


def tanh(x: Any) -> Variable:
    """tanh x."""
    return Tanh()(x)


def sqrt(x: Any) -> Variable:
    """√x."""
    return Sqrt()(x)


def abs(x: Any) -> Variable:
    """|x|."""
    return Abs()(x)
