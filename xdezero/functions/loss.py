"""Losses and metrics: mean squared error, softmax / sigmoid / binary cross-entropy, accuracy."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xdezero.backends import array_namespace, backend_of_namespace, check_ids, describe, device_of, fused
from xdezero.core import Function, Variable, as_variable
from xdezero.functions.activation import sigmoid, softmax
from xdezero.functions.arithmetic import sum_to
from xdezero.functions.math import log
from xdezero.functions.reduce import clip
from xdezero.functions.shape import GetItem, sum

__all__ = [
    "mean_squared_error",
    "mean_squared_error_simple",
    "softmax_cross_entropy",
    "softmax_cross_entropy_simple",
    "sigmoid_cross_entropy",
    "binary_cross_entropy",
    "accuracy",
]


def _batch_size(x: Any, where: str) -> int:
    if x.ndim == 0:
        raise ValueError(f"{where}: expected a batch (an array with a first axis), got a 0-d array")
    return x.shape[0]


class MeanSquaredError(Function):
    """y = Σ (x0 - x1)² / N (N = batch size); dy/dx0 = 2 (x0 - x1) / N = -dy/dx1."""

    n: int  # the batch size N, set by forward

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = Σ (x0 - x1)² / N."""
        diff = x0 - x1
        self.n = _batch_size(diff, "mean_squared_error")
        return self.xp.sum(diff * diff) / self.n

    def backward(self, gy: Variable) -> tuple[Variable, Variable]:
        """(gx0, gx1) = (2 (x0 - x1) gy / N, -2 (x0 - x1) gy / N), each summed to its input's shape."""
        x0, x1 = self.inputs
        gx = (x0 - x1) * (gy * (2 / self.n))
        return sum_to(gx, x0.shape), sum_to(-gx, x1.shape)


def _check_shapes(x0: Variable, x1: Variable, where: str) -> None:
    """Either shape may broadcast to the other (DeZero's rule); a pair whose broadcast is larger than both,
    like (N, 1) against (N,), compares every prediction with every target and is refused."""
    s0, s1 = tuple(x0.shape), tuple(x1.shape)
    try:
        joint = np.broadcast_shapes(s0, s1)  # shapes only: no array is touched
    except ValueError:
        raise ValueError(
            f"{where}: the prediction has shape {s0} and the target {s1}, which do not broadcast"
        ) from None
    if joint not in (s0, s1):
        raise ValueError(
            f"{where}: the prediction has shape {s0} and the target {s1}; broadcasting them gives {joint}, larger "
            "than both, which compares every prediction with every target (reshape one to the other's shape, "
            "e.g. t.reshape(-1, 1))"
        )


def mean_squared_error(x0: Any, x1: Any) -> Variable:
    """Σ (x0 - x1)² / N over the batch of N (DeZero's definition: the sum over other axes is not averaged).

    One shape may broadcast to the other ((1, 1) against (1,)); N is the first axis of the broadcast difference."""
    x0, x1 = as_variable(x0), as_variable(x1)
    _check_shapes(x0, x1, "mean_squared_error")
    return MeanSquaredError()(x0, x1)


def mean_squared_error_simple(x0: Any, x1: Any) -> Variable:
    """mean_squared_error composed from sub, mul and sum."""
    x0, x1 = as_variable(x0), as_variable(x1)
    _check_shapes(x0, x1, "mean_squared_error_simple")
    diff = x0 - x1
    return sum(diff * diff) / _batch_size(diff, "mean_squared_error_simple")


def _checked_labels(x: Variable, t: Any, where: str) -> Any:
    """t's array, checked to be integer labels matching x's batch (N, C): one per row, shape (N,) or the like."""
    t = t.data if isinstance(t, Variable) else t
    if not hasattr(t, "dtype"):
        raise TypeError(f"{where}: labels t must be an integer array, got {describe(t)}")
    xp = array_namespace(x.data, t)
    if not xp.isdtype(t.dtype, "integral"):
        raise TypeError(f"{where}: labels t must be an integer array of class ids, got {describe(t)}")
    if x.ndim != 2:
        raise ValueError(f"{where}: x must be 2-D (batch, classes), got shape {x.shape}")
    n = x.shape[0]
    if t.ndim == 0 or t.shape[0] != n or math.prod(t.shape) != n:
        raise ValueError(
            f"{where}: labels t of shape {tuple(t.shape)} do not match the batch of x {x.shape}: "
            f"expected {n} labels, shape ({n},)"
        )
    return t


def _label_ids(xp: Any, t: Any, n_classes: int, where: str) -> Any:
    """Checked labels t as a 1-D array of class ids in [0, C) in the default index dtype of their library
    (a negative label is an error, not the last class)."""
    index_dtype = backend_of_namespace(xp).index_dtype(xp, device_of(t))
    ids = t if t.ndim == 1 else xp.reshape(t, (t.shape[0],))
    if ids.dtype != index_dtype:
        ids = xp.astype(ids, index_dtype, copy=False)  # labels are read, never written
    return check_ids(ids, 0, n_classes, where, "label")


