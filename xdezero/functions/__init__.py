"""Differentiable functions, DeZero's `dezero.functions` (import as `F`)."""

from __future__ import annotations

from collections.abc import Sequence

from xdezero import core
from xdezero.core import Function, Variable, as_array, as_variable, operators
from xdezero.functions import activation, reduce, shape
from xdezero.functions.activation import (
    LeakyReLU,
    ReLU,
    Sigmoid,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    sigmoid_simple,
    softmax,
    softmax_simple,
)
from xdezero.functions.arithmetic import (
    Add,
    BroadcastTo,
    Div,
    Mul,
    Neg,
    Pow,
    Sub,
    SumTo,
    add,
    div,
    mul,
    neg,
    pow,
    rdiv,
    rpow,
    rsub,
    sub,
)
from xdezero.functions.conv import (
    average_pooling,
    col2im,
    conv2d,
    conv2d_simple,
    deconv2d,
    im2col,
    pooling,
    pooling_simple,
)
from xdezero.functions.linear import Linear, embed_id, linear, linear_simple
from xdezero.functions.loss import (
    MeanSquaredError,
    SoftmaxCrossEntropy,
    accuracy,
    binary_cross_entropy,
    mean_squared_error,
    mean_squared_error_simple,
    sigmoid_cross_entropy,
    softmax_cross_entropy,
    softmax_cross_entropy_simple,
)
from xdezero.functions.math import Cos, Exp, Log, Sin, Tanh, abs, cos, exp, log, sin, sqrt, square, tanh
from xdezero.functions.normalization import BatchNorm, batch_norm, batch_nrom, dropout
from xdezero.functions.reduce import Clip, clip, max, min
from xdezero.functions.shape import (
    GetItem,
    GetItemGrad,
    MatMul,
    Reshape,
    Sum,
    average,
    broadcast_to,
    expand_dims,
    flatten,
    get_item,
    matmul,
    mean,
    reshape,
    sum,
    sum_to,
    transpose,
)


# DeZero's Function classes under its names. Five take DeZero's default arguments here (the engine's own
# classes are built by their snake_case wrappers, which always pass them).
class Softmax(activation.Softmax):
    """Softmax over `axis` (default 1), DeZero's signature."""

    def __init__(self, axis: int | tuple[int, ...] = 1) -> None:
        super().__init__(axis)


class LogSoftmax(activation.LogSoftmax):
    """Log-softmax over `axis` (default 1), DeZero's signature."""

    def __init__(self, axis: int | tuple[int, ...] = 1) -> None:
        super().__init__(axis)


class Transpose(shape.Transpose):
    """Transpose by `axes` (reversed by default), DeZero's signature."""

    def __init__(self, axes: Sequence[int] | None = None) -> None:
        super().__init__(None if axes is None else tuple(axes))


class Max(reduce.Max):
    """Max over `axis` (all axes by default), DeZero's signature."""

    def __init__(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> None:
        super().__init__(axis, keepdims)


class Min(reduce.Min):
    """Min over `axis` (all axes by default), DeZero's signature."""

    def __init__(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> None:
        super().__init__(axis, keepdims)


__all__ = [
    "Add",
    "BatchNorm",
    "BroadcastTo",
    "Clip",
    "Cos",
    "Div",
    "Exp",
    "Function",
    "GetItem",
    "GetItemGrad",
    "LeakyReLU",
    "Linear",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MeanSquaredError",
    "Min",
    "Mul",
    "Neg",
    "Pow",
    "ReLU",
    "Reshape",
    "Sigmoid",
    "Sin",
    "Softmax",
    "SoftmaxCrossEntropy",
    "Sub",
    "Sum",
    "SumTo",
    "Tanh",
    "Transpose",
    "Variable",
    "as_array",
    "as_variable",
    "pooling_simple",
    "pooling",
    "im2col",
    "deconv2d",
    "conv2d_simple",
    "conv2d",
    "col2im",
    "average_pooling",
    "abs",
    "add",
    "broadcast_to",
    "cos",
    "div",
    "exp",
    "get_item",
    "log",
    "matmul",
    "mul",
    "neg",
    "pow",
    "rdiv",
    "reshape",
    "rsub",
    "sin",
    "sqrt",
    "square",
    "sub",
    "sum",
    "sum_to",
    "tanh",
    "transpose",
    "accuracy",
    "average",
    "batch_norm",
    "batch_nrom",
    "binary_cross_entropy",
    "clip",
    "dropout",
    "embed_id",
    "expand_dims",
    "flatten",
    "leaky_relu",
    "linear",
    "linear_simple",
    "log_softmax",
    "max",
    "mean",
    "mean_squared_error",
    "mean_squared_error_simple",
    "min",
    "relu",
    "sigmoid",
    "sigmoid_cross_entropy",
    "sigmoid_simple",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_simple",
    "softmax_simple",
]

# Variable's operators and shape methods call these (core sits below this package and cannot import it).
operators.install(
    add=add,
    sub=sub,
    mul=mul,
    div=div,
    neg=neg,
    pow=pow,
    rpow=rpow,
    rsub=rsub,
    rdiv=rdiv,
    sum_to=sum_to,
    broadcast_to=broadcast_to,
    matmul=matmul,
    get_item=get_item,
    reshape=reshape,
    transpose=transpose,
    sum=sum,
)
# DeZero's `dezero.core` also defines the arithmetic Function classes; they live here, above core.
core.dezero_classes.update(Add=Add, Sub=Sub, Mul=Mul, Div=Div, Neg=Neg, Pow=Pow)
