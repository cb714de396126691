"""Fused kernels for the hot composites: one table, (library, composite) -> implementation.

On a GPU every array operation is a kernel launch (about 10-15 µs from Python on CuPy), so a composite written
as a chain of standard operations (sigmoid as tanh, multiply, add; an Adam update as a dozen of them) costs more
in launches than in arithmetic at small batch sizes. Here each hot composite gets one CuPy kernel
(`cupy.ElementwiseKernel`, plus `cupy.ReductionKernel` where rows are summed), looked up per array type; every
other library, and CuPy arrays of a dtype the kernels do not cover, run the portable array-API code that the op
itself passes in, unchanged. CuPy is imported only when a CuPy array reaches this table.

On NumPy the table holds the same arithmetic written with `out=` into reused buffers (backends/_scratch.py): a
training step's large results stop costing fresh pages from the kernel on every step.

An implementation is called as `impl(portable, xp, *args)`: it may hand any call back to `portable(xp, *args)`.
`LAUNCHES` says how many kernels each CuPy implementation launches (the kernel counter in benchmarks/ reports
that number for a fused composite).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xdezero.backends._graphs import cupy_capturing
from xdezero.backends._namespace import library_name
from xdezero.backends._scratch import MIN_BYTES as REUSED_MIN_BYTES
from xdezero.backends._scratch import empty as reused_empty

# (library, composite) -> implementation; filled lazily per library by _LOADERS, or by `register`.
TABLE: dict[tuple[str, str], Callable] = {}
# (composite, array type) -> implementation or None: the hot path reads only this.
_BY_TYPE: dict[tuple[str, type], Callable | None] = {}
_LOADED: set[str] = set()

# Kernels launched by each CuPy implementation (the portable chains launch many more; see count_kernels.py).
LAUNCHES = {
    "sigmoid": 1,
    "sigmoid_grad": 1,
    "softmax_cross_entropy": 5,  # row max, row sum of exp, p, per-row loss, batch sum
    "softmax_cross_entropy_grad": 1,
    "sgd": 1,
    "momentum_sgd": 1,
    "adam": 1,
    "batch_norm_statistics": 1,
}
# Every composite an op routes through the table: the CuPy kernels' above, and those only NumPy has an entry for.
COMPOSITES = frozenset(LAUNCHES) | {"relu", "matmul", "spread_slots"}


def fused(name: str, portable: Callable, xp: Any, *args: Any) -> Any:
    """portable(xp, *args), or the fused implementation of composite `name` for the library of args[0]."""
    key = (name, type(args[0]))
    try:
        impl = _BY_TYPE[key]
    except KeyError:
        impl = _BY_TYPE[key] = _resolve(name, args[0])
    return portable(xp, *args) if impl is None else impl(portable, xp, *args)


def _resolve(name: str, x: Any) -> Callable | None:
    library = library_name(x)
    if library not in _LOADED and library in _LOADERS:
        _LOADED.add(library)
        for composite, impl in _LOADERS[library]().items():
            TABLE.setdefault((library, composite), impl)
    return TABLE.get((library, name))


def register(library: str, name: str, impl: Callable | None) -> Callable | None:
    """Make `impl` the implementation of composite `name` for `library` (None removes it); returns the previous."""
    if name not in COMPOSITES:
        raise ValueError(f"register: unknown composite {name!r}; known: {', '.join(sorted(COMPOSITES))}")
    previous = TABLE.pop((library, name), None)
    if impl is not None:
        TABLE[(library, name)] = impl
    _LOADED.add(library)  # what is registered by hand is not overwritten by the library's own table later
    _BY_TYPE.clear()
    return previous


# --- CuPy ---------------------------------------------------------------------------------------------
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


def _cupy_table() -> dict[str, Callable]:
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
    # (xdezero/tape_graphs.py): the updates write into them, which saves the graph a copy back per array.
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


# --- NumPy ---------------------------------------------------------------------------------------------
# The same arithmetic as the portable code, written into reused buffers (backends/_scratch.py) with `out=`, so
# that a step's large results stop costing fresh pages; small arrays and other dtypes take the portable path.


def _numpy_table() -> dict[str, Callable]:
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


_LOADERS: dict[str, Callable[[], dict[str, Callable]]] = {"cupy": _cupy_table, "numpy": _numpy_table}