def _labels(x: Variable, t: Any, where: str) -> Any:
    """t as a 1-D array of class ids in [0, C), checked against x's batch and its C classes."""
    t = _checked_labels(x, t, where)
    return _label_ids(array_namespace(x.data, t), t, x.shape[1], where)


def _log_floor(xp: Any, dtype: Any) -> float:
    """The smallest probability fed to log: 1e-15, or the smallest normal number where that underflows (float16),
    so that log p and its gradient 1/p stay finite."""
    return max(1e-15, float(xp.finfo(dtype).smallest_normal))


def _one_hot(xp: Any, t: Any, n_classes: int, dtype: Any) -> Any:
    classes = xp.arange(n_classes, dtype=t.dtype, device=device_of(t))
    return xp.astype(t[:, None] == classes[None, :], dtype)


def _label_positions(xp: Any, t: Any, n_classes: int) -> Any:
    """Flat positions of (n, tₙ) in a C-ordered (N, n_classes) array."""
    return xp.arange(t.shape[0], dtype=t.dtype, device=device_of(t)) * n_classes + t


def _softmax_cross_entropy(xp: Any, x: Any, t: Any) -> tuple[Any, Any]:
    """(mean over rows of log Σ eˣ - x[n, tₙ], softmax(x)) for logits x (N, C) and checked labels t (N,)."""
    n, c = x.shape
    m = xp.max(x, axis=1, keepdims=True)
    # A row of -inf (or an inf) would make x - m NaN: shift by 0 there instead.
    z = x - xp.where(xp.isfinite(m), m, 0.0)
    e = xp.exp(z)
    s = xp.sum(e, axis=1, keepdims=True)
    # log 0 = -inf is the right answer for a row of -inf, so the log is guarded only against the warning; a NaN
    # sum (a NaN logit) stays NaN.
    log_s = xp.where(s == 0, -math.inf, xp.log(xp.where(s == 0, 1.0, s)))
    picked = xp.take(xp.reshape(z, (-1,)), _label_positions(xp, t, c))
    return (xp.sum(log_s) - xp.sum(picked)) / n, e / s


def _softmax_cross_entropy_grad(xp: Any, p: Any, t: Any, gy: Any) -> Any:
    """(p - onehot(t)) gy / N."""
    n, c = p.shape
    classes = xp.arange(c, dtype=t.dtype, device=device_of(p))
    return xp.where(classes[None, :] == t[:, None], p - 1.0, p) * (gy * (1.0 / n))


class SoftmaxCrossEntropy(Function):
    """y = -Σₙ log softmax(x)[n, tₙ] / N; dy/dx = (softmax(x) - onehot(t)) / N."""

    saved: tuple[str, ...] = ("p", "t")
    t: Any  # the labels as checked class ids, set by forward
    p: Any  # softmax(x), set by forward for the backward

    def forward(self, x: Any, t: Any) -> Any:
        """y = -Σₙ log softmax(x)[n, tₙ] / N."""
        # A primitive: log(softmax(x)) would underflow to log 0 for very negative logits. p = softmax(x) is kept
        # for the backward, which then costs one pass instead of recomputing softmax. The labels become ids here,
        # not in the wrapper, so that a captured step checks and converts each new batch's labels.
        self.t = _label_ids(self.xp, t, x.shape[1], "softmax_cross_entropy")
        loss, self.p = fused("softmax_cross_entropy", _softmax_cross_entropy, self.xp, x, self.t)
        return loss

    def backward(self, gy: Variable) -> tuple[Variable, None]:
        """gx = (softmax(x) - onehot(t)) gy / N; none for the labels."""
        return SoftmaxCrossEntropyGrad(self)(self.inputs[0], gy), None


class SoftmaxCrossEntropyGrad(Function):
    """gx = (p - onehot(t)) gy / N with p = softmax(x) cached by the forward;
    dgx/dx = softmax's Jacobian applied to ggx · gy / N, dgx/dgy = Σ ggx (p - onehot(t)) / N."""

    def __init__(self, loss: SoftmaxCrossEntropy) -> None:
        self.loss = loss  # its p and ids, read when this runs (a captured step's replay renews them)

    def forward(self, x: Any, gy: Any) -> Any:
        """gx = (p - onehot(t)) gy / N."""
        # A primitive so that the backward of the loss reuses p: one multiply plus a subtraction at the labels.
        loss = self.loss
        return fused("softmax_cross_entropy_grad", _softmax_cross_entropy_grad, self.xp, loss.p, loss.t, gy)

    def backward(self, ggx: Variable) -> tuple[Variable, Variable]:
        """(gx, ggy) = ((p ggx - p Σ p ggx) gy / N, Σ ggx (p - onehot(t)) / N)."""
        x, gy = self.inputs
        n, c = x.shape
        p = softmax(x, axis=1)
        scale = gy * (1.0 / n)
        pg = p * ggx
        gx = (pg - p * sum(pg, axis=1, keepdims=True)) * scale
        onehot = as_variable(_one_hot(array_namespace(x.data), self.loss.t, c, x.dtype))
        ggy = sum(ggx * (p - onehot)) * (1.0 / n)
        return gx, ggy


