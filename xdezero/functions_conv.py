"""DeZero's `dezero.functions_conv` module: its names over `xdezero.functions.conv`, where the work is done.

The Function classes take DeZero's constructor arguments (an int or a pair for each size; the gradient
classes take the forward Function they differentiate) and compute what the engine's own classes compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xdezero import backends
from xdezero.core import Function, as_variable
from xdezero.functions import conv
from xdezero.functions.arithmetic import broadcast_to
from xdezero.functions.conv import (
    average_pooling,
    col2im,
    conv2d,
    conv2d_simple,
    deconv2d,
    get_conv_outsize,
    get_deconv_outsize,
    im2col,
    pair,
    pooling,
    pooling_simple,
)
from xdezero.functions.linear import linear

__all__ = [
    "AveragePooling",
    "Col2im",
    "Conv2DGradW",
    "Conv2d",
    "Deconv2d",
    "Function",
    "Im2col",
    "Pooling",
    "Pooling2DGrad",
    "Pooling2DWithIndexes",
    "as_variable",
    "average_pooling",
    "broadcast_to",
    "col2im",
    "col2im_array",
    "conv2d",
    "conv2d_simple",
    "deconv2d",
    "get_conv_outsize",
    "get_deconv_outsize",
    "im2col",
    "im2col_array",
    "linear",
    "pair",
    "pooling",
    "pooling_simple",
]


class Conv2d(conv.Conv2d):
    """conv2d as a Function: `Conv2d(stride, pad)(x, W[, b])`."""

    def __init__(self, stride: int | tuple[int, int] = 1, pad: int | tuple[int, int] = 0) -> None:
        super().__init__(pair(stride, "Conv2d: stride", minimum=1), pair(pad, "Conv2d: pad", minimum=0))


class Deconv2d(conv.Deconv2d):
    """deconv2d as a Function: `Deconv2d(stride, pad, outsize)(x, W[, b])`; outsize None: the smallest."""

    requested_outsize: tuple[int, int] | None  # None: the smallest, computed per call
    outsize: tuple[int, ...]  # resolved by forward

    def __init__(
        self,
        stride: int | tuple[int, int] = 1,
        pad: int | tuple[int, int] = 0,
        outsize: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__(pair(stride, "Deconv2d: stride", minimum=1), pair(pad, "Deconv2d: pad", minimum=0), None)
        self.requested_outsize = None if outsize is None else pair(outsize, "Deconv2d: outsize", minimum=1)

    def forward(self, x: Any, W: Any, b: Any = None) -> Any:
        """y = Wᵀ ⋆ x + b, with outsize resolved for this x when none was requested."""
        if self.requested_outsize is None:
            hw = x.shape[2:]
            self.outsize = tuple(
                get_deconv_outsize(s, k, st, p) for s, k, st, p in zip(hw, W.shape[2:], self.stride, self.pad)
            )
        else:
            self.outsize = self.requested_outsize
        return super().forward(x, W, b)


class Conv2DGradW(conv.Conv2DGradW):
    """The weight gradient of a conv2d node: `Conv2DGradW(conv2d_function)(x, gy)` gives gW."""

    def __init__(self, conv2d: conv.Conv2d) -> None:
        W = conv2d.inputs[1]
        super().__init__(tuple(W.shape[2:]), pair(conv2d.stride), pair(conv2d.pad))


class Pooling(conv.Pooling):
    """Max pooling as a Function: `Pooling(kernel_size, stride, pad)(x)`."""

    def __init__(
        self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1, pad: int | tuple[int, int] = 0
    ) -> None:
        super().__init__(
            pair(kernel_size, "Pooling: kernel_size", minimum=1),
            pair(stride, "Pooling: stride", minimum=1),
            pair(pad, "Pooling: pad", minimum=0),
        )


class AveragePooling(conv.AveragePooling):
    """Average pooling as a Function: `AveragePooling(kernel_size, stride, pad)(x)`."""

    def __init__(
        self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1, pad: int | tuple[int, int] = 0
    ) -> None:
        super().__init__(
            pair(kernel_size, "AveragePooling: kernel_size", minimum=1),
            pair(stride, "AveragePooling: stride", minimum=1),
            pair(pad, "AveragePooling: pad", minimum=0),
        )


Pooling2DGrad = conv.PoolingGrad  # takes the max-pooling Function it differentiates, as DeZero's does
Pooling2DWithIndexes = conv.PoolingWithIndexes


class Im2col(conv.Im2col):
    """im2col as a Function: `Im2col(kernel_size, stride, pad, to_matrix)(x)`."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        pad: int | tuple[int, int],
        to_matrix: bool,
    ) -> None:
        super().__init__(pair(kernel_size), pair(stride), pair(pad), to_matrix)


class Col2im(conv.Col2im):
    """col2im as a Function: `Col2im(input_shape, kernel_size, stride, pad, to_matrix)(col)`."""

    def __init__(
        self,
        input_shape: Sequence[int],
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        pad: int | tuple[int, int],
        to_matrix: bool,
    ) -> None:
        super().__init__(tuple(input_shape), pair(kernel_size), pair(stride), pair(pad), to_matrix)


def im2col_array(
    img: Any,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int],
    pad: int | tuple[int, int],
    to_matrix: bool = True,
) -> Any:
    """The windows of the raw image array `img` (N, C, H, W): (N·OH·OW, C·KH·KW) with `to_matrix`,
    else (N, C, KH, KW, OH, OW); rows in (n, oh, ow) order, columns in (c, kh, kw) order, as in DeZero."""
    xp = backends.array_namespace(img)
    col = backends.im2col(img, pair(kernel_size), pair(stride), pair(pad))
    if not to_matrix:
        return col
    n, c, kh, kw, oh, ow = col.shape
    return xp.reshape(xp.permute_dims(col, (0, 4, 5, 1, 2, 3)), (n * oh * ow, c * kh * kw))


def col2im_array(
    col: Any,
    img_shape: Sequence[int],
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int],
    pad: int | tuple[int, int],
    to_matrix: bool = True,
) -> Any:
    """The adjoint of `im2col_array`: the windows in `col` summed back into a raw array of `img_shape`."""
    xp = backends.array_namespace(col)
    kernel, stride, pad = pair(kernel_size), pair(stride), pair(pad)
    n, c, h, w = img_shape
    if to_matrix:
        oh, ow = get_conv_outsize(h, kernel[0], stride[0], pad[0]), get_conv_outsize(w, kernel[1], stride[1], pad[1])
        col = xp.permute_dims(xp.reshape(col, (n, oh, ow, c, *kernel)), (0, 3, 4, 5, 1, 2))
    return backends.col2im(col, tuple(img_shape), kernel, stride, pad)
