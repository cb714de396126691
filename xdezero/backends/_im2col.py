"""Sliding windows over NCHW images (im2col / col2im and their building blocks).

Strided slicing is standard; padding and the accumulation of overlapping windows are not, so each
library gets its fastest spelling here, with a portable fallback built from concat, slices and sums.
`kernel`, `stride` and `pad` are (height, width) pairs of ints throughout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Any

import array_api_compat
import numpy as np
from numpy.lib.stride_tricks import as_strided

from xdezero.backends._graphs import graph_safe_matmul as matmul
from xdezero.backends._graphs import graph_safe_stack as stack
from xdezero.backends._namespace import array_namespace, device_of
from xdezero.backends._scratch import empty as reused_empty

Pair = tuple[int, int]
Shape = tuple[int, ...]


def _mutable_like_numpy(x: Any) -> bool:
    """NumPy and CuPy: slices of an array we allocated can be written in place."""
    return array_api_compat.is_numpy_array(x) or array_api_compat.is_cupy_array(x)


def out_size(size: int, k: int, s: int, p: int) -> int:
    """The output length of a window `k` sliding by `s` over `size` padded by `p` on each side."""
    return (size + 2 * p - k) // s + 1


def pad_images(x: Any, pad: Pair, value: float = 0.0) -> Any:
    """x (N, C, H, W) with `pad` rows/columns of `value` added on each side of H and W."""
    ph, pw = pad
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = array_namespace(x)
    if _mutable_like_numpy(x):
        out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype, device=device_of(x))
        out[:, :, ph : ph + h, pw : pw + w] = x
        return out
    if array_api_compat.is_torch_array(x):
        import torch.nn.functional as tf

        return tf.pad(x, (pw, pw, ph, ph), value=value)
    if array_api_compat.is_jax_array(x):
        import jax.numpy as jnp

        return jnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)
    dev = device_of(x)
    if pw:
        side = xp.full((n, c, h, pw), value, dtype=x.dtype, device=dev)
        x = xp.concat([side, x, side], axis=3)
    if ph:
        side = xp.full((n, c, ph, w + 2 * pw), value, dtype=x.dtype, device=dev)
        x = xp.concat([side, x, side], axis=2)
    return x


def windows(x: Any, kernel: Pair, stride: Pair, pad: Pair, value: float = 0.0) -> list[Any]:
    """The KH·KW strided views (N, C, OH, OW) of the padded x, one per kernel offset, in (i, j) row-major order."""
    kh, kw = kernel
    sh, sw = stride
    oh = out_size(x.shape[2], kh, sh, pad[0])
    ow = out_size(x.shape[3], kw, sw, pad[1])
    xpad = pad_images(x, pad, value)
    return [
        xpad[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] for i in range(kh) for j in range(kw)
    ]


def im2col(x: Any, kernel: Pair, stride: Pair, pad: Pair, value: float = 0.0) -> Any:
    """col (N, C, KH, KW, OH, OW) with col[n, c, i, j, y, x] = padded_x[n, c, i + sh·y, j + sw·x]."""
    n, c, h, w = x.shape
    kh, kw = kernel
    oh = out_size(h, kh, stride[0], pad[0])
    ow = out_size(w, kw, stride[1], pad[1])
    xp = array_namespace(x)
    if array_api_compat.is_torch_array(x):
        import torch.nn.functional as tf

        if value == 0:
            col = tf.unfold(x, kernel, padding=pad, stride=stride)
        else:
            col = tf.unfold(pad_images(x, pad, value), kernel, stride=stride)
        return xp.reshape(col, (n, c, kh, kw, oh, ow))
    # One copy: stacking the strided views writes each (OH, OW) plane once, contiguously.
    col = stack(xp, windows(x, kernel, stride, pad, value), axis=2)
    return xp.reshape(col, (n, c, kh, kw, oh, ow))


def im2col_matrix(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """col (C·KH·KW, N·OH·OW): the layout for one big GEMM, W (OC, C·KH·KW) @ col, in convolutions."""
    if array_api_compat.is_cupy_array(x):
        return _cupy_im2col_matrix(x, kernel, stride, pad)
    n, c = x.shape[:2]
    xp = array_namespace(x)
    # The padding copy (or the stack) absorbs the N <-> C swap, so the batch needs no copy of its own.
    parts = windows(xp.permute_dims(x, (1, 0, 2, 3)), kernel, stride, pad)
    oh, ow = parts[0].shape[2:]
    return xp.reshape(stack(xp, parts, axis=1), (c * kernel[0] * kernel[1], n * oh * ow))


def col2im_matrix(col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """The adjoint of im2col_matrix: col (C·KH·KW, N·OH·OW) summed back into an (N, C, H, W) image."""
    if array_api_compat.is_cupy_array(col):
        return _cupy_col2im_matrix(col, shape, kernel, stride, pad)
    n, c, h, w = shape
    kh, kw = kernel
    oh = out_size(h, kh, stride[0], pad[0])
    ow = out_size(w, kw, stride[1], pad[1])
    xp = array_namespace(col)
    col = xp.reshape(col, (c, kh, kw, n, oh, ow))
    parts = [col[:, i, j, :, :, :] for i in range(kh) for j in range(kw)]
    # Accumulating in the columns' own (C, N) order reads them contiguously; the result is a (N, C, H, W) view.
    return xp.permute_dims(add_windows(parts, (c, n, h, w), kernel, stride, pad), (1, 0, 2, 3))


# CuPy: im2col_matrix and col2im_matrix as one kernel each. The portable spelling costs a padding copy, KH·KW
# strided copies and a concatenation (whose table of pointers crosses from the host, which a CUDA-graph capture
# refuses) one way, and KH·KW strided additions the other. col2im gathers: each image pixel sums the columns
# that cover it, in the portable code's (i, j) order, so the sums are the same and no atomics are needed.
_GEOMETRY = (
    "int32 n, int32 c, int32 h, int32 w, int32 kh, int32 kw, int32 sh, int32 sw, int32 ph, int32 pw, int32 oh, int32 ow"
)
_CUPY_SOURCES = {
    "im2col": (
        "raw T img, " + _GEOMETRY,
        "T col",
        """
        const long long m = (long long)n * oh * ow;
        const long long row = i / m, at = i % m;
        const int ch = (int)(row / (kh * kw)), k = (int)(row % (kh * kw));
        const long long b = at / ((long long)oh * ow);
        const int p = (int)(at % ((long long)oh * ow));
        const int y = (p / ow) * sh + k / kw - ph, x = (p % ow) * sw + k % kw - pw;
        col = (y >= 0 && y < h && x >= 0 && x < w) ? img[((b * c + ch) * h + y) * w + x] : (T)0;
        """,
        "xdezero_im2col",
    ),
    "col2im": (
        "raw T col, " + _GEOMETRY,
        "T img",
        """
        const long long m = (long long)n * oh * ow;
        const int x = (int)(i % w);
        long long rest = i / w;
        const int y = (int)(rest % h);
        rest /= h;
        const int ch = (int)(rest % c);
        const long long b = rest / c;
        T total = (T)0;
        for (int ki = 0; ki < kh; ++ki) {
            const int ys = y + ph - ki;
            if (ys < 0 || ys % sh != 0 || ys / sh >= oh) continue;
            for (int kj = 0; kj < kw; ++kj) {
                const int xs = x + pw - kj;
                if (xs < 0 || xs % sw != 0 || xs / sw >= ow) continue;
                total += col[((long long)(ch * kh + ki) * kw + kj) * m + (b * oh + ys / sh) * ow + xs / sw];
            }
        }
        img = total;
        """,
        "xdezero_col2im",
    ),
}
_CUPY_KERNELS: dict[str, Any] = {}


def _cupy_kernel(name: str) -> Any:
    kernel = _CUPY_KERNELS.get(name)
    if kernel is None:
        kernel = _CUPY_KERNELS[name] = sys.modules["cupy"].ElementwiseKernel(*_CUPY_SOURCES[name])
    return kernel


def _cupy_im2col_matrix(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    cupy = sys.modules["cupy"]
    n, c, h, w = x.shape
    oh, ow = out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1])
    col = cupy.empty((c * kernel[0] * kernel[1], n * oh * ow), dtype=x.dtype)
    if col.size:
        _cupy_kernel("im2col")(cupy.ascontiguousarray(x), n, c, h, w, *kernel, *stride, *pad, oh, ow, col)
    return col


def _cupy_col2im_matrix(col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    cupy = sys.modules["cupy"]
    n, c, h, w = shape
    oh, ow = out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1])
    img = cupy.empty((n, c, h, w), dtype=col.dtype)
    if img.size:
        _cupy_kernel("col2im")(cupy.ascontiguousarray(col), n, c, h, w, *kernel, *stride, *pad, oh, ow, img)
    return img


def add_windows(parts: Sequence[Any], shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """The adjoint of `windows`: an (N, C, H, W) array where each part (N, C, OH, OW) is added at its window
    positions; overlapping windows accumulate and whatever lands in the padding is dropped."""
    n, c, h, w = shape
    kw = kernel[1]
    sh, sw = stride
    ph, pw = pad
    hp, wp = h + 2 * ph, w + 2 * pw
    first = parts[0]
    oh, ow = first.shape[2], first.shape[3]
    xp = array_namespace(first)

    def span(i: int, j: int) -> tuple[slice, ...]:
        return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))

    if _mutable_like_numpy(first) or array_api_compat.is_torch_array(first):
        out = xp.zeros((n, c, hp, wp), dtype=first.dtype, device=device_of(first))
        for k, part in enumerate(parts):
            out[span(*divmod(k, kw))] += part  # `out` is ours; strided slices of distinct offsets never alias
    elif array_api_compat.is_jax_array(first):
        import jax.numpy as jnp

        out = jnp.zeros((n, c, hp, wp), dtype=first.dtype, device=device_of(first))
        for k, part in enumerate(parts):
            out = out.at[span(*divmod(k, kw))].add(part)
    else:
        out = _add_windows_functional(xp, parts, (hp, wp), kernel, stride)
    return out[:, :, ph : ph + h, pw : pw + w]


def _add_windows_functional(xp: Any, parts: Sequence[Any], padded: Pair, kernel: Pair, stride: Pair) -> Any:
    """No setitem: dilate each part by the stride (interleave zeros), pad it to its offset, and sum."""
    hp, wp = padded
    kw = kernel[1]
    sh, sw = stride
    total = None
    for k, part in enumerate(parts):
        i, j = divmod(k, kw)
        d = _dilate(xp, part, 2, sh)
        d = _dilate(xp, d, 3, sw)
        d = _place(xp, d, 2, i, hp)
        d = _place(xp, d, 3, j, wp)
        total = d if total is None else total + d
    return total


def _dilate(xp: Any, a: Any, axis: int, s: int) -> Any:
    """Insert s-1 zeros after every element along `axis` (of a 4-D array)."""
    if s == 1:
        return a
    shape = list(a.shape)
    a = xp.expand_dims(a, axis=axis + 1)
    zshape = [*shape[: axis + 1], s - 1, *shape[axis + 1 :]]
    zeros = xp.zeros(tuple(zshape), dtype=a.dtype, device=device_of(a))
    a = xp.concat([a, zeros], axis=axis + 1)
    shape[axis] *= s
    return xp.reshape(a, tuple(shape))


def _place(xp: Any, a: Any, axis: int, offset: int, size: int) -> Any:
    """`a` shifted by `offset` along `axis` into a length-`size` axis: zeros before, cropped or zero-padded after."""
    length = a.shape[axis]
    if offset + length > size:
        index = [slice(None)] * 4
        index[axis] = slice(0, size - offset)
        a = a[tuple(index)]
        length = size - offset
    pieces = []
    for extent in (offset, None, size - offset - length):
        if extent is None:
            pieces.append(a)
        elif extent:
            zshape = list(a.shape)
            zshape[axis] = extent
            pieces.append(xp.zeros(tuple(zshape), dtype=a.dtype, device=device_of(a)))
    return pieces[0] if len(pieces) == 1 else xp.concat(pieces, axis=axis)


def col2im(col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """The adjoint of im2col: col (N, C, KH, KW, OH, OW) summed back into an (N, C, H, W) image."""
    n, c, h, w = shape
    kh, kw = kernel
    oh, ow = col.shape[4], col.shape[5]
    xp = array_namespace(col)
    if array_api_compat.is_torch_array(col):
        import torch.nn.functional as tf

        return tf.fold(xp.reshape(col, (n, c * kh * kw, oh * ow)), (h, w), kernel, padding=pad, stride=stride)
    parts = [col[:, :, i, j, :, :] for i in range(kh) for j in range(kw)]
    return add_windows(parts, shape, kernel, stride, pad)


# --- column layouts for the convolution GEMMs -------------------------------------------------------


class ColumnPlan:
    """How a convolution on images of `shape` (N, C, H, W) lays out its columns: im2col gives
    (C·KH·KW, M), the GEMM output (OC, M) goes back to images, and back again for the gradients.
    Here M = N·OH·OW, one column per output pixel (any library, any stride)."""

    shape: Shape
    kernel: Pair
    stride: Pair
    pad: Pair

    def __init__(self, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> None:
        self.shape, self.kernel, self.stride, self.pad = tuple(shape), kernel, stride, pad
        h, w = self.shape[2:]
        self.out_hw: Pair = (out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1]))

    def im2col(self, x: Any) -> Any:
        """x (N, C, H, W) -> its columns (C·KH·KW, M)."""
        return im2col_matrix(x, self.kernel, self.stride, self.pad)

    def to_images(self, y: Any, bias: Any = None) -> Any:
        """(OC, M) plus bias (OC,) -> (N, OC, OH, OW), contiguous."""
        xp = array_namespace(y)
        oc, n = y.shape[0], self.shape[0]
        if bias is not None:
            y = y + xp.reshape(bias, (oc, 1))
        y = xp.permute_dims(xp.reshape(y, (oc, n, -1)), (1, 0, 2))
        return xp.reshape(y, (n, oc, *self.out_hw))

    def from_images(self, g: Any) -> Any:
        """(N, OC, OH, OW) -> (OC, M)."""
        xp = array_namespace(g)
        n, oc = g.shape[:2]
        return xp.reshape(xp.permute_dims(xp.reshape(g, (n, oc, -1)), (1, 0, 2)), (oc, -1))

    def col2im(self, col: Any) -> Any:
        """The adjoint of `im2col`: columns (C·KH·KW, M) summed back into images (N, C, H, W)."""
        return col2im_matrix(col, self.shape, self.kernel, self.stride, self.pad)

    def conv(self, Wm: Any, x: Any) -> Any:
        """Wm (OC, C·KH·KW) @ im2col(x): (OC, M)."""
        return matmul(array_namespace(x), Wm, self.im2col(x))

    def grad_w(self, x: Any, g: Any) -> Any:
        """im2col(x) @ gᵀ for g (OC, M): (C·KH·KW, OC)."""
        xp = array_namespace(x)
        # OpenBLAS runs this orientation fast; g @ colᵀ (long K, transposed B) up to 100x slower.
        return matmul(xp, self.im2col(x), xp.permute_dims(g, (1, 0)))

    def deconv(self, Wt: Any, g: Any) -> Any:
        """col2im(Wt (C·KH·KW, OC) @ g (OC, M)): images (N, C, H, W)."""
        return self.col2im(matmul(array_namespace(g), Wt, g))


class WideColumnPlan(ColumnPlan):
    """NumPy, stride 1: one column per pixel of the *padded* images, M = N·Hp·Wp. Then every kernel offset
    (i, j) is the flat shift i·Wp + j of the whole padded batch, so im2col copies KH·KW long contiguous runs
    and col2im adds them back, where the exact layout needs short strided rows. The columns of positions
    outside the output (the right and bottom margins) are computed and dropped; the gradients are zero there.
    """

    hp: int  # the padded images' height and width
    wp: int

    def __init__(self, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> None:
        super().__init__(shape, kernel, stride, pad)
        n, _, h, w = self.shape
        self.hp, self.wp = h + 2 * pad[0], w + 2 * pad[1]
        self.length: int = n * self.hp * self.wp
        self.reach: int = (kernel[0] - 1) * self.wp + kernel[1] - 1  # the largest shift

    def _padded(
        self, channels: int, dtype: Any, reach: int = 0, filled: tuple[Pair, Pair] | None = None
    ) -> tuple[Any, Any]:
        """A (channels, M + reach) buffer and its (channels, N, Hp, Wp) view, zero everywhere except, when given,
        in the box `filled` = ((row0, row1), (col0, col1)) of each image, which the caller then writes. The
        buffer is a reused one (backends/_scratch.py): fresh pages would cost more than clearing."""
        buf = reused_empty((channels, self.length + reach), np.dtype(dtype))
        images = buf[:, : self.length].reshape(channels, self.shape[0], self.hp, self.wp)
        if filled is None:
            buf.fill(0)
            return buf, images
        (r0, r1), (c0, c1) = filled
        images[:, :, :r0] = 0
        images[:, :, r1:] = 0
        images[:, :, r0:r1, :c0] = 0
        images[:, :, r0:r1, c1:] = 0
        buf[:, self.length :] = 0
        return buf, images

    def _inner(self, images: Any) -> Any:
        (ph, pw), (h, w) = self.pad, self.shape[2:]
        return images[:, :, ph : ph + h, pw : pw + w]

    def im2col(self, x: Any) -> Any:
        """x (N, C, H, W) -> its columns (C·KH·KW, M), one copy of KH·KW contiguous runs."""
        c, (kh, kw) = self.shape[1], self.kernel
        return self._windows_4d(x).reshape(c * kh * kw, self.length)  # the one copy

    def to_images(self, y: Any, bias: Any = None) -> Any:
        """(OC, M) plus bias (OC,) -> (N, OC, OH, OW), the margins' columns dropped."""
        oc, n = y.shape[0], self.shape[0]
        oh, ow = self.out_hw
        y = y.reshape(oc, n, self.hp, self.wp)[:, :, :oh, :ow].transpose(1, 0, 2, 3)
        out = reused_empty((n, oc, oh, ow), y.dtype if bias is None else np.result_type(y, bias))
        if bias is None:
            out[...] = y
        else:
            np.add(y, bias.reshape(1, oc, 1, 1), out=out)  # the bias rides along with the one copy
        return out

    def from_images(self, g: Any) -> Any:
        """(N, OC, OH, OW) -> (OC, M), zero in the margins."""
        oh, ow = self.out_hw
        buf, images = self._padded(g.shape[1], g.dtype, filled=((0, oh), (0, ow)))
        images[:, :, :oh, :ow] = g.transpose(1, 0, 2, 3)
        return buf

    def col2im(self, col: Any) -> Any:
        """The adjoint of `im2col`: KH·KW shifted runs added back into the padded images."""
        c = self.shape[1]
        kh, kw = self.kernel
        buf, images = self._padded(c, col.dtype, self.reach)
        col = col.reshape(c, kh * kw, self.length)
        for k in range(kh * kw):
            shift = (k // kw) * self.wp + k % kw
            buf[:, shift : shift + self.length] += col[:, k]  # `buf` is ours
        return self._inner(images).transpose(1, 0, 2, 3)

    deconv_block: int = 8192  # columns per block of the deconvolution's GEMM (see deconv)

    # The GEMMs run over blocks of columns: a block of the column matrix stays in cache and its memory is
    # reused, where the whole (C·KH·KW, M) matrix would be written to fresh pages on every call.

    def _blocks(self, rows: int) -> list[Pair]:
        step = max(256, (1 << 18) // rows)  # about 1 MiB of float32 columns
        return [(s, min(s + step, self.length)) for s in range(0, self.length, step)]

    def _column_blocks(self, x: Any) -> Iterator[tuple[int, int, Any]]:
        """(a, b, columns a:b of the (C·KH·KW, M) column matrix of x), each block copied into one reused buffer."""
        win = self._windows_4d(x)
        c, kh, kw = win.shape[:3]
        blocks = self._blocks(c * kh * kw)
        width = blocks[0][1] - blocks[0][0]
        buffer = reused_empty((c * kh * kw, width), x.dtype)
        for a, b in blocks:
            buffer.reshape(c, kh, kw, width)[..., : b - a] = win[..., a:b]
            yield a, b, buffer[:, : b - a]

    def conv(self, Wm: Any, x: Any) -> Any:
        """Wm (OC, C·KH·KW) @ im2col(x): (OC, M), block by block."""
        y = reused_empty((Wm.shape[0], self.length), np.result_type(Wm, x))
        for a, b, columns in self._column_blocks(x):
            np.matmul(Wm, columns, out=y[:, a:b])
        return y

    def grad_w(self, x: Any, g: Any) -> Any:
        """im2col(x) @ gᵀ for g (OC, M): (C·KH·KW, OC), block by block."""
        # One copy: OpenBLAS runs a block against rows of gᵀ faster than against its view.
        gt = reused_empty((g.shape[1], g.shape[0]), g.dtype)
        gt[...] = g.T
        total = None
        for a, b, columns in self._column_blocks(x):
            part = columns @ gt[a:b]
            total = part if total is None else total + part
        return total

    def deconv(self, Wt: Any, g: Any) -> Any:
        """col2im(Wt (C·KH·KW, OC) @ g (OC, M)): images (N, C, H, W), block by block."""
        # col2im block by block: each (C·KH·KW, block) slice of Wt @ g is added into the padded images while it
        # is still in cache, instead of writing the whole column matrix to memory and reading it back. Blocks
        # are wider than the convolution's: OpenBLAS runs this small inner dimension (OC) slowly on short ones.
        c = self.shape[1]
        kh, kw = self.kernel
        dtype = np.result_type(Wt, g)
        buf, images = self._padded(c, dtype, self.reach)
        step = min(self.deconv_block, self.length)
        block = reused_empty((Wt.shape[0], step), dtype)
        for a in range(0, self.length, step):
            b = min(a + step, self.length)
            part = np.matmul(Wt, g[:, a:b], out=block[:, : b - a]).reshape(c, kh * kw, b - a)
            for k in range(kh * kw):
                shift = (k // kw) * self.wp + k % kw
                buf[:, a + shift : b + shift] += part[:, k]
        return self._inner(images).transpose(1, 0, 2, 3)

    def _windows_4d(self, x: Any) -> Any:
        """The column matrix as a (C, KH, KW, M) strided view of the padded batch (no copy)."""
        c = self.shape[1]
        kh, kw = self.kernel
        (ph, pw), (h, w) = self.pad, self.shape[2:]
        buf, images = self._padded(c, x.dtype, self.reach, filled=((ph, ph + h), (pw, pw + w)))
        self._inner(images)[...] = x.transpose(1, 0, 2, 3)
        s = buf.strides[1]
        return as_strided(buf, (c, kh, kw, self.length), (buf.strides[0], self.wp * s, s, s), writeable=False)


def column_plan(x: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> ColumnPlan:
    """The column layout for convolutions on images of `shape` made of arrays like `x`."""
    if stride == (1, 1) and array_api_compat.is_numpy_array(x):
        return WideColumnPlan(shape, kernel, stride, pad)
    return ColumnPlan(shape, kernel, stride, pad)
