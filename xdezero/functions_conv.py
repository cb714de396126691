"""DeZero's `dezero.functions_conv` module name: the convolution functions live in `xdezero.functions.conv`."""

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
from xdezero.functions.linear import linear

__all__ = [
    "average_pooling",
    "col2im",
    "conv2d",
    "conv2d_simple",
    "deconv2d",
    "im2col",
    "linear",
    "pooling",
    "pooling_simple",
]
