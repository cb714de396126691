"""The NumPy backend: im2col + BLAS for convolutions, with windows written in place and, for stride 1, a wide
column layout of long contiguous runs into reused buffers (backends/_scratch.py); the hot composites written
with `out=` into reused buffers; `np.add.at`. Its GPU is CuPy's (`to_gpu`, as in DeZero), and its bfloat16 is
ml_dtypes'.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from xdezero.backends._im2col import ColumnPlan, Pair
from xdezero.backends._namespace import as_array_data
from xdezero.backends._portable import MutableBackend, Shape
from xdezero.backends._registry import cupy_usable
from xdezero.backends._scatter import host_index
from xdezero.backends._scratch import MIN_BYTES as REUSED_MIN_BYTES
from xdezero.backends._scratch import empty as reused_empty

# The same arithmetic as the portable code, written into reused buffers (backends/_scratch.py) with `out=`, so
# that a step's large results stop costing fresh pages; small arrays and other dtypes take the portable path.


def _composites() -> dict[str, Callable[..., Any]]:
    floats = (np.dtype(np.float32), np.dtype(np.float64))

    def large_float(*arrays: Any) -> bool:
        a = arrays[0]
        return (
            a.dtype in floats
            and a.nbytes >= REUSED_MIN_BYTES
            and all(b.dtype == a.dtype and b.shape == a.shape for b in arrays[1:])
        )

    def sigmoid(portable, xp, x):
        if not large_float(x):
            return portable(xp, x)
        y = np.multiply(x, 0.5, out=reused_empty(x.shape, x.dtype))
        np.tanh(y, out=y)
        y *= 0.5
        y += 0.5
        return y

    def sigmoid_grad(portable, xp, y, gy):
        if not large_float(y, gy):
            return portable(xp, y, gy)
        g = np.subtract(1, y, out=reused_empty(y.shape, y.dtype))
        g *= y
        g *= gy
        return g

    def relu(portable, xp, x):
        if not large_float(x):
            return portable(xp, x)
        y = np.maximum(x, 0, out=reused_empty(x.shape, x.dtype))
        mask = np.greater(x, 0, out=reused_empty(x.shape, x.dtype), casting="unsafe")  # 1.0 where x > 0
        return y, mask

    def matmul(portable, xp, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype not in floats:
            return portable(xp, a, b)
        shape = (a.shape[0], b.shape[1])
        if shape[0] * shape[1] * a.dtype.itemsize < REUSED_MIN_BYTES:
            return portable(xp, a, b)
        return np.matmul(a, b, out=reused_empty(shape, a.dtype))

    def softmax_cross_entropy(portable, xp, x, t):
        # The portable arithmetic in place in one reused buffer: z = x - row max, then e = exp z, then p = e / s.
        if not large_float(x) or x.ndim != 2:
            return portable(xp, x, t)
        m = np.max(x, axis=1, keepdims=True)
        if not np.isfinite(m).all():  # rows of -inf, inf or NaN: the portable code's guards
            return portable(xp, x, t)
        n, c = x.shape
        z = np.subtract(x, m, out=reused_empty(x.shape, x.dtype))
        picked = z.reshape(-1).take(np.arange(n) * c + t)
        e = np.exp(z, out=z)
        s = np.sum(e, axis=1, keepdims=True)  # >= 1: the max's own term is exp(0)
        loss = (np.sum(np.log(s)) - np.sum(picked)) / n
        return xp.asarray(loss, dtype=x.dtype), np.divide(e, s, out=e)

    def softmax_cross_entropy_grad(portable, xp, p, t, gy):
        if not large_float(p):
            return portable(xp, p, t, gy)
        n = p.shape[0]
        scale = gy * (1.0 / n)
        g = np.multiply(p, scale, out=reused_empty(p.shape, np.result_type(p, scale)))
        rows = np.arange(n)
        g[rows, t] = (p[rows, t] - 1.0) * scale  # as the portable (p - 1) * scale, rounding included
        return g

    def spread_slots(portable, xp, g, index, count, axis):
        # Each slot written in place, where the portable code multiplies `count` arrays and stacks them.
        if not large_float(g) or index.shape != g.shape:
            return portable(xp, g, index, count, axis)
        out = reused_empty((*g.shape[:axis], count, *g.shape[axis:]), g.dtype)
        for k in range(count):
            np.multiply(index == k, g, out=out[(slice(None),) * axis + (k,)])
        return out

    return {
        "sigmoid": sigmoid,
        "sigmoid_grad": sigmoid_grad,
        "relu": relu,
        "matmul": matmul,
        "softmax_cross_entropy": softmax_cross_entropy,
        "softmax_cross_entropy_grad": softmax_cross_entropy_grad,
        "spread_slots": spread_slots,
    }


# --- the column layout of stride-1 convolutions --------------------------------------------------------------


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


def _require_cupy() -> ModuleType:
    try:
        import cupy
    except ImportError:
        raise RuntimeError(
            "CuPy is not installed, so arrays cannot be moved to a GPU; "
            "install the CuPy build for your CUDA version (e.g. pip install cupy-cuda12x)"
        ) from None
    if not cupy_usable():
        raise RuntimeError("CuPy is installed but sees no usable CUDA GPU (cupy.cuda.is_available() is False)")
    return cupy


class NumpyBackend(MutableBackend):
    """NumPy: windows written in place, the wide column layout for stride 1, in-place composites."""

    name = "numpy"

    def column_plan(self, x: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> ColumnPlan:
        """The wide layout (long contiguous runs into reused buffers) for stride 1, else the exact one."""
        if stride == (1, 1):
            return WideColumnPlan(shape, kernel, stride, pad)
        return ColumnPlan(shape, kernel, stride, pad)

    def scatter_add(self, shape: Shape, index: Any, values: Any) -> Any:
        """np.add.at into fresh zeros."""
        out = np.zeros(shape, dtype=values.dtype)
        np.add.at(out, host_index(index), values)
        return out

    def id_bounds(self, arrays: list[Any]) -> Any:
        """[min, max] of each array, as Python ints (nothing to move: the arrays are on the host)."""
        return [int(r(a)) for a in arrays for r in (np.min, np.max)]

    def composites(self) -> dict[str, Callable[..., Any]]:
        """The composites NumPy runs into reused buffers."""
        return _composites()

    def to_gpu(self, x: Any) -> Any:
        """A CuPy array on CuPy's current GPU (DeZero's meaning of the GPU for NumPy data)."""
        x = as_array_data(x, what="to_gpu argument")
        return _require_cupy().asarray(x)

    def place_bits(self, bits: np.ndarray, dtype: str, like: Any) -> Any:
        """The bits viewed as ml_dtypes' `dtype` (NumPy has none of its own)."""
        try:
            ml_dtypes = importlib.import_module("ml_dtypes")
        except ImportError:
            raise TypeError(
                f"a {dtype} array cannot become a NumPy array without the ml_dtypes package (pip install "
                "ml_dtypes), or place it in a torch or JAX model"
            ) from None
        return bits.view(getattr(ml_dtypes, dtype))
