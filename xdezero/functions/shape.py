"""Shape and reduction ops: reshape, transpose, get_item, sum, matmul (and their DeZero helpers)."""

from __future__ import annotations

import builtins
import math
from collections.abc import Sequence
from typing import Any

from xdezero.backends import (
    backend_of_namespace,
    check_ids,
    check_index_arrays,
    device_of,
    fused,
    graph_safe_matmul,
    scatter_add,
)
from xdezero.core import Function, Variable, as_variable
from xdezero.functions.arithmetic import broadcast_to, sum_to

__all__ = [
    "reshape",
    "transpose",
    "get_item",
    "sum",
    "sum_to",
    "broadcast_to",
    "matmul",
    "expand_dims",
    "flatten",
    "average",
    "mean",
    "normalize_axis",
    "reshape_sum_backward",
]


def normalize_axis(axis: int | Sequence[int] | None, ndim: int, where: str) -> tuple[int, ...]:
    """`axis` as a sorted tuple of non-negative ints (all axes for None); a clear error when out of range."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out: list[int] = []
    for a in axes:
        if not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(
                f"{where}: axis {a!r} is out of range for an array of {ndim} dimensions "
                f"(accepted: integers in [{-ndim}, {ndim - 1}])"
            )
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def reshape_sum_backward(
    gy: Variable, x_shape: tuple[int, ...], axis: int | Sequence[int] | None, keepdims: bool
) -> Variable:
    """Reshape the gradient of a sum over `axis` so that it broadcasts back to `x_shape`."""
    axes = normalize_axis(axis, len(x_shape), "sum")
    if keepdims or not axes or gy.ndim == len(x_shape):
        return gy
    shape = list(gy.shape)
    for a in axes:
        shape.insert(a, 1)
    return reshape(gy, tuple(shape))


class Reshape(Function):
    """y = x viewed with a new shape; dy/dx = reshape back."""

    keeps_inputs: bool = False
    x_shape: tuple[int, ...]  # set by forward

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def forward(self, x: Any) -> Any:
        """y = x with `shape`."""
        self.x_shape = tuple(x.shape)
        return self.xp.reshape(x, self.shape)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy reshaped to x's shape."""
        return reshape(gy, self.x_shape)


