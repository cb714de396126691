"""Convolution and pooling on NCHW images, built on im2col.

conv2d, deconv2d and the weight gradient are primitives (composing them from im2col + matmul would cost
extra transposed copies of the column array); their backwards are each other, so every order of
derivative is again a convolution.

Over 500 lines on purpose: convolution, im2col and pooling share one geometry (pair, output sizes, the
argument checks) and one window machinery, and read best side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xdezero._geometry import get_conv_outsize, get_deconv_outsize, pair
from xdezero.backends import array_namespace, device_of
from xdezero.backends import col2im as col2im_array
from xdezero.backends import im2col as im2col_array
from xdezero.core import Function, Variable, as_variable
from xdezero.functions.shape import matmul, reshape, sum, transpose

__all__ = [
    "conv2d",
    "deconv2d",
    "conv2d_simple",
    "pooling",
    "pooling_simple",
    "average_pooling",
    "im2col",
    "col2im",
    "get_conv_outsize",
    "get_deconv_outsize",
    "pair",
]

Pair = tuple[int, int]


# --- argument checks ---------------------------------------------------------------------------------


def _geometry(name: str, kernel_size: Any, stride: Any, pad: Any) -> tuple[Pair, Pair, Pair]:
    kernel, stride, pad = pair(kernel_size), pair(stride), pair(pad)
    if min(kernel) < 1 or min(stride) < 1 or min(pad) < 0:
        raise ValueError(
            f"{name}: kernel_size {kernel} and stride {stride} must be positive and pad {pad} non-negative"
        )
    return kernel, stride, pad


def _check_images(name: str, x: Variable, what: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(f"{name}: {what} must be a 4-D (N, C, H, W) array, got shape {x.shape}")


def _check_operands(name: str, x: Variable, W: Variable, in_axis: int) -> None:
    """x is (N, C, H, W) and W 4-D with x's C channels on axis `in_axis` (1 for conv2d, 0 for deconv2d)."""
    roles = "out_channels, in_channels" if in_axis == 1 else "in_channels, out_channels"
    _check_images(name, x)
    _check_images(name, W, "W (OC, C, KH, KW)" if in_axis == 1 else "W (C, OC, KH, KW)")
    if x.shape[1] != W.shape[in_axis]:
        raise ValueError(
            f"{name}: x of shape {x.shape} has {x.shape[1]} channels but W of shape {W.shape} expects "
            f"{W.shape[in_axis]} (W is ({roles}, KH, KW))"
        )


def _out_hw(name: str, hw: tuple, kernel: Pair, stride: Pair, pad: Pair) -> Pair:
    h, w = hw
    oh = get_conv_outsize(h, kernel[0], stride[0], pad[0])
    ow = get_conv_outsize(w, kernel[1], stride[1], pad[1])
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{name}: the {kernel[0]}x{kernel[1]} kernel is larger than the padded input "
            f"{h + 2 * pad[0]}x{w + 2 * pad[1]} (input {h}x{w}, pad {pad})"
        )
    return oh, ow


def _check_bias(name: str, b: Variable | None, channels: int) -> None:
    if b is not None and b.shape != (channels,):
        raise ValueError(f"{name}: b must have shape ({channels},) (one value per output channel), got {b.shape}")


# --- convolution ---------------------------------------------------------------------------------------


