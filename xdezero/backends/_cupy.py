"""The CuPy backend: one CUDA kernel per hot composite (`cupy.ElementwiseKernel`, plus `cupy.ReductionKernel`
where rows are summed), and one kernel each way for the columns of the convolutions' GEMMs; moves to the host;
CUDA graphs (`CupyGraphs`, see backends/_graphs.py). CuPy is imported only when a CuPy array reaches xdezero.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from xdezero.backends._cublas import prepare
from xdezero.backends._devices import to_numpy
from xdezero.backends._graphs import capturing_cupy, cupy_capturing, run_capture
from xdezero.backends._im2col import out_size
from xdezero.backends._portable import MutableBackend, Pair, Shape

# Each kernel is written for T = float32 or float64 (CUDA's float and double overloads of tanh, exp, log,
# sqrt); other dtypes (float16, mixed dtypes) take the portable path. `i` is the loop index in an
# ElementwiseKernel; `n` and names starting with `_` are reserved there.

_SIGMOID = ("T x", "T y", "y = tanh(x * (T)0.5) * (T)0.5 + (T)0.5")
_SIGMOID_GRAD = ("T y, T gy", "T g", "g = ((T)1 - y) * y * gy")
# Rows of logits x (N, C) with the row max m (N, 1): a row whose max is not finite is shifted by 0 (as the
# portable code does), so that a row of -inf gives p = NaN-free zeros/ones as there, and log 0 = -inf.
_SHIFT = "(isfinite(m) ? m : (T)0)"
_ROW_SUM_EXP = ("T x, T m", "T s", f"exp(x - {_SHIFT})", "a + b", "s = a", "0")
_PROBABILITIES = ("T x, T m, T s", "T p", f"p = exp(x - {_SHIFT}) / s")
# One thread per row: (log s - (x[row, t] - shift)) / N, x passed raw (flat, C-contiguous) to pick the label.
_ROW_LOSS = (
    "raw T x, S t, T m, T s, int64 c, T inv_batch",
    "T loss",
    f"loss = (log(s) - (x[i * c + t] - {_SHIFT})) * inv_batch",
)
_SCE_GRAD = (
    "T p, raw S t, T gy, T inv_batch, int64 c",
    "T gx",
    "gx = ((i % c) == t[i / c] ? p - (T)1 : p) * (gy * inv_batch)",
)
_SGD = ("T p, T g, T lr", "T out", "out = p - lr * g")
_MOMENTUM = ("T p, T g, T v, T momentum, T lr", "T p_out, T v_out", "v_out = momentum * v - lr * g; p_out = p + v_out")
_ADAM = (
    "T p, T g, T m, T v, T beta1, T beta2, T lr, T eps",
    "T p_out, T m_out, T v_out",
    "T m1 = m + ((T)1 - beta1) * (g - m); T v1 = v + ((T)1 - beta2) * (g * g - v);"
    " m_out = m1; v_out = v1; p_out = p - lr * m1 / (sqrt(v1) + eps)",
)
_BN_STATS = (
    "T mean, T var, T batch_mean, T batch_var, T decay, T var_scale",
    "T mean_out, T var_out",
    "mean_out = mean * decay + batch_mean * ((T)1 - decay); var_out = var * decay + batch_var * var_scale",
)


def _composites() -> dict[str, Callable[..., Any]]:
    import cupy

    def elementwise(spec: tuple, name: str) -> Any:
        return cupy.ElementwiseKernel(*spec, name=f"xdezero_{name}")

    sigmoid_k = elementwise(_SIGMOID, "sigmoid")
    sigmoid_grad_k = elementwise(_SIGMOID_GRAD, "sigmoid_grad")
    row_sum_exp = cupy.ReductionKernel(*_ROW_SUM_EXP, name="xdezero_row_sum_exp")
    probabilities = elementwise(_PROBABILITIES, "softmax_probabilities")
    row_loss = elementwise(_ROW_LOSS, "softmax_cross_entropy_rows")
    sce_grad = elementwise(_SCE_GRAD, "softmax_cross_entropy_grad")
    sgd_k = elementwise(_SGD, "sgd")
    momentum_k = elementwise(_MOMENTUM, "momentum_sgd")
    adam_k = elementwise(_ADAM, "adam")
    bn_stats_k = elementwise(_BN_STATS, "batch_norm_statistics")
    floats = (cupy.dtype(cupy.float32), cupy.dtype(cupy.float64))

    def same_float(*arrays: Any) -> bool:
        dtype = arrays[0].dtype
        return dtype in floats and all(a.dtype == dtype for a in arrays[1:])

    def sigmoid(portable, xp, x):
        return sigmoid_k(x) if same_float(x) else portable(xp, x)

    def sigmoid_grad(portable, xp, y, gy):
        return sigmoid_grad_k(y, gy) if same_float(y, gy) else portable(xp, y, gy)

    def softmax_cross_entropy(portable, xp, x, t):
        if not same_float(x) or x.ndim != 2 or x.shape[0] == 0:
            return portable(xp, x, t)
        batch, c = x.shape
        x = cupy.ascontiguousarray(x)  # no copy for a matmul's output; the row kernel indexes it flat
        m = cupy.max(x, axis=1, keepdims=True)
        s = row_sum_exp(x, m, axis=1, keepdims=True)
        p = probabilities(x, m, s)
        rows = row_loss(x.ravel(), t, m.ravel(), s.ravel(), c, 1.0 / batch)
        return cupy.sum(rows), p

    def softmax_cross_entropy_grad(portable, xp, p, t, gy):
        if not same_float(p, gy) or p.ndim != 2:
            return portable(xp, p, t, gy)
        return sce_grad(p, t, gy, 1.0 / p.shape[0], p.shape[1])

    # While a CUDA graph is captured, parameters and their state live in the graph's own buffers
    # (xdezero/tapes/graphs.py): the updates write into them, which saves the graph a copy back per array.
    def sgd(portable, xp, p, g, lr):
        if not same_float(p, g):
            return portable(xp, p, g, lr)
        return sgd_k(p, g, lr, p) if cupy_capturing() else sgd_k(p, g, lr)

    def momentum_sgd(portable, xp, p, g, v, momentum, lr):
        if not same_float(p, g, v):
            return portable(xp, p, g, v, momentum, lr)
        return momentum_k(p, g, v, momentum, lr, p, v) if cupy_capturing() else momentum_k(p, g, v, momentum, lr)

    def adam(portable, xp, p, g, m, v, beta1, beta2, lr, eps):
        if not same_float(p, g, m, v):
            return portable(xp, p, g, m, v, beta1, beta2, lr, eps)
        return adam_k(p, g, m, v, beta1, beta2, lr, eps)

    def batch_norm_statistics(portable, xp, mean, var, batch_mean, batch_var, decay, var_scale):
        if not same_float(mean, var, batch_mean, batch_var):
            return portable(xp, mean, var, batch_mean, batch_var, decay, var_scale)
        return bn_stats_k(mean, var, batch_mean, batch_var, decay, var_scale)

    return {
        "sigmoid": sigmoid,
        "sigmoid_grad": sigmoid_grad,
        "softmax_cross_entropy": softmax_cross_entropy,
        "softmax_cross_entropy_grad": softmax_cross_entropy_grad,
        "sgd": sgd,
        "momentum_sgd": momentum_sgd,
        "adam": adam,
        "batch_norm_statistics": batch_norm_statistics,
    }


_cupy_count_outside: list = []


def _cupy_all_inside(eager: list) -> bool:
    """CuPy: whether every id is in range, by one counting kernel per array and one transfer (the minima and
    maxima cost four kernels more per array; they are computed, for the message, only when an id is outside)."""
    if not _cupy_count_outside:
        _cupy_count_outside.append(
            _cupy().ReductionKernel(
                "T x, int64 low, int64 high",
                "int64 n",
                "(x < low || x >= high) ? 1 : 0",
                "a + b",
                "n = a",
                "0",
                "xdezero_count_outside",
            )
        )
    count = _cupy_count_outside[0]
    total = None
    for a, low, high, _ in eager:
        n = count(a, low, high)
        total = n if total is None else total + n
    return int(to_numpy(total)) == 0


def _cupy() -> Any:
    import cupy

    return cupy


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
        kernel = _CUPY_KERNELS[name] = _cupy().ElementwiseKernel(*_CUPY_SOURCES[name])
    return kernel


def _cupy_im2col_matrix(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    cupy = _cupy()
    n, c, h, w = x.shape
    oh, ow = out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1])
    col = cupy.empty((c * kernel[0] * kernel[1], n * oh * ow), dtype=x.dtype)
    if col.size:
        _cupy_kernel("im2col")(cupy.ascontiguousarray(x), n, c, h, w, *kernel, *stride, *pad, oh, ow, col)
    return col


def _cupy_col2im_matrix(col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    cupy = _cupy()
    n, c, h, w = shape
    oh, ow = out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1])
    img = cupy.empty((n, c, h, w), dtype=col.dtype)
    if img.size:
        _cupy_kernel("col2im")(cupy.ascontiguousarray(col), n, c, h, w, *kernel, *stride, *pad, oh, ow, img)
    return img


# --- CUDA graphs --------------------------------------------------------------------------------------------

# A CuPy pool must outlive the arrays allocated from it (they hold it weakly), and some of a graph's arrays are
# handed out (a parameter's gradient): so every pool stays here, with its kit, while the kit lives or any of its
# memory is in use.
_cupy_pools: list = []  # (weak reference to the kit, pool)


class CupyGraphs:
    """CUDA graphs through `cupy.cuda.Stream.begin_capture`, with a `cupy.cuda.MemoryPool` per capturer."""

    name: str = "CuPy"

    def __init__(self, device: Any) -> None:
        cupy = _cupy()
        self._cupy, self._device = cupy, device
        with device:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        self._pool = cupy.cuda.MemoryPool()
        _cupy_pools[:] = [(kit, pool) for kit, pool in _cupy_pools if kit() is not None or pool.used_bytes()]
        _cupy_pools.append((weakref.ref(self), self._pool))

    def __del__(self) -> None:
        try:
            self._pool.free_all_blocks()  # the unused memory; what arrays still hold stays theirs
        except Exception:  # at interpreter exit CuPy may be gone already
            pass

    def capture(self, fn: Callable[[], None]) -> Any:
        """The graph of `fn`'s kernels (none of which runs now); an error in `fn` ends the capture and is raised."""
        cupy = self._cupy
        prepare(self._device.id)  # cuBLAS's handle and workspace, made outside the capture and its pool

        def captured() -> None:
            with capturing_cupy():  # CuPy's products and stacks refuse a capture: ours instead
                fn()

        with self._device, cupy.cuda.using_allocator(self._pool.malloc), self._stream:
            return run_capture(self._stream.begin_capture, captured, self._stream.end_capture)

    def warm(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the capture stream, in order with the current stream's work (what it first meets on that
        stream, such as a library handle's workspace, is then made outside a capture)."""
        current = self._cupy.cuda.get_current_stream()
        self._stream.wait_event(current.record())
        try:
            with self._device, self._stream:
                return fn()
        finally:
            current.wait_event(self._stream.record())

    def launch(self, graph: Any) -> None:
        """Run the graph's kernels once."""
        graph.launch()  # on the current stream

    def copy_into(self, target: Any, source: Any) -> None:
        """Copy `source` into the fixed buffer `target` (a kernel, which a graph can hold)."""
        self._cupy.copyto(target, source)

    def copy(self, a: Any) -> Any:
        """A fresh copy of `a`."""
        return a.copy()

    @staticmethod
    def same_memory(a: Any, b: Any) -> bool:
        """Whether `a` and `b` are the same memory, of the same size and dtype."""
        return a.data.ptr == b.data.ptr and a.size == b.size and a.dtype == b.dtype

    def release(self) -> None:
        """Give the pool's unused memory back (call once no graph captured with it will launch again)."""
        self._pool.free_all_blocks()


class CupyBackend(MutableBackend):
    """CuPy: fused kernels for the hot composites, one kernel each way for the convolutions' columns, windows
    written in place, the portable kernels for the rest."""

    name = "cupy"

    def im2col_matrix(self, x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """One kernel."""
        return _cupy_im2col_matrix(x, kernel, stride, pad)

    def col2im_matrix(self, col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """One kernel, gathering (no atomics): each pixel sums the columns that cover it in im2col's order."""
        return _cupy_col2im_matrix(col, shape, kernel, stride, pad)

    def composites(self) -> dict[str, Callable[..., Any]]:
        """One CUDA kernel per composite, for float32 and float64."""
        return _composites()

    def stream_key(self, like: Any, dtype: Any) -> tuple[str, str] | None:
        """One cupy.random generator per GPU, for float32 and float64 (other dtypes are drawn on the host)."""
        cupy = _cupy()
        return ("cupy", str(like.device.id)) if dtype in (cupy.float32, cupy.float64) else None

    def new_generator(self, like: Any, seed: int) -> Any:
        """cupy.random.default_rng on the array's GPU (its state lives there)."""
        with like.device:
            return _cupy().random.default_rng(seed)

    def draw_uniform(self, generator: Any, shape: Shape, like: Any, dtype: Any) -> tuple[Any, Any]:
        """The generator's `random`, on its GPU."""
        with like.device:
            return generator, generator.random(shape, dtype=dtype)

    def scatter_add(self, shape: Shape, index: Any, values: Any) -> Any:
        """cupy.add.at into fresh zeros on the values' device."""
        cupy = _cupy()
        with values.device:  # CuPy allocates on the current device, which may not be the values' one
            out = cupy.zeros(shape, dtype=values.dtype)
            if hasattr(cupy.add, "at"):  # CuPy 13+; its older cupyx.scatter_add warns as deprecated since
                cupy.add.at(out, index, values)
            else:
                __import__("cupyx").scatter_add(out, index, values)
        return out

    def check_ids(self, checks: list[tuple[Any, int, int, str]], where: str, error: type[Exception]) -> list[Any]:
        """One counting kernel per id array and one transfer; the minima and maxima, for the message, only when
        some id is outside its range."""
        eager = [c for c in checks if c[0].size]
        if eager and not _cupy_all_inside(eager):
            super().check_ids(eager, where, error)
        return [c[0] for c in checks]

    # --- moves, memory and graphs --------------------------------------------------------------------------

    def to_cpu(self, x: Any) -> Any:
        """A NumPy array (DeZero's meaning of the host for CuPy data)."""
        return x.get()

    def to_gpu(self, x: Any) -> Any:
        """x itself: it is on a GPU."""
        return x

    def memory_key(self, x: Any) -> Any:
        """The identity of the array at the end of x's `.base` chain (the one that owns the memory)."""
        while x.base is not None:
            x = x.base
        return id(x)

    def array_module(self, x: Any) -> Any:
        """The `cupy` module itself, as DeZero's `get_array_module` gives."""
        return _cupy()

    def graph_kit(self, device: Any) -> CupyGraphs:
        """CUDA graphs on `device` (a `cupy.cuda.Device`)."""
        return CupyGraphs(device)
