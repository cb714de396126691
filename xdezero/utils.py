"""DeZero's `dezero.utils`: raw-array helpers, finite-difference gradient checks, array comparisons."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xdezero._geometry import get_conv_outsize, get_deconv_outsize, pair
from xdezero.backends import array_namespace, device_of, to_numpy
from xdezero.core import Variable, as_variable
from xdezero.datasets import cache_path, get_file
from xdezero.functions.arithmetic import sum_to_array
from xdezero.functions.reduce import logsumexp, max_backward_shape
from xdezero.functions.shape import reshape_sum_backward
from xdezero.visualize import get_dot_graph, plot_dot_graph

__all__ = [
    "sum_to",
    "reshape_sum_backward",
    "logsumexp",
    "max_backward_shape",
    "gradient_check",
    "numerical_grad",
    "array_equal",
    "array_allclose",
    "get_conv_outsize",
    "get_deconv_outsize",
    "pair",
    "get_dot_graph",
    "plot_dot_graph",
    "get_file",
    "cache_dir",  # noqa: F822 (a lazy module attribute, see __getattr__)
    "show_progress",
]


def __getattr__(name: str) -> Any:
    # DeZero's `cache_dir` string, read when asked so that it follows $XDEZERO_DATA_DIR.
    if name == "cache_dir":
        return str(cache_path())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def show_progress(block_num: int, block_size: int, total_size: int) -> None:
    """A `urllib.request.urlretrieve` report hook: redraws a 30-character bar and the percentage downloaded."""
    done = min(block_num * block_size / total_size, 1.0) if total_size > 0 else 1.0
    filled = int(done * 30)
    print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done * 100:.2f}%", end="", file=sys.stdout, flush=True)


def sum_to(x: Any, shape: Sequence[int]) -> Any:
    """Sum the raw array `x` down to `shape` (undoing broadcasting)."""
    return sum_to_array(array_namespace(x), x, tuple(shape))


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, memoryview):  # `.data` of a NumPy array, e.g. of Chainer's raw running statistics
        return np.asarray(x)
    return to_numpy(x.data if isinstance(x, Variable) else x)


def array_equal(a: Any, b: Any) -> bool:
    """True when a and b (arrays of any library or Variables) have the same shape and elements."""
    return bool(np.array_equal(_to_numpy(a), _to_numpy(b)))


def array_allclose(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """True when a and b (arrays of any library or Variables) are elementwise close (shapes must broadcast)."""
    return bool(np.allclose(_to_numpy(a), _to_numpy(b), rtol=rtol, atol=atol))


def numerical_grad(f: Callable[..., Any], x: Any, *args: Any, **kwargs: Any) -> Any:
    """d Σ f(x, *args) / dx by central differences, one element at a time (eps = 1e-4).

    Works on immutable arrays too: every step evaluates f on a fresh perturbed copy of x.
    The result is an array of x's library, device and dtype.
    """
    data = x.data if isinstance(x, Variable) else x
    xp = array_namespace(data)
    eps = 1e-4
    grad = np.zeros(math.prod(data.shape), dtype=np.float64)
    flat = xp.reshape(data, (-1,))
    for i in range(grad.size):
        step = np.zeros(grad.size, dtype=np.float64)
        step[i] = eps
        step = xp.astype(xp.asarray(step, device=device_of(data)), data.dtype)
        ys = []
        for shifted in (flat + step, flat - step):
            y = f(xp.reshape(shifted, data.shape), *args, **kwargs)
            y = y.data if isinstance(y, Variable) else y
            ys.append(float(array_namespace(y).sum(y)))
        grad[i] = (ys[0] - ys[1]) / (2 * eps)
    return xp.astype(xp.asarray(grad.reshape(data.shape), device=device_of(data)), data.dtype)


def gradient_check(
    f: Callable[..., Any], x: Any, *args: Any, rtol: float = 1e-4, atol: float = 1e-5, **kwargs: Any
) -> bool:
    """True when backprop's gradient of Σ f(x, *args) w.r.t. x matches central differences (in float64)."""
    x = as_variable(x)
    xp = array_namespace(x.data)
    x = Variable(xp.astype(x.data, xp.float64))
    num_grad = numerical_grad(f, x, *args, **kwargs)
    y = f(x, *args, **kwargs)
    y.backward()
    if x.grad is None:
        raise ValueError("gradient_check: f's output does not depend on x (x.grad is None after backward)")
    bp_grad = x.grad.data
    if tuple(bp_grad.shape) != tuple(num_grad.shape):
        raise ValueError(
            f"gradient_check: backprop gave a gradient of shape {tuple(bp_grad.shape)}, "
            f"finite differences {tuple(num_grad.shape)}"
        )
    ok = array_allclose(num_grad, bp_grad, rtol=rtol, atol=atol)
    if not ok:
        diff = np.abs(_to_numpy(num_grad) - _to_numpy(bp_grad))
        print(f"gradient_check: mismatch, largest absolute difference {diff.max():.6g} (rtol={rtol}, atol={atol})")
    return ok