class Conv2d(Function):
    """y = W ⋆ x + b (cross-correlation); dy/dx = deconv2d(gy, W), dy/dW = conv2d_grad_w(x, gy), dy/db = Σ gy."""

    inputs_read: tuple[tuple[int, ...], ...] | None = ((1,), (0,), ())  # gx reads W, gW reads x, gb neither
    x_hw: tuple[int, ...]  # (H, W) of x, set by forward
    kernel: Pair  # (KH, KW) of W, set by forward

    def __init__(self, stride: Pair, pad: Pair) -> None:
        self.stride = stride
        self.pad = pad

    def forward(self, x: Any, W: Any, b: Any = None) -> Any:
        """y = W ⋆ x + b."""
        self.x_hw, self.kernel = tuple(x.shape[2:]), tuple(W.shape[2:])
        return self.backend.conv2d(x, W, b, self.stride, self.pad)

    def backward(self, gy: Variable) -> tuple[Variable | None, ...]:
        """(gx, gW[, gb]) = (deconv2d(gy, W), conv2d_grad_w(x, gy)[, Σ gy]); None where no gradient is needed."""
        # Only what is needed: images given as data (a CNN's input) need no deconvolution.
        x, W = self.inputs[:2]
        needs = self.needs_grad
        geometry = {"stride": self.stride, "pad": self.pad}
        if needs[0] and needs[1]:
            gx, gW = Conv2DGrad(self.kernel, self.stride, self.pad)(x, W, gy)
        elif needs[0]:
            gx, gW = deconv2d(gy, W, outsize=self.x_hw, **geometry), None
        else:
            gx, gW = None, (Conv2DGradW(self.kernel, self.stride, self.pad)(x, gy) if needs[1] else None)
        if len(needs) == 2:
            return gx, gW
        return gx, gW, sum(gy, axis=(0, 2, 3)) if needs[2] else None


class Conv2DGrad(Function):
    """(gx, gW) of y = conv2d(x, W) for the upstream gy: (deconv2d(gy, W), conv2d_grad_w(x, gy)) in one step,
    so that gy goes to the column layout once. Bilinear in (x, W) and gy, so its backward is again convolutions."""

    kernel: Pair

    def __init__(self, kernel: Pair, stride: Pair, pad: Pair) -> None:
        self.kernel = tuple(kernel)
        self.stride = stride
        self.pad = pad

    def forward(self, x: Any, W: Any, gy: Any) -> tuple[Any, Any]:
        """(gx, gW) = (deconv2d(gy, W), conv2d_grad_w(x, gy))."""
        return self.backend.conv2d_grads(x, W, gy, self.stride, self.pad)

    def backward(
        self, ggx: Variable | None, ggW: Variable | None
    ) -> tuple[Variable | None, Variable | None, Variable | None]:
        """(dx, dW, dgy) = (deconv2d(gy, ggW), conv2d_grad_w(ggx, gy), conv2d(ggx, W) + conv2d(x, ggW))."""
        # An output nobody kept has no gradient (None): its terms vanish; so do those of inputs needing none.
        x, W, gy = self.inputs
        need_x, need_W, need_gy = self.needs_grad
        geometry = {"stride": self.stride, "pad": self.pad}
        d_x = d_W = None
        d_gy = []
        if ggx is not None:
            if need_W:
                d_W = Conv2DGradW(self.kernel, self.stride, self.pad)(ggx, gy)
            if need_gy:
                d_gy.append(conv2d(ggx, W, **geometry))
        if ggW is not None:
            if need_x:
                d_x = deconv2d(gy, ggW, outsize=x.shape[2:], **geometry)
            if need_gy:
                d_gy.append(conv2d(x, ggW, **geometry))
        return d_x, d_W, (d_gy[0] + d_gy[1] if len(d_gy) == 2 else d_gy[0] if d_gy else None)