def _resolve_shape(shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    known = math.prod(s for s in shape if s != -1)
    if shape.count(-1) > 1 or (shape.count(-1) == 0 and known != size) or (known and size % known):
        raise ValueError(f"reshape: cannot reshape an array of size {size} into shape {shape}")
    if -1 in shape:
        if known == 0:
            raise ValueError(f"reshape: cannot infer -1 in {shape} for an array of size {size}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    return shape


def expand_dims(x: Any, axis: int) -> Variable:
    """x with a new axis of length 1 inserted at `axis` (negative counts from the end of the result)."""
    x = as_variable(x)
    if not isinstance(axis, int) or not -x.ndim - 1 <= axis <= x.ndim:
        raise ValueError(
            f"expand_dims: axis {axis!r} is out of range for an array of {x.ndim} dimensions "
            f"(accepted: integers in [{-x.ndim - 1}, {x.ndim}])"
        )
    shape = list(x.shape)
    shape.insert(axis % (x.ndim + 1), 1)
    return reshape(x, tuple(shape))


def flatten(x: Any) -> Variable:
    """x reshaped to (N, -1), keeping the first (batch) axis."""
    x = as_variable(x)
    if x.ndim == 0:
        raise ValueError("flatten: expected an array with a batch axis, got a 0-d array")
    return reshape(x, (x.shape[0], -1))


def reshape(x: Any, shape: int | Sequence[int]) -> Variable:
    """x with a new shape (one dimension may be -1)."""
    x = as_variable(x)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    shape = _resolve_shape(shape, x.size)
    if x.shape == shape:
        return x
    return Reshape(shape)(x)


class Transpose(Function):
    """y = x with permuted axes; dy/dx = the inverse permutation."""

    keeps_inputs: bool = False
    axes: tuple[int, ...] | None

    def __init__(self, axes: tuple[int, ...] | None) -> None:
        self.axes = axes  # None (reverse all axes) until forward resolves it

    def forward(self, x: Any) -> Any:
        """y = x with its axes permuted by `axes` (reversed when None)."""
        axes = tuple(reversed(range(x.ndim))) if self.axes is None else self.axes
        if sorted(a % x.ndim for a in axes) != list(range(x.ndim)) or len(axes) != x.ndim:
            raise ValueError(f"transpose: axes {self.axes} are not a permutation of the {x.ndim} axes of {x.shape}")
        self.axes = tuple(a % x.ndim for a in axes)
        return self.xp.permute_dims(x, self.axes)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy with the inverse permutation."""
        inverse = tuple(sorted(range(len(self.axes)), key=self.axes.__getitem__))
        return transpose(gy, inverse)


def transpose(x: Any, axes: Sequence[int] | None = None) -> Variable:
    """x with its axes permuted (reversed by default)."""
    return Transpose(None if axes is None else tuple(axes))(x)


def _index_for(xp, x, index):
    """Lists and foreign integer arrays in an index become arrays of x's own library (JAX, strict need it)."""
    if isinstance(index, tuple):
        return tuple(_index_for(xp, x, i) for i in index)
    if isinstance(index, list) or (hasattr(index, "shape") and type(index) is not type(x)):
        return xp.asarray(index, device=device_of(x))
    return index


def _complete_index(index, ndim):
    """Add a trailing `...` to a partial index: the standard (and array-api-strict) asks for complete ones."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index) or builtins.sum(i is not None for i in index) >= ndim:
        return index
    return index + (Ellipsis,)


def _row_ids(xp, x, index, where, checked, ids_only=False):
    """An integer index array checked against axis 0 of x, as non-negative ids of the default index dtype
    (`ids_only`: ids in [0, n), a ValueError otherwise, as embed_id wants; else indices in [-n, n))."""
    if x.ndim == 0:
        raise IndexError(f"{where}: a 0-d array cannot be indexed with an integer array")
    if not xp.isdtype(index.dtype, "integral"):
        raise IndexError(f"{where}: index arrays must have an integer dtype (or bool, for a mask), got {index.dtype}")
    n = x.shape[0]
    # Small or unsigned index dtypes: torch's `take` wants int32/int64, and `index + n` could overflow them.
    ids = xp.astype(index, backend_of_namespace(xp).index_dtype(xp, device_of(x)), copy=False)  # read, never written
    if ids_only:
        return ids if checked else check_ids(ids, 0, n, where)
    if not checked:
        ids = check_ids(ids, -n, n, where, "index", IndexError)
    return xp.where(ids < 0, ids + n, ids)


def _check_mask(x, mask, where):
    if tuple(mask.shape) != tuple(x.shape[: mask.ndim]):
        raise IndexError(
            f"{where}: a boolean mask of shape {tuple(mask.shape)} does not match x of shape {tuple(x.shape)} "
            f"(accepted: a mask with the shape of x's leading axes, e.g. {tuple(x.shape)})"
        )


def _checked_tuple(xp, x, index, where):
    """A tuple index with its integers and integer arrays checked against their axes (all arrays in one host
    transfer): JAX clamps an out-of-range index silently, even a Python int."""
    consumed = [i is not None and i is not Ellipsis and not isinstance(i, bool) for i in index]
    if builtins.sum(consumed) > x.ndim or builtins.any(
        hasattr(i, "shape") and not xp.isdtype(i.dtype, "integral") for i in index
    ):
        return index  # too many indices, a mask inside a tuple (not in the standard), a float index: left to x
    ellipsis = next((k for k, i in enumerate(index) if i is Ellipsis), len(index))
    arrays, ranges = [], []
    for k, i in enumerate(index):
        if not consumed[k] or isinstance(i, slice):
            continue
        axis = builtins.sum(consumed[:k]) if k < ellipsis else x.ndim - builtins.sum(consumed[k:])
        n = x.shape[axis]
        if not isinstance(n, int):
            continue  # an axis of unknown length (a lazy array): nothing to check against
        if hasattr(i, "shape"):
            arrays.append(k)
            ranges.append((-n, n, f"axis-{axis} index"))
        elif isinstance(i, int) and not -n <= i < n:
            raise IndexError(f"{where}: axis-{axis} index {i} is out of range; accepted: integers in [{-n}, {n - 1}]")
    if not arrays:
        return index
    checked = check_index_arrays([index[k] for k in arrays], ranges, where, IndexError)
    index = list(index)
    for k, i in zip(arrays, checked, strict=True):
        index[k] = i
    return tuple(index)


class GetItem(Function):
    """y = x[slices]; dy/dx scatters gy back, accumulating repeated indices."""

    saved: tuple[str, ...] = ("index",)
    keeps_inputs: bool = False
    x_shape: tuple[int, ...]  # set by forward
    index: Any  # `slices` as forward applied it: a checked tuple, an id array or a boolean mask

    def __init__(self, slices: Any, where: str = "get_item", checked: bool = False, ids_only: bool = False) -> None:
        self.slices = slices
        self.where = where
        self.checked = checked  # integer ids already range-checked (by the first-order node)
        self.ids_only = ids_only  # an integer array holds ids in [0, n) (embed_id), not indices in [-n, n)

    def forward(self, x: Any) -> Any:
        """y = x[slices]."""
        xp = self.xp
        self.x_shape = tuple(x.shape)
        index = _index_for(xp, x, self.slices)
        if hasattr(index, "shape") and xp.isdtype(index.dtype, "bool"):
            _check_mask(x, index, self.where)
            self.index = index
            y = x[index]
            if not builtins.all(isinstance(d, int) for d in y.shape):
                raise ValueError(
                    f"{self.where}: a boolean mask on this lazy array gives a result of unknown shape "
                    f"{tuple(y.shape)}, which a graph of Variables cannot hold; keep the shape with "
                    "where(mask, x, 0), or compute the mask before indexing"
                )
            return y
        if hasattr(index, "shape"):  # x[int_array]: `take` is the portable spelling
            self.index = _row_ids(xp, x, index, self.where, self.checked, self.ids_only)
            rows = xp.take(x, xp.reshape(self.index, (-1,)), axis=0)
            return xp.reshape(rows, tuple(index.shape) + tuple(x.shape[1:]))
        self.index = _complete_index(index, x.ndim)
        if not self.checked:
            self.index = _checked_tuple(xp, x, self.index, self.where)
        try:
            return x[self.index]
        except IndexError as e:
            raise IndexError(f"{self.where}: index {self.index!r} is invalid for shape {self.x_shape}: {e}") from e

    def backward(self, gy: Variable) -> Variable:
        """gx = zeros(x.shape) with gy added at slices."""
        return GetItemGrad(self.index, self.x_shape)(gy)


class GetItemGrad(Function):
    """y = zeros(shape) with gy added at slices; dy/dgy = gy[slices]."""

    keeps_inputs: bool = False

    def __init__(self, slices: Any, in_shape: tuple[int, ...]) -> None:
        self.slices = slices
        self.in_shape = in_shape

    def forward(self, gy: Any) -> Any:
        """y = zeros(in_shape) with gy added at slices (repeated indices accumulate)."""
        return scatter_add(self.in_shape, self.slices, gy)

    def backward(self, ggx: Variable) -> Variable:
        """ggy = ggx[slices]."""
        return GetItem(self.slices, checked=True)(ggx)


def get_item(x: Any, slices: Any) -> Variable:
    """x[slices]: basic slices, negative indices, integer arrays (repeated indices accumulate in backward) and
    boolean masks over the leading axes."""
    if isinstance(slices, Variable):
        slices = slices.data
    elif isinstance(slices, tuple):
        slices = tuple(s.data if isinstance(s, Variable) else s for s in slices)
    return GetItem(slices)(x)


class Sum(Function):
    """y = Σ x over `axis`; dy/dx = 1 (broadcast back)."""

    keeps_inputs: bool = False
    x_shape: tuple[int, ...]  # set by forward

    def __init__(self, axis: int | Sequence[int] | None, keepdims: bool) -> None:
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x: Any) -> Any:
        """y = Σ x over `axis`."""
        self.x_shape = tuple(x.shape)
        axes = normalize_axis(self.axis, x.ndim, "sum")
        return self.xp.sum(x, axis=axes, keepdims=self.keepdims)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy broadcast back to x's shape."""
        gy = reshape_sum_backward(gy, self.x_shape, self.axis, self.keepdims)
        return broadcast_to(gy, self.x_shape)


def sum(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Variable:
    """Σ x over `axis` (all axes by default)."""
    return Sum(axis, keepdims)(x)


def average(x: Any, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Variable:
    """Mean of x over `axis` (all axes by default)."""
    x = as_variable(x)
    y = sum(x, axis, keepdims)
    count = x.size // y.size if y.size else 0
    return y / count if count != 1 else y


mean = average


def _swap_last(v: Variable) -> Variable:
    axes = tuple(range(v.ndim - 2)) + (v.ndim - 1, v.ndim - 2)
    return transpose(v, axes)


def matmul_arrays(xp: Any, x: Any, W: Any) -> Any:
    """x @ W on arrays (the portable entry of the "matmul" composite)."""
    return graph_safe_matmul(xp, x, W)


class MatMul(Function):
    """y = x @ W (batched, broadcasting); dy/dx = gy @ Wᵀ, dy/dW = xᵀ @ gy."""

    inputs_read: tuple[tuple[int, ...], ...] | None = ((1,), (0,))  # gx reads W, gW reads x
    shapes: tuple[tuple[int, ...], tuple[int, ...]]  # (x.shape, W.shape), set by forward

    def forward(self, x: Any, W: Any) -> Any:
        """y = x @ W."""
        if x.ndim < 2 or W.ndim < 2 or x.shape[-1] != W.shape[-2]:
            raise ValueError(
                f"matmul: shapes {tuple(x.shape)} and {tuple(W.shape)} do not align "
                "(the last dimension of the first must equal the second-to-last of the second)"
            )
        self.shapes = (tuple(x.shape), tuple(W.shape))
        return fused("matmul", matmul_arrays, self.xp, x, W)  # NumPy: into a reused buffer

    def backward(self, gy: Variable) -> tuple[Variable | None, Variable | None]:
        """(gx, gW) = (gy @ Wᵀ, xᵀ @ gy), each summed to its input's shape; None where no gradient is needed."""
        x, W = self.inputs
        need_x, need_W = self.needs_grad
        gx = sum_to(matmul(gy, _swap_last(W)), self.shapes[0]) if need_x else None
        gW = sum_to(matmul(_swap_last(x), gy), self.shapes[1]) if need_W else None
        return gx, gW


def matmul(x: Any, W: Any) -> Variable:
    """x @ W; 1-D operands are treated as a row (left) or column (right) vector, as in NumPy."""
    x, W = as_variable(x), as_variable(W)
    if x.ndim == 1 or W.ndim == 1:
        if x.ndim == 0 or W.ndim == 0:
            raise ValueError(f"matmul: operands must have at least one dimension, got {x.shape} and {W.shape}")
        x2 = reshape(x, (1, x.shape[0])) if x.ndim == 1 else x
        W2 = reshape(W, (W.shape[0], 1)) if W.ndim == 1 else W
        y = MatMul()(x2, W2)
        shape = y.shape[:-2] + (() if x.ndim == 1 else y.shape[-2:-1]) + (() if W.ndim == 1 else y.shape[-1:])
        return reshape(y, shape)
    return MatMul()(x, W)
