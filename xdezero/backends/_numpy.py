"""The NumPy backend: im2col + BLAS for convolutions, as the portable backend does them (backends/_im2col.py
writes NumPy's windows in place and its large results into reused buffers, backends/_scratch.py), and the
hot composites written with `out=` into reused buffers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from xdezero.backends._portable import Backend, Shape
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


class NumpyBackend(Backend):
    """NumPy: the portable kernels, whose column layout has NumPy's in-place paths, and in-place composites."""

    name = "numpy"

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