class Deconv2d(Function):
    """y = Wᵀ ⋆ x + b (transposed convolution); dy/dx = conv2d(gy, W), dy/dW = conv2d_grad_w(gy, x), dy/db = Σ gy."""

    outsize: tuple[int, ...]  # (H, W) of y
    kernel: Pair  # (KH, KW) of W, set by forward

    def __init__(self, stride: Pair, pad: Pair, outsize: Pair) -> None:
        self.stride = stride
        self.pad = pad
        self.outsize = outsize

    def forward(self, x: Any, W: Any, b: Any = None) -> Any:
        """y = Wᵀ ⋆ x + b."""
        self.kernel = tuple(W.shape[2:])
        return self.backend.deconv2d(x, W, b, self.stride, self.pad, self.outsize)

    inputs_read: tuple[tuple[int, ...], ...] | None = ((1,), (0,), ())  # gx reads W, gW reads x, gb neither

    def backward(self, gy: Variable) -> tuple[Variable | None, ...]:
        """(gx, gW[, gb]) = (conv2d(gy, W), conv2d_grad_w(gy, x)[, Σ gy]); None where no gradient is needed."""
        x, W = self.inputs[:2]
        needs = self.needs_grad
        gx = conv2d(gy, W, stride=self.stride, pad=self.pad) if needs[0] else None
        gW = Conv2DGradW(self.kernel, self.stride, self.pad)(gy, x) if needs[1] else None
        if len(needs) == 2:
            return gx, gW
        return gx, gW, sum(gy, axis=(0, 2, 3)) if needs[2] else None


class Conv2DGradW(Function):
    """gW = Σₙ gy ⊗ im2col(x), the weight gradient of conv2d(x, W); bilinear, so its backward is
    (deconv2d(gy, ggW), conv2d(x, ggW))."""

    kernel: Pair

    def __init__(self, kernel: Pair, stride: Pair, pad: Pair) -> None:
        self.kernel = tuple(kernel)
        self.stride = stride
        self.pad = pad

    def forward(self, x: Any, gy: Any) -> Any:
        """gW = Σₙ gy ⊗ im2col(x)."""
        return self.backend.conv2d_grad_w(x, gy, self.kernel, self.stride, self.pad)

    def backward(self, ggW: Variable) -> tuple[Variable | None, Variable | None]:
        """(gx, ggy) = (deconv2d(gy, ggW), conv2d(x, ggW)); None where no gradient is needed."""
        x, gy = self.inputs
        need_x, need_gy = self.needs_grad
        gx = deconv2d(gy, ggW, stride=self.stride, pad=self.pad, outsize=x.shape[2:]) if need_x else None
        ggy = conv2d(x, ggW, stride=self.stride, pad=self.pad) if need_gy else None
        return gx, ggy


def conv2d(x: Any, W: Any, b: Any = None, stride: int | Pair = 1, pad: int | Pair = 0) -> Variable:
    """2-D convolution (cross-correlation) of x (N, C, H, W) with W (OC, C, KH, KW), plus b (OC,)."""
    x, W = as_variable(x), as_variable(W)
    b = None if b is None else as_variable(b)
    _check_operands("conv2d", x, W, in_axis=1)
    kernel, stride, pad = _geometry("conv2d", W.shape[2:], stride, pad)
    _out_hw("conv2d", x.shape[2:], kernel, stride, pad)
    _check_bias("conv2d", b, W.shape[0])
    f = Conv2d(stride, pad)
    return f(x, W) if b is None else f(x, W, b)


def deconv2d(
    x: Any, W: Any, b: Any = None, stride: int | Pair = 1, pad: int | Pair = 0, outsize: Sequence[int] | None = None
) -> Variable:
    """Transposed 2-D convolution of x (N, C, H, W) with W (C, OC, KH, KW), plus b (OC,): the adjoint of conv2d."""
    x, W = as_variable(x), as_variable(W)
    b = None if b is None else as_variable(b)
    _check_operands("deconv2d", x, W, in_axis=0)
    kernel, stride, pad = _geometry("deconv2d", W.shape[2:], stride, pad)
    h, w = x.shape[2:]
    if outsize is None:
        outsize = tuple(get_deconv_outsize(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, pad))
        if min(outsize) < 1:
            raise ValueError(
                f"deconv2d: input {h}x{w} with kernel {kernel}, stride {stride}, pad {pad} gives output {outsize}"
            )
    outsize = pair(tuple(outsize))
    if _out_hw("deconv2d", outsize, kernel, stride, pad) != (h, w):
        raise ValueError(
            f"deconv2d: outsize {outsize} is inconsistent with input {h}x{w}: a convolution with kernel {kernel}, "
            f"stride {stride}, pad {pad} maps {outsize} to {_out_hw('deconv2d', outsize, kernel, stride, pad)}"
        )
    _check_bias("deconv2d", b, W.shape[1])
    f = Deconv2d(stride, pad, outsize)
    return f(x, W) if b is None else f(x, W, b)


