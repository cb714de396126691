"""Pairs of ints and the output sizes of sliding windows: the geometry that the convolutions, the layers and
the image transforms share, in a module that imports nothing of xdezero (DeZero exports `pair` from
functions_conv, layers, transforms and utils; all are this one)."""

from __future__ import annotations

import operator
from collections.abc import Sequence

__all__ = ["pair", "get_conv_outsize", "get_deconv_outsize"]


def pair(x: int | Sequence[int], what: str = "pair", minimum: int | None = None) -> tuple[int, int]:
    """``(x, x)`` for an int, ``(x[0], x[1])`` for a pair of ints; each at least `minimum` when given.

    The one helper behind kernel sizes, strides and pads in the convolutions, the layers and the image
    transforms; `what` names the argument in the error message.
    """
    try:
        if isinstance(x, Sequence) and not isinstance(x, str):
            if len(x) != 2:
                raise TypeError
            result = (operator.index(x[0]), operator.index(x[1]))
        else:
            result = (operator.index(x),) * 2
    except TypeError:
        raise ValueError(f"{what} must be an int or a pair of ints, got {x!r}") from None
    if minimum is not None and min(result) < minimum:
        raise ValueError(f"{what} must be positive, got {x!r}" if minimum == 1 else f"{what} must be >= {minimum}")
    return result


def get_conv_outsize(input_size: int, kernel_size: int, stride: int, pad: int) -> int:
    """Output length of a convolution: (input + 2·pad - kernel) // stride + 1."""
    return (input_size + pad * 2 - kernel_size) // stride + 1


def get_deconv_outsize(size: int, k: int, s: int, p: int) -> int:
    """Output length of a transposed convolution: s·(size - 1) + k - 2·p."""
    return s * (size - 1) + k - 2 * p
