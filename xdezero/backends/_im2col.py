"""Sliding windows over NCHW images (im2col / col2im and their building blocks).

Strided slicing is standard; padding and the accumulation of overlapping windows are not, so each
library gets its fastest spelling here, with a portable fallback built from concat, slices and sums.
`kernel`, `stride` and `pad` are (height, width) pairs of ints throughout.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from xdezero.backends._namespace import array_namespace, device_of

Pair = tuple[int, int]


def _mutable_like_numpy(x: Any) -> bool:
    """NumPy and CuPy: slices of an array we allocated can be written in place."""
    return array_api_compat.is_numpy_array(x) or array_api_compat.is_cupy_array(x)


def out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def pad_images(x: Any, pad: Pair, value: float = 0.0) -> Any:
    """x (N, C, H, W) with `pad` rows/columns of `value` added on each side of H and W."""
    ph, pw = pad
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    xp = array_namespace(x)
    if _mutable_like_numpy(x):
        out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
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


def windows(x: Any, kernel: Pair, stride: Pair, pad: Pair, value: float = 0.0) -> list:
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
    col = xp.stack(windows(x, kernel, stride, pad, value), axis=2)
    return xp.reshape(col, (n, c, kh, kw, oh, ow))


def im2col_matrix(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """col (C·KH·KW, N·OH·OW): the layout for one big GEMM, W (OC, C·KH·KW) @ col, in convolutions."""
    n, c = x.shape[:2]
    xp = array_namespace(x)
    # The padding copy (or the stack) absorbs the N <-> C swap, so the batch needs no copy of its own.
    parts = windows(xp.permute_dims(x, (1, 0, 2, 3)), kernel, stride, pad)
    oh, ow = parts[0].shape[2:]
    return xp.reshape(xp.stack(parts, axis=1), (c * kernel[0] * kernel[1], n * oh * ow))


def col2im_matrix(col: Any, shape: tuple, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    """The adjoint of im2col_matrix: col (C·KH·KW, N·OH·OW) summed back into an (N, C, H, W) image."""
    n, c, h, w = shape
    kh, kw = kernel
    oh = out_size(h, kh, stride[0], pad[0])
    ow = out_size(w, kw, stride[1], pad[1])
    xp = array_namespace(col)
    col = xp.reshape(col, (c, kh, kw, n, oh, ow))
    parts = [col[:, i, j, :, :, :] for i in range(kh) for j in range(kw)]
    # Accumulating in the columns' own (C, N) order reads them contiguously; the result is a (N, C, H, W) view.
    return xp.permute_dims(add_windows(parts, (c, n, h, w), kernel, stride, pad), (1, 0, 2, 3))


def add_windows(parts: list, shape: tuple, kernel: Pair, stride: Pair, pad: Pair) -> Any:
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

    def span(i: int, j: int) -> tuple:
        return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))

    if _mutable_like_numpy(first) or array_api_compat.is_torch_array(first):
        out = xp.zeros((n, c, hp, wp), dtype=first.dtype, device=device_of(first))
        for k, part in enumerate(parts):
            out[span(*divmod(k, kw))] += part  # `out` is ours; strided slices of distinct offsets never alias
    elif array_api_compat.is_jax_array(first):
        import jax.numpy as jnp

        out = jnp.zeros((n, c, hp, wp), dtype=first.dtype)
        for k, part in enumerate(parts):
            out = out.at[span(*divmod(k, kw))].add(part)
    else:
        out = _add_windows_functional(xp, parts, (hp, wp), kernel, stride)
    return out[:, :, ph : ph + h, pw : pw + w]


def _add_windows_functional(xp: Any, parts: list, padded: Pair, kernel: Pair, stride: Pair) -> Any:
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


def col2im(col: Any, shape: tuple, kernel: Pair, stride: Pair, pad: Pair) -> Any:
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