def conv2d_simple(x: Any, W: Any, b: Any = None, stride: int | Pair = 1, pad: int | Pair = 0) -> Variable:
    """conv2d written as im2col + matmul (slower; differentiable through those two functions)."""
    x, W = as_variable(x), as_variable(W)
    _check_operands("conv2d_simple", x, W, in_axis=1)
    n = x.shape[0]
    oc = W.shape[0]
    kernel, stride, pad = _geometry("conv2d_simple", W.shape[2:], stride, pad)
    oh, ow = _out_hw("conv2d_simple", x.shape[2:], kernel, stride, pad)
    col = im2col(x, kernel, stride, pad, to_matrix=True)
    t = matmul(col, transpose(reshape(W, (oc, -1))))
    if b is not None:
        t = t + b
    return transpose(reshape(t, (n, oh, ow, oc)), (0, 3, 1, 2))


# --- im2col / col2im -----------------------------------------------------------------------------------


class Im2col(Function):
    """col = the sliding windows of x; dcol/dx = col2im (sums each window back)."""

    keeps_inputs: bool = False
    kernel: Pair
    stride: Pair
    pad: Pair
    to_matrix: bool
    input_shape: tuple[int, ...]  # x's shape, set by forward

    def __init__(self, kernel: Pair, stride: Pair, pad: Pair, to_matrix: bool) -> None:
        self.kernel, self.stride, self.pad, self.to_matrix = kernel, stride, pad, to_matrix

    def forward(self, x: Any) -> Any:
        """col = the windows of x: (N·OH·OW, C·KH·KW) with to_matrix, else (N, C, KH, KW, OH, OW)."""
        self.input_shape = tuple(x.shape)
        col = im2col_array(x, self.kernel, self.stride, self.pad)
        if not self.to_matrix:
            return col
        n, c, kh, kw, oh, ow = col.shape
        return self.xp.reshape(self.xp.permute_dims(col, (0, 4, 5, 1, 2, 3)), (n * oh * ow, c * kh * kw))

    def backward(self, gy: Variable) -> Variable:
        """gx = col2im(gy)."""
        return col2im(gy, self.input_shape, self.kernel, self.stride, self.pad, self.to_matrix)


class Col2im(Function):
    """x = Σ of the windows in col placed back on the image; dx/dcol = im2col."""

    keeps_inputs: bool = False
    kernel: Pair
    stride: Pair
    pad: Pair
    to_matrix: bool

    def __init__(self, input_shape: tuple[int, ...], kernel: Pair, stride: Pair, pad: Pair, to_matrix: bool) -> None:
        self.input_shape = input_shape
        self.kernel, self.stride, self.pad, self.to_matrix = kernel, stride, pad, to_matrix

    def forward(self, col: Any) -> Any:
        """x = the windows in col summed back into an image of `input_shape`."""
        if self.to_matrix:
            n, c = self.input_shape[:2]
            oh, ow = _out_hw("col2im", self.input_shape[2:], self.kernel, self.stride, self.pad)
            col = self.xp.reshape(col, (n, oh, ow, c, *self.kernel))
            col = self.xp.permute_dims(col, (0, 3, 4, 5, 1, 2))
        return col2im_array(col, self.input_shape, self.kernel, self.stride, self.pad)

    def backward(self, gy: Variable) -> Variable:
        """gcol = im2col(gy)."""
        return im2col(gy, self.kernel, self.stride, self.pad, self.to_matrix)


