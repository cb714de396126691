"""Train/test-dependent functions: dropout and batch normalization (they read the `train` config flag)."""

from __future__ import annotations

from typing import Any

import numpy as np

from xdezero._config import Config, no_grad
from xdezero.backends import array_namespace, describe, fused, uniform
from xdezero.core import Cast, Function, Variable, as_variable
from xdezero.functions.shape import reshape, sum

__all__ = ["dropout", "batch_norm", "batch_nrom", "BatchNorm"]


class Dropout(Function):
    """y = x · mask / (1 - r), mask ~ Bernoulli(1 - r) drawn on each call; dy/dx = mask / (1 - r)."""

    saved: tuple[str, ...] = ("mask",)
    keeps_inputs: bool = False
    mask: Any  # the kept elements' scale: 0 or 1/(1 - r), set by forward

    def __init__(self, dropout_ratio: float) -> None:
        self.dropout_ratio = dropout_ratio

    def forward(self, x: Any) -> Any:
        """y = x · mask / (1 - r), with a new mask drawn."""
        # The mask is drawn here, inside the op, so that a captured step draws a new one on every replay.
        if isinstance(x, np.ndarray):
            keep = np.random.rand(*x.shape) > self.dropout_ratio  # DeZero's draw from NumPy's global generator
        else:
            keep = uniform(tuple(x.shape), like=x) > self.dropout_ratio
        # Scaled once, so that the expected value is unchanged and the backward is one multiply.
        self.mask = self.xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.dropout_ratio))
        return x * self.mask

    def backward(self, gy: Variable) -> Variable:
        """gx = gy · mask / (1 - r)."""
        return gy * self.mask


def dropout(x: Any, dropout_ratio: float = 0.5) -> Variable:
    """Zero each element with probability `dropout_ratio` and scale the rest by 1/(1 - ratio), in train mode;
    the identity in test mode (`with xdezero.test_mode(): ...`).

    On NumPy arrays the mask is DeZero's, `np.random.rand(*x.shape) > dropout_ratio` from NumPy's global
    generator (so `np.random.seed` repeats it); other libraries draw from xdezero's (`xdezero.seed(n)`).
    """
    x = as_variable(x)
    if not 0.0 <= dropout_ratio < 1.0:
        raise ValueError(f"dropout: dropout_ratio must be in [0, 1), got {dropout_ratio!r}")
    if not Config.train:
        return x
    return Dropout(dropout_ratio)(x)


def _stat_data(s: Any, name: str) -> Any:
    data = s.data if isinstance(s, Variable) else s
    if data is None or not hasattr(data, "shape"):
        raise TypeError(f"batch_norm: {name} must be an array or a Variable holding one, got {describe(data)}")
    return data


def _as_statistic(s: Any) -> Variable:
    """A running statistic as an op input that gets no gradient: the Variable itself, or a constant."""
    return s if isinstance(s, Variable) else Variable(s, requires_grad=False)


def _store(target: Any, value: Any, name: str) -> None:
    """Write a new running statistic: rebind a Variable's data, or write into a mutable array in place."""
    if isinstance(target, Variable):
        target.data = value
        return
    try:
        target[...] = value
    except (TypeError, ValueError, AttributeError, RuntimeError, NotImplementedError) as e:
        raise TypeError(
            f"batch_norm: cannot update the running {name} in place in a {describe(target)} (immutable array); "
            f"pass it wrapped in a Variable (e.g. a Parameter), whose .data is then replaced"
        ) from e


class RunningStatistics(Function):
    """Writes mean ← mean·decay + batch_mean·(1 - decay), var ← var·decay + batch_var·var_scale into the running
    statistics `mean_target`, `var_target` (Variables or mutable arrays); returns the new mean. Not differentiated:
    running statistics are not trained. One op, so that a captured step updates them on every replay."""

    writes: tuple[str, ...] = ("mean_target", "var_target")
    mean_target: Any
    var_target: Any
    decay: float
    var_scale: float

    def __init__(self, mean_target: Any, var_target: Any, decay: float, var_scale: float) -> None:
        self.mean_target, self.var_target = mean_target, var_target
        self.decay, self.var_scale = decay, var_scale

    def forward(self, mean: Any, var: Any, mu: Any, sigma2: Any) -> Any:
        """mean ← mean·decay + mu·(1 - decay), var ← var·decay + sigma2·var_scale; returns the new mean."""
        xp = self.xp
        c = mean.shape[0]
        stats = (mean, var, xp.reshape(mu, (c,)), xp.reshape(sigma2, (c,)), self.decay, self.var_scale)
        new_mean, new_var = fused("batch_norm_statistics", _running_statistics, xp, *stats)
        _store(self.mean_target, new_mean, "mean")
        _store(self.var_target, new_var, "var")
        return new_mean


