"""Reductions and clipping: max, min, clip, and the raw-array log-sum-exp they share helpers with."""

from __future__ import annotations

import math
from typing import Any

from xdezero.backends import array_namespace
from xdezero.core import Function, Variable, as_variable
from xdezero.functions.arithmetic import broadcast_to
from xdezero.functions.shape import normalize_axis, reshape

__all__ = ["max", "min", "clip", "logsumexp", "max_backward_shape"]


def max_backward_shape(x: Any, axis: int | tuple[int, ...] | None) -> list[int]:
    """The shape of a max/min over `axis` with the reduced axes kept as 1 (so it broadcasts back to x)."""
    axes = normalize_axis(axis, x.ndim, "max_backward_shape")
    return [1 if i in axes else s for i, s in enumerate(x.shape)]


def logsumexp(x: Any, axis: int | tuple[int, ...] | None = 1) -> Any:
    """log Σ exp(x) over `axis` on a raw array, keeping the reduced axes (shifted by the max for stability)."""
    xp = array_namespace(x)
    axes = normalize_axis(axis, x.ndim, "logsumexp")
    m = xp.max(x, axis=axes, keepdims=True)
    # A row of -inf (or an inf) would make x - m NaN: shift by 0 there instead; log 0 then gives -inf.
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = xp.sum(xp.exp(x - m), axis=axes, keepdims=True)
    nonzero = s > 0
    log_s = xp.where(nonzero, xp.log(xp.where(nonzero, s, xp.ones_like(s))), xp.full_like(s, -math.inf))
    return log_s + m


class _Extremum(Function):
    """y = max/min x over `axis`; dy/dx = 1/k at each of the k positions equal to y, 0 elsewhere.

    Ties share the gradient equally, as torch.amax/amin do: the average of the tied positions' one-hot gradients,
    a subgradient that sums to 1. A NaN in a reduced slice makes that slice's gradient NaN, as in torch.
    """

    keeps_inputs = False
    saved: tuple[str, ...] = ("mask",)
    name: str = "max"

    def __init__(self, axis: int | tuple[int, ...] | None, keepdims: bool) -> None:
        self.axis: int | tuple[int, ...] | None = axis
        self.keepdims: bool = keepdims

    def reduce(self, x: Any, axes: tuple[int, ...], keepdims: bool) -> Any:
        """The raw reduction of array x over `axes` (xp.max or xp.min)."""
        raise NotImplementedError

    def forward(self, x: Any) -> Any:
        """y = max/min x over `axis`; keeps the mask of tied positions for backward."""
        self.x_shape: tuple[int, ...] = tuple(x.shape)
        axes = normalize_axis(self.axis, x.ndim, self.name)
        if x.ndim and any(x.shape[a] == 0 for a in axes):
            raise ValueError(f"{self.name}: cannot reduce over an empty axis of an array of shape {self.x_shape}")
        y = self.reduce(x, axes, True)
        # The mask is a constant of the graph: the second derivative of max is zero almost everywhere.
        # The tie count, summed as int32 (array-api-strict sums no booleans).
        xp, hits = self.xp, x == y
        count = xp.sum(xp.astype(hits, xp.int32), axis=axes, keepdims=True)
        counted = count > 0  # no position equals y only where y is NaN: that slice's gradient is NaN
        share = xp.astype(hits, x.dtype) / xp.astype(xp.where(counted, count, 1), x.dtype)
        self.mask: Any = xp.where(counted, share, math.nan)
        self.kept_shape: tuple[int, ...] = tuple(y.shape)
        return y if self.keepdims else self.xp.reshape(y, tuple(s for i, s in enumerate(y.shape) if i not in axes))

    def backward(self, gy: Variable) -> Variable:
        """gx = gy broadcast back to x's shape, times the mask (1/k at each of k tied extrema)."""
        gy = reshape(gy, self.kept_shape)
        return broadcast_to(gy, self.x_shape) * self.mask


class Max(_Extremum):
    """y = max x over `axis`; dy/dx = 1/k at each of the k positions equal to y, 0 elsewhere."""

    name = "max"

    def reduce(self, x: Any, axes: tuple[int, ...], keepdims: bool) -> Any:
        """xp.max(x, axis=axes, keepdims=keepdims)."""
        return self.xp.max(x, axis=axes, keepdims=keepdims)


class Min(_Extremum):
    """y = min x over `axis`; dy/dx = 1/k at each of the k positions equal to y, 0 elsewhere."""

    name = "min"

    def reduce(self, x: Any, axes: tuple[int, ...], keepdims: bool) -> Any:
        """xp.min(x, axis=axes, keepdims=keepdims)."""
        return self.xp.min(x, axis=axes, keepdims=keepdims)


def max(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Variable:
    """Largest element of x over `axis` (all axes by default)."""
    return Max(axis, keepdims)(x)


def min(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Variable:
    """Smallest element of x over `axis` (all axes by default)."""
    return Min(axis, keepdims)(x)


class Clip(Function):
    """y = min(max(x, x_min), x_max); dy/dx = 1 where x_min <= x <= x_max, else 0."""

    saved: tuple[str, ...] = ("mask",)
    keeps_inputs = False

    def __init__(self, x_min: float, x_max: float) -> None:
        self.x_min: float = x_min
        self.x_max: float = x_max

    def forward(self, x: Any) -> Any:
        """y = x clipped to [x_min, x_max]."""
        xp = self.xp
        self.mask: Any = xp.astype((x >= self.x_min) & (x <= self.x_max), x.dtype)
        return xp.clip(x, self.x_min, self.x_max)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy where x_min <= x <= x_max, else 0."""
        return gy * self.mask


def clip(x: Any, x_min: float, x_max: float) -> Variable:
    """x clipped to [x_min, x_max] (Python numbers)."""
    if x_min > x_max:
        raise ValueError(f"clip: x_min ({x_min}) must not exceed x_max ({x_max})")
    return Clip(x_min, x_max)(as_variable(x))
