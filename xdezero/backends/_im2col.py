"""Sliding windows over NCHW images (im2col / col2im and their building blocks).

Strided slicing is standard; padding and the accumulation of overlapping windows are not. The functions here
ask the arrays' backend (`pad_images`, `im2col`, `add_windows`, `col2im`, their matrix forms and the column
layout of convolutions), and hold the spellings the backends choose from: with the standard alone (concat,
slices and sums), by writing into a fresh array (NumPy, CuPy, torch), or by an indexed add (JAX).
`kernel`, `stride` and `pad` are (height, width) pairs of ints throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xdezero.backends._backends import backend_of
from xdezero.backends._graphs import graph_safe_matmul as matmul
from xdezero.backends._graphs import graph_safe_stack as stack
from xdezero.backends._namespace import array_namespace, device_of

Pair = tuple[int, int]
Shape = tuple[int, ...]


def out_size(size: int, k: int, s: int, p: int) -> int:
    """The output length of a window `k` sliding by `s` over `size` padded by `p` on each side."""
    return (size + 2 * p - k) // s + 1


def pad_images(x: Any, pad: Pair, value: float = 0.0) -> Any:
    """x (N, C, H, W) with `pad` rows/columns of `value` added on each side of H and W (by x's backend)."""
    if pad[0] == 0 and pad[1] == 0:
        return x
    return backend_of(x).pad_images(x, pad, value)


def pad_by_writing(x: Any, pad: Pair, value: float = 0.0) -> Any:
    """pad_images for libraries whose fresh arrays can be written: one filled array, x copied into its middle."""
    (ph, pw), (n, c, h, w) = pad, x.shape
    out = array_namespace(x).full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype, device=device_of(x))
    out[:, :, ph : ph + h, pw : pw + w] = x
    return out


def pad_by_concat(x: Any, pad: Pair, value: float = 0.0) -> Any:
    """pad_images with the standard alone: strips of `value` concatenated on each side."""
    (ph, pw), (n, c, h, w) = pad, x.shape
    xp, dev = array_namespace(x), device_of(x)
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
    return backend_of(x).im2col(x, kernel, stride, pad, value)


def stacked_windows(x: Any, kernel: Pair, stride: Pair, pad: Pair, value: float = 0.0) -> Any:
    """im2col with the standard alone: stacking the strided views writes each (OH, OW) plane once, contiguously."""
    n, c = x.shape[:2]
    parts = windows(x, kernel, stride, pad, value)
    oh, ow = parts[0].shape[2:]
    xp = array_namespace(x)
    return xp.reshape(stack(xp, parts, axis=2), (n, c, kernel[0], kernel[1], oh, ow))


def im2col_matrix(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """col (C·KH·KW, N·OH·OW): the layout for one big GEMM, W (OC, C·KH·KW) @ col, in convolutions."""
    return backend_of(x).im2col_matrix(x, kernel, stride, pad)


def col2im_matrix(col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """The adjoint of im2col_matrix: col (C·KH·KW, N·OH·OW) summed back into an (N, C, H, W) image."""
    return backend_of(col).col2im_matrix(col, shape, kernel, stride, pad)


def windows_matrix(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """im2col_matrix with the standard alone."""
    n, c = x.shape[:2]
    xp = array_namespace(x)
    # The padding copy (or the stack) absorbs the N <-> C swap, so the batch needs no copy of its own.
    parts = windows(xp.permute_dims(x, (1, 0, 2, 3)), kernel, stride, pad)
    oh, ow = parts[0].shape[2:]
    return xp.reshape(stack(xp, parts, axis=1), (c * kernel[0] * kernel[1], n * oh * ow))


def added_windows_matrix(col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """col2im_matrix with the standard alone (and each library's add_windows)."""
    n, c, h, w = shape
    kh, kw = kernel
    oh = out_size(h, kh, stride[0], pad[0])
    ow = out_size(w, kw, stride[1], pad[1])
    xp = array_namespace(col)
    col = xp.reshape(col, (c, kh, kw, n, oh, ow))
    parts = [col[:, i, j, :, :, :] for i in range(kh) for j in range(kw)]
    # Accumulating in the columns' own (C, N) order reads them contiguously; the result is a (N, C, H, W) view.
    return xp.permute_dims(add_windows(parts, (c, n, h, w), kernel, stride, pad), (1, 0, 2, 3))


def add_windows(parts: Sequence[Any], shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """The adjoint of `windows`: an (N, C, H, W) array where each part (N, C, OH, OW) is added at its window
    positions; overlapping windows accumulate and whatever lands in the padding is dropped (by the parts'
    backend)."""
    return backend_of(parts[0]).add_windows(parts, shape, kernel, stride, pad)


def _window_span(k: int, kw: int, stride: Pair, oh: int, ow: int) -> tuple[slice, ...]:
    i, j = divmod(k, kw)
    sh, sw = stride
    return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


def add_windows_by_writing(parts: Sequence[Any], shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """add_windows for libraries whose fresh arrays can be written: each part added into its strided slice."""
    (n, c, h, w), (ph, pw) = shape, pad
    first = parts[0]
    oh, ow = first.shape[2], first.shape[3]
    out = array_namespace(first).zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=first.dtype, device=device_of(first))
    for k, part in enumerate(parts):
        out[_window_span(k, kernel[1], stride, oh, ow)] += part  # ours; strided slices of distinct offsets never alias
    return out[:, :, ph : ph + h, pw : pw + w]


def add_windows_by_at(parts: Sequence[Any], shape: Shape, kernel: Pair, stride: Pair, pad: Pair, at: Any) -> Any:
    """add_windows for immutable arrays with an indexed add (`at(out, index, part)` returns the new array)."""
    (n, c, h, w), (ph, pw) = shape, pad
    first = parts[0]
    oh, ow = first.shape[2], first.shape[3]
    out = array_namespace(first).zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=first.dtype, device=device_of(first))
    for k, part in enumerate(parts):
        out = at(out, _window_span(k, kernel[1], stride, oh, ow), part)
    return out[:, :, ph : ph + h, pw : pw + w]


def add_windows_functional(parts: Sequence[Any], shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """add_windows with the standard alone (no setitem)."""
    (_, _, h, w), (ph, pw) = shape, pad
    out = _add_windows_functional(array_namespace(parts[0]), parts, (h + 2 * ph, w + 2 * pw), kernel, stride)
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
    return backend_of(col).col2im(col, shape, kernel, stride, pad)


def added_windows(col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """col2im through add_windows."""
    kh, kw = kernel
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


def column_plan(x: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> ColumnPlan:
    """The column layout for convolutions on images of `shape` made of arrays like `x` (x's backend chooses)."""
    return backend_of(x).column_plan(x, shape, kernel, stride, pad)