class NormalizeWithStatistics(Function):
    """y = (x - mean) / √(var + eps) per channel (test mode); dy/dx = 1/√(var + eps), none for the statistics."""

    saved: tuple[str, ...] = ("inv_std",)
    per_channel: tuple[int, ...]
    eps: float
    inv_std: Any  # 1/√(var + eps) shaped `per_channel`, set by forward

    def __init__(self, per_channel: tuple[int, ...], eps: float) -> None:
        self.per_channel, self.eps = per_channel, eps

    def forward(self, x: Any, mean: Any, var: Any) -> Any:
        """y = (x - mean) / √(var + eps) per channel."""
        xp = self.xp
        self.inv_std = xp.reshape((xp.astype(var, x.dtype) + self.eps) ** -0.5, self.per_channel)
        return (x - xp.reshape(xp.astype(mean, x.dtype), self.per_channel)) * self.inv_std

    def backward(self, gy: Variable) -> tuple[Variable, None, None]:
        """gx = gy / √(var + eps); none for the statistics."""
        return gy * self.inv_std, None, None


def _running_statistics(
    xp: Any, mean: Any, var: Any, batch_mean: Any, batch_var: Any, decay: float, var_scale: float
) -> tuple[Any, Any]:
    """(mean·decay + batch_mean·(1 - decay), var·decay + batch_var·var_scale), in the running statistics' dtype."""
    new_mean = mean * decay + xp.astype(batch_mean, mean.dtype) * (1 - decay)
    return new_mean, var * decay + xp.astype(batch_var, var.dtype) * var_scale


def batch_norm(
    x: Any,
    gamma: Any,
    beta: Any,
    mean: Any,
    var: Any,
    decay: float = 0.9,
    eps: float = 2e-5,
) -> Variable:
    """Batch normalization over the batch axis of (N, C) inputs, or over N, H, W of (N, C, H, W) inputs.

    In train mode the batch mean and (biased) variance normalize x, and the running statistics are updated:
    mean ← decay·mean + (1-decay)·batch_mean, var ← decay·var + (1-decay)·m/(m-1)·batch_var (m values per
    channel). `mean` and `var` may be Variables (their `.data` is replaced with the new arrays: this works for
    every library, JAX included) or raw arrays of a mutable library (updated in place, as DeZero does).
    In test mode the running statistics normalize x and nothing is updated.
    y = gamma · (x - μ) / √(σ² + eps) + beta is built from differentiable functions, so second derivatives work.
    float16/bfloat16 inputs are normalized in float32 and y is cast back (as cuDNN and PyTorch do): a float16
    sum over N·H·W values overflows from 65504 on, which made every output NaN.
    """
    x, gamma, beta = as_variable(x), as_variable(gamma), as_variable(beta)
    if x.ndim not in (2, 4):
        raise ValueError(f"batch_norm: x must be 2-D (N, C) or 4-D (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    mean_data, var_data = _stat_data(mean, "mean"), _stat_data(var, "var")
    for name, v in (("gamma", gamma), ("beta", beta), ("mean", mean_data), ("var", var_data)):
        if tuple(v.shape) != (c,):
            raise ValueError(
                f"batch_norm: {name} must have shape ({c},) for x of shape {x.shape}, got {tuple(v.shape)}"
            )
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    per_channel = (1, c) if x.ndim == 2 else (1, c, 1, 1)
    xp = array_namespace(x.data)
    x_dtype = x.dtype
    narrow = xp.isdtype(x_dtype, "real floating") and xp.finfo(x_dtype).bits < 32
    if narrow:
        x = Cast(xp.float32)(x)

    if Config.train:
        m = x.size // c
        mu = sum(x, axes, keepdims=True) / m
        xc = x - mu
        sigma2 = sum(xc * xc, axes, keepdims=True) / m
        xhat = xc * (sigma2 + eps) ** -0.5
        var_scale = (1 - decay) * (m / max(m - 1.0, 1.0))
        with no_grad():
            RunningStatistics(mean, var, decay, var_scale)(_as_statistic(mean), _as_statistic(var), mu, sigma2)
    else:
        # The statistics go in as the op's inputs (a Variable's current data is read when the op runs).
        xhat = NormalizeWithStatistics(per_channel, eps)(x, _as_statistic(mean), _as_statistic(var))
    y = reshape(gamma, per_channel) * xhat + reshape(beta, per_channel)
    return Cast(x_dtype)(y) if narrow else y


batch_nrom = batch_norm  # DeZero's spelling, kept for compatibility


class BatchNorm:
    """DeZero's `BatchNorm(mean, var, decay, eps)(x, gamma, beta)`: `batch_norm` with the running statistics
    held by the object (`avg_mean`, `avg_var`, updated on each call in train mode). Composed, not one node."""

    def __init__(self, mean: Any, var: Any, decay: float, eps: float) -> None:
        self.avg_mean = mean
        self.avg_var = var
        self.decay = decay
        self.eps = eps

    def __call__(self, x: Any, gamma: Any, beta: Any) -> Variable:
        return batch_norm(x, gamma, beta, self.avg_mean, self.avg_var, self.decay, self.eps)
