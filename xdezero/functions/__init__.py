"""Differentiable functions, DeZero's `dezero.functions` (import as `F`)."""

from xdezero.core import add, div, mul, neg, pow, rdiv, rsub, sub
from xdezero.functions.math import abs, cos, exp, log, sin, sqrt, square, tanh
from xdezero.functions.shape import broadcast_to, get_item, matmul, reshape, sum, sum_to, transpose

__all__ = [
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
]