def im2col(
    x: Any, kernel_size: int | Pair, stride: int | Pair = 1, pad: int | Pair = 0, to_matrix: bool = True
) -> Variable:
    """Sliding windows of x (N, C, H, W): (N·OH·OW, C·KH·KW) with to_matrix, else (N, C, KH, KW, OH, OW)."""
    x = as_variable(x)
    _check_images("im2col", x)
    kernel, stride, pad = _geometry("im2col", kernel_size, stride, pad)
    _out_hw("im2col", x.shape[2:], kernel, stride, pad)
    return Im2col(kernel, stride, pad, to_matrix)(x)


def col2im(
    x: Any,
    input_shape: Sequence[int],
    kernel_size: int | Pair,
    stride: int | Pair = 1,
    pad: int | Pair = 0,
    to_matrix: bool = True,
) -> Variable:
    """The adjoint of im2col: windows summed back into an image of `input_shape` (N, C, H, W)."""
    x = as_variable(x)
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"col2im: input_shape must be (N, C, H, W), got {input_shape}")
    kernel, stride, pad = _geometry("col2im", kernel_size, stride, pad)
    n, c = input_shape[:2]
    oh, ow = _out_hw("col2im", input_shape[2:], kernel, stride, pad)
    expected = (n * oh * ow, c * kernel[0] * kernel[1]) if to_matrix else (n, c, *kernel, oh, ow)
    if x.shape != expected:
        raise ValueError(f"col2im: for input_shape {input_shape} the columns must have shape {expected}, got {x.shape}")
    return Col2im(input_shape, kernel, stride, pad, to_matrix)(x)


# --- pooling -------------------------------------------------------------------------------------------


def _check_pool_pad(name: str, kernel: Pair, pad: Pair) -> None:
    # PyTorch's rule (max_pool2d, avg_pool2d). From pad >= kernel on, some window is all padding (-inf for max).
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(
            f"{name}: pad {pad} must be at most half the kernel {kernel}, i.e. pad <= kernel // 2 = "
            f"{(kernel[0] // 2, kernel[1] // 2)} (as in PyTorch's pooling)"
        )


class Pooling(Function):
    """y = max over each window (padding counts as -inf); dy/dx = gy routed to the first arg-max of its window."""

    saved: tuple[str, ...] = ("argmax",)
    keeps_inputs: bool = False
    kernel: Pair
    stride: Pair
    pad: Pair
    x_shape: tuple[int, ...]  # set by forward
    argmax: tuple[Any, ...]  # set by forward: which slot of each window won, as the backend records it

    def __init__(self, kernel: Pair, stride: Pair, pad: Pair) -> None:
        self.kernel, self.stride, self.pad = kernel, stride, pad

    def forward(self, x: Any) -> Any:
        """y = max over each window, recording the arg-max."""
        self.x_shape = tuple(x.shape)
        y, self.argmax = self.backend.max_pool(x, self.kernel, self.stride, self.pad)
        return y

    def backward(self, gy: Variable) -> Variable:
        """gx = gy placed at each window's arg-max."""
        return PoolingGrad(self)(gy)


class PoolingGrad(Function):
    """gx = gy placed at each window's arg-max (accumulated where windows overlap); linear in gy, its backward
    picks ggx at the same arg-max positions."""

    keeps_inputs: bool = False

    def __init__(self, pooling: Pooling) -> None:
        self.pooling = pooling

    def forward(self, gy: Any) -> Any:
        """gx = gy placed at each window's arg-max, summed where windows overlap."""
        p = self.pooling
        return self.backend.max_pool_grad(p.argmax, gy, p.x_shape, p.kernel, p.stride, p.pad)

    def backward(self, ggx: Variable) -> Variable:
        """ggy = ggx at the arg-max positions."""
        return PoolingWithIndexes(self.pooling)(ggx)


