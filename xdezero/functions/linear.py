"""The functions behind parametric layers: linear (x W + b) and embed_id (row lookup W[x])."""

from __future__ import annotations

from typing import Any

from xdezero.backends import array_namespace, fused
from xdezero.core import Function, Variable, as_variable
from xdezero.functions.arithmetic import sum_to
from xdezero.functions.shape import GetItem, matmul, matmul_arrays

__all__ = ["linear", "linear_simple", "embed_id"]


def _check_linear(x: Any, W: Any, b: Any) -> None:
    if W.ndim != 2:
        raise ValueError(f"linear: W must be a 2-D (in_size, out_size) array, got shape {tuple(W.shape)}")
    if x.ndim == 0 or x.shape[-1] != W.shape[0]:
        raise ValueError(
            f"linear: x of shape {tuple(x.shape)} and W of shape {tuple(W.shape)} do not align "
            f"(x's last dimension must equal W's first, {W.shape[0]})"
        )
    if b is not None and tuple(b.shape) not in ((W.shape[1],), (1, W.shape[1]), ()):
        raise ValueError(f"linear: b must have shape ({W.shape[1]},) to match W {tuple(W.shape)}, got {b.shape}")


class Linear(Function):
    """y = x W + b; dy/dx = gy Wᵀ, dy/dW = xᵀ gy, dy/db = Σₙ gy."""

    inputs_read: tuple[tuple[int, ...], ...] | None = ((1,), (0,), ())  # gx reads W, gW reads x, gb neither
    b_shape: tuple[int, ...]  # set by forward when there is a bias

    def forward(self, x: Any, W: Any, b: Any = None) -> Any:
        """y = x W + b."""
        # One node instead of matmul + add: the common 2-D layer case, without the intermediate x W.
        if b is not None:
            self.b_shape = tuple(b.shape)
        return fused("linear", _linear, self.xp, x, W, b)  # JAX: one compiled call

    def backward(self, gy: Variable) -> tuple[Variable | None, ...]:
        """(gx, gW[, gb]) = (gy Wᵀ, xᵀ gy[, Σₙ gy]); None where no gradient is needed."""
        x, W = self.inputs[:2]
        needs = self.needs_grad
        if needs[0] and needs[1]:  # a hidden layer: both products in one node
            gx, gW = LinearGrad()(x, W, gy)
        elif needs[1]:  # the first layer: no gradient for the data
            gx, gW = None, LinearGradW()(x, gy)
        else:
            gx, gW = (matmul(gy, W.T) if needs[0] else None), None
        if len(needs) == 2:
            return gx, gW
        return gx, gW, sum_to(gy, self.b_shape) if needs[2] else None


class LinearGrad(Function):
    """(gx, gW) = (gy Wᵀ, xᵀ gy), the gradients of y = x W for the upstream gy, in one node; bilinear, so its
    backward is again products: dx = gy ggWᵀ, dW = ggxᵀ gy, dgy = ggx W + x ggW."""

    def forward(self, x: Any, W: Any, gy: Any) -> tuple[Any, Any]:
        """(gx, gW) = (gy Wᵀ, xᵀ gy)."""
        return fused("linear_grad", _linear_grad, self.xp, x, W, gy)  # JAX: one compiled call

    def backward(
        self, ggx: Variable | None, ggW: Variable | None
    ) -> tuple[Variable | None, Variable | None, Variable | None]:
        """(dx, dW, dgy) = (gy ggWᵀ, ggxᵀ gy, ggx W + x ggW); an output nobody kept has no gradient (None)."""
        x, W, gy = self.inputs
        need_x, need_W, need_gy = self.needs_grad
        dx = matmul(gy, ggW.T) if need_x and ggW is not None else None
        dW = matmul(ggx.T, gy) if need_W and ggx is not None else None
        dgy = None
        if need_gy and ggx is not None:
            dgy = matmul(ggx, W)
        if need_gy and ggW is not None:
            dgy = matmul(x, ggW) if dgy is None else dgy + matmul(x, ggW)
        return dx, dW, dgy


class LinearGradW(Function):
    """gW = xᵀ gy, the weight gradient of y = x W (+ b) for the upstream gy; bilinear, so its backward is again
    products: dx = gy ggWᵀ, dgy = x ggW."""

    def forward(self, x: Any, gy: Any) -> Any:
        """gW = xᵀ gy."""
        return fused("linear_grad_w", _linear_grad_w, self.xp, x, gy)

    def backward(self, ggW: Variable) -> tuple[Variable | None, Variable | None]:
        """(dx, dgy) = (gy ggWᵀ, x ggW); None where no gradient is needed."""
        x, gy = self.inputs
        need_x, need_gy = self.needs_grad
        return (matmul(gy, ggW.T) if need_x else None), (matmul(x, ggW) if need_gy else None)


def _linear(xp: Any, x: Any, W: Any, b: Any) -> Any:
    y = fused("matmul", matmul_arrays, xp, x, W)  # NumPy: into a reused buffer
    if b is None:
        return y
    if b.dtype == y.dtype:
        y += b  # y is this call's own fresh array (JAX rebinds)
        return y
    return y + b


def _linear_grad(xp: Any, x: Any, W: Any, gy: Any) -> tuple[Any, Any]:
    return fused("matmul", matmul_arrays, xp, gy, xp.permute_dims(W, (1, 0))), _linear_grad_w(xp, x, gy)


def _linear_grad_w(xp: Any, x: Any, gy: Any) -> Any:
    return fused("matmul", matmul_arrays, xp, xp.permute_dims(x, (1, 0)), gy)  # NumPy: into a reused buffer


def linear(x: Any, W: Any, b: Any = None) -> Variable:
    """x W + b for x of shape (N, in_size), W (in_size, out_size) and b (out_size,) or None."""
    x, W = as_variable(x), as_variable(W)
    if isinstance(b, Variable) and b.data is None:
        b = None  # DeZero's Linear layer with nobias=True passes a Parameter holding None
    _check_linear(x, W, b)
    if x.ndim != 2:
        return linear_simple(x, W, b)
    return Linear()(x, W) if b is None else Linear()(x, W, b)


def linear_simple(x: Any, W: Any, b: Any = None) -> Variable:
    """x W + b composed from matmul and add."""
    x, W = as_variable(x), as_variable(W)
    if isinstance(b, Variable) and b.data is None:
        b = None
    _check_linear(x, W, b)
    y = matmul(x, W)
    return y if b is None else y + b


def embed_id(x: Any, W: Any) -> Variable:
    """W[x]: the rows of W picked by integer ids x in [0, V) (any shape, any integer dtype); repeated ids accumulate.
    Unlike DeZero's W[x], a negative id is a ValueError, not a row counted from the end (-1 is a common padding id)."""
    ids = x.data if isinstance(x, Variable) else x
    if not hasattr(ids, "dtype") or not array_namespace(ids).isdtype(ids.dtype, "integral"):
        raise TypeError(f"embed_id: x must be an integer array of ids, got {getattr(ids, 'dtype', type(ids))}")
    W = as_variable(W)
    if W.ndim != 2:
        raise ValueError(f"embed_id: W must be a 2-D (vocabulary, dim) array, got shape {W.shape}")
    return GetItem(ids, where="embed_id", ids_only=True)(W)  # checked in the op, so that a replay checks too