def softmax_cross_entropy(x: Any, t: Any) -> Variable:
    """Mean over the batch of -log softmax(x)[n, tₙ] for logits x (N, C) and integer labels t (N,)."""
    x = as_variable(x)
    return SoftmaxCrossEntropy()(x, _checked_labels(x, t, "softmax_cross_entropy"))


def softmax_cross_entropy_simple(x: Any, t: Any) -> Variable:
    """softmax_cross_entropy composed from softmax, clip, log and get_item."""
    x = as_variable(x)
    t = _labels(x, t, "softmax_cross_entropy_simple")
    xp = array_namespace(t)
    n = x.shape[0]
    log_p = log(clip(softmax(x, axis=1), _log_floor(xp, x.dtype), 1.0))
    rows = xp.arange(n, dtype=t.dtype, device=device_of(t))
    picked = GetItem((rows, t), where="softmax_cross_entropy_simple", checked=True)(log_p)  # t checked above
    return -sum(picked) / n


def _targets(x: Variable, t: Any, where: str) -> Variable:
    """t as a constant of x's dtype and shape (0/1 targets may come in any real dtype)."""
    t = t.data if isinstance(t, Variable) else t
    if not hasattr(t, "dtype"):
        raise TypeError(f"{where}: targets t must be an array, got {describe(t)}")
    array_namespace(x.data, t)  # one library for both
    if math.prod(t.shape) != x.size:
        raise ValueError(f"{where}: targets of shape {tuple(t.shape)} do not match the input of shape {x.shape}")
    return Targets(x.shape, x.dtype)(t)


class Targets(Function):
    """y = t reshaped to `shape` and cast to `dtype` (0/1 targets in any real dtype); no gradient: targets are
    data. An op, so that a captured step reads each call's targets."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.shape: tuple[int, ...] = shape
        self.dtype: Any = dtype

    def forward(self, t: Any) -> Any:
        """y = t as `shape` and `dtype`."""
        xp = self.xp
        return xp.astype(xp.reshape(t, self.shape), self.dtype)

    def backward(self, gy: Variable) -> None:
        """None: targets get no gradient."""
        return None


class SigmoidCrossEntropy(Function):
    """y = Σ [softplus(x) - t x] / N; dy/dx = (sigmoid(x) - t) / N."""

    def forward(self, x: Any, t: Any) -> Any:
        """y = Σ [max(x, 0) - t x + log(1 + e^-|x|)] / N."""
        xp = self.xp
        # A primitive: log(sigmoid(x)) is log 0 for x = -1000; softplus(x) = max(x, 0) + log1p(e^-|x|) is not.
        loss = xp.maximum(x, 0.0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))
        return xp.sum(loss) / x.shape[0]

    def backward(self, gy: Variable) -> tuple[Variable, None]:
        """gx = (sigmoid(x) - t) gy / N; none for the targets."""
        x, t = self.inputs
        return (sigmoid(x) - t) * (gy * (1 / x.shape[0])), None


def sigmoid_cross_entropy(x: Any, t: Any) -> Variable:
    """Binary cross-entropy of logits x against 0/1 targets t, summed and divided by the batch size."""
    x = as_variable(x)
    _batch_size(x, "sigmoid_cross_entropy")
    return SigmoidCrossEntropy()(x, _targets(x, t, "sigmoid_cross_entropy"))


def binary_cross_entropy(p: Any, t: Any) -> Variable:
    """-Σ [t log p + (1-t) log(1-p)] / N for probabilities p; p is clipped to [floor, 1 - eps of its dtype] so
    that neither log sees 0 (floor: 1e-15, or the smallest normal number where 1e-15 underflows, as in float16)."""
    p = as_variable(p)
    n = _batch_size(p, "binary_cross_entropy")
    t = _targets(p, t, "binary_cross_entropy")
    xp = array_namespace(p.data)
    p = clip(p, _log_floor(xp, p.dtype), 1.0 - float(xp.finfo(p.dtype).eps))
    return -sum(t * log(p) + (1 - t) * log(1 - p)) / n


def accuracy(y: Any, t: Any) -> Variable:
    """Fraction of rows whose argmax equals the label: a Variable holding a 0-d array (not differentiable)."""
    y = as_variable(y)
    labels = _labels(y, t, "accuracy") if y.ndim == 2 else None
    if labels is None:
        raise ValueError(f"accuracy: y must be 2-D (batch, classes), got shape {y.shape}")
    xp = array_namespace(y.data)
    pred = xp.astype(xp.argmax(y.data, axis=1), labels.dtype)
    dtype = y.dtype if xp.isdtype(y.dtype, "real floating") else xp.float64
    hits = xp.sum(xp.astype(pred == labels, dtype))
    return as_variable(xp.asarray(hits / y.shape[0], dtype=dtype))  # NumPy 1.x would widen a float32 scalar