class PoolingWithIndexes(Function):
    """y = x at the arg-max positions recorded by a max pooling; dy/dx = PoolingGrad."""

    keeps_inputs: bool = False

    def __init__(self, pooling: Pooling) -> None:
        self.pooling = pooling

    def forward(self, x: Any) -> Any:
        """y = x at the recorded arg-max of each window."""
        p = self.pooling
        return self.backend.max_pool_pick(p.argmax, x, p.kernel, p.stride, p.pad)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy placed at the recorded arg-max positions."""
        return PoolingGrad(self.pooling)(gy)


def pooling(x: Any, kernel_size: int | Pair, stride: int | Pair = 1, pad: int | Pair = 0) -> Variable:
    """Max pooling of x (N, C, H, W) over KH×KW windows; padded positions never win (they count as -inf)."""
    x = as_variable(x)
    _check_images("pooling", x)
    kernel, stride, pad = _geometry("pooling", kernel_size, stride, pad)
    _check_pool_pad("pooling", kernel, pad)
    _out_hw("pooling", x.shape[2:], kernel, stride, pad)
    return Pooling(kernel, stride, pad)(x)


def pooling_simple(x: Any, kernel_size: int | Pair, stride: int | Pair = 1, pad: int | Pair = 0) -> Variable:
    """Max pooling written as im2col + a one-hot selection (zero padding, as im2col pads)."""
    x = as_variable(x)
    _check_images("pooling_simple", x)
    kernel, stride, pad = _geometry("pooling_simple", kernel_size, stride, pad)
    _check_pool_pad("pooling_simple", kernel, pad)
    n, c = x.shape[:2]
    oh, ow = _out_hw("pooling_simple", x.shape[2:], kernel, stride, pad)
    col = reshape(im2col(x, kernel, stride, pad, to_matrix=True), (-1, kernel[0] * kernel[1]))
    xp = array_namespace(col.data)
    index = xp.argmax(col.data, axis=1)
    positions = xp.arange(col.shape[1], device=device_of(col.data))
    mask = xp.astype(index[:, None] == positions[None, :], col.dtype)
    y = sum(col * as_variable(mask), axis=1)
    return transpose(reshape(y, (n, oh, ow, c)), (0, 3, 1, 2))


class AveragePooling(Function):
    """y = mean over each window (padding counts as zeros in the mean); dy/dx = gy/(KH·KW) spread over the window."""

    keeps_inputs: bool = False
    kernel: Pair
    stride: Pair
    pad: Pair
    x_shape: tuple[int, ...]  # set by forward

    def __init__(self, kernel: Pair, stride: Pair, pad: Pair) -> None:
        self.kernel, self.stride, self.pad = kernel, stride, pad

    def forward(self, x: Any) -> Any:
        """y = Σ of each window / (KH·KW)."""
        self.x_shape = tuple(x.shape)
        return self.backend.avg_pool(x, self.kernel, self.stride, self.pad)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy/(KH·KW) added over each window."""
        return AveragePoolingGrad(self)(gy)


class AveragePoolingGrad(Function):
    """gx = gy/(KH·KW) added over each window; linear, its backward is average pooling again."""

    keeps_inputs: bool = False

    def __init__(self, pooling: AveragePooling) -> None:
        self.pooling = pooling

    def forward(self, gy: Any) -> Any:
        """gx = gy/(KH·KW) added over each window."""
        p = self.pooling
        return self.backend.avg_pool_grad(gy, p.x_shape, p.kernel, p.stride, p.pad)

    def backward(self, ggx: Variable) -> Variable:
        """ggy = average pooling of ggx."""
        p = self.pooling
        return AveragePooling(p.kernel, p.stride, p.pad)(ggx)


def average_pooling(x: Any, kernel_size: int | Pair, stride: int | Pair = 1, pad: int | Pair = 0) -> Variable:
    """Average pooling of x (N, C, H, W) over KH×KW windows, always dividing by KH·KW (zero padding included)."""
    x = as_variable(x)
    _check_images("average_pooling", x)
    kernel, stride, pad = _geometry("average_pooling", kernel_size, stride, pad)
    _check_pool_pad("average_pooling", kernel, pad)
    _out_hw("average_pooling", x.shape[2:], kernel, stride, pad)
    return AveragePooling(kernel, stride, pad)(x)
