"""Optimizers and gradient hooks.

Updates rebind arrays (`p.data = p.data - lr * g`) and never write into an existing array, so they work on
immutable (JAX) and read-only arrays alike. Per-parameter state is keyed by the Parameter object. Hooks run
on the list of parameters that have a gradient, before the update, and replace `p.grad` with a new Variable
rather than changing the gradient array (which may be shared).

Low precision: for float16 and bfloat16 parameters the stateful optimizers keep their state and do their
arithmetic in float32 and round only the step to the parameter's dtype. In float16 the default eps (1e-8)
rounds to 0 and g² underflows below |g| ≈ 2.4e-4, so Adam/AdaGrad would divide by zero (inf, or NaN for a
zero gradient); in bfloat16 Adam's v ← v + 0.001(g² − v) is lost to rounding. The eps values stay DeZero's.
ClipGrad sums squares in float32 (at least) after scaling by the largest |g|, so no norm overflows.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from xdezero.backends import array_namespace, fused
from xdezero.core import Parameter, Variable

__all__ = [
    "Optimizer",
    "SGD",
    "MomentumSGD",
    "AdaGrad",
    "AdaDelta",
    "Adam",
    "WeightDecay",
    "ClipGrad",
    "FreezeParam",
]


def _hyper(owner: str, name: str, value: Any, low: float, high: float, *, low_open=False, high_open=False) -> Any:
    """`value` when it is a real number in the interval, else a ValueError naming it and the interval."""
    fits = isinstance(value, numbers.Real) and not isinstance(value, bool)
    # Written so that NaN, which fails every comparison, never fits.
    fits = fits and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not fits:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{owner}: {name} must be a number in {interval}, got {value!r}")
    return value


def _rate(owner: str, name: str, value: Any) -> Any:
    """A finite non-negative hyper-parameter (a learning rate, an eps, a decay rate)."""
    return _hyper(owner, name, value, 0.0, math.inf, high_open=True)


# (array type, dtype) -> whether it is a float narrower than float32. Keyed by type too: dtypes of two
# libraries may hash alike, and array-api-strict warns when its dtypes are compared with NumPy's.
_NARROW: dict[tuple[type, Any], bool] = {}


def _widened(g: Any) -> tuple[Any, Any]:
    """(namespace, g as float32 when it is float16/bfloat16, else g itself)."""
    xp = array_namespace(g)
    key = (type(g), g.dtype)
    narrow = _NARROW.get(key)
    if narrow is None:
        narrow = _NARROW[key] = xp.finfo(g.dtype).bits < 32
    return xp, (xp.astype(g, xp.float32) if narrow else g)


def _state_store() -> weakref.WeakKeyDictionary:
    # Keyed by the Parameter itself (never id(), which a new object may reuse); weak, so a dropped model's
    # state goes with it.
    return weakref.WeakKeyDictionary()


class Optimizer:
    """Updates the parameters of `target` (a Layer, or anything with `params()`) from their gradients."""

    def __init__(self) -> None:
        self.target = None
        self.hooks: list[Callable[[list[Parameter]], None]] = []

    def setup(self, target: Any) -> Optimizer:
        if not callable(getattr(target, "params", None)):
            raise TypeError(f"{type(self).__name__}.setup: the target must be a Layer or Model, got {target!r}")
        self.target = target
        return self

    def update(self) -> None:
        if self.target is None:
            raise RuntimeError(f"{type(self).__name__}.update: call setup(model) first")
        params = [p for p in self.target.params() if p.grad is not None]
        for hook in self.hooks:
            hook(params)
        for p in params:
            if p.grad is not None:  # a hook (FreezeParam) may have dropped it
                self.update_one(p)

    def update_one(self, param: Parameter) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not implement update_one")

    def add_hook(self, f: Callable[[list[Parameter]], None]) -> None:
        self.hooks.append(f)

    def _state(self, store: weakref.WeakKeyDictionary, param: Parameter, like: Any) -> Any:
        """The state of `param`, first zeros like `like` (the widened gradient: its dtype, library and device)."""
        state = store.get(param)
        if state is None:
            state = store[param] = array_namespace(like).zeros_like(like)
        return state

    @staticmethod
    def _step(xp: Any, param: Parameter, delta: Any) -> None:
        """p ← p + delta, delta rounded to p's dtype (float32 state of a float16/bfloat16 parameter)."""
        param.data = param.data + _rounded(xp, delta, param.data)


def _rounded(xp: Any, delta: Any, p: Any) -> Any:
    """delta in p's dtype (the float32 state of a float16/bfloat16 parameter rounds only here)."""
    return delta if delta.dtype == p.dtype else xp.astype(delta, p.dtype)


# The updates as functions of arrays, returning the new parameter (and state): the portable code, which one
# kernel replaces on CuPy (backends/_fused.py).


def _sgd(xp: Any, p: Any, g: Any, lr: float) -> Any:
    return p - lr * g


def _momentum_sgd(xp: Any, p: Any, g: Any, v: Any, momentum: float, lr: float) -> tuple:
    v = momentum * v - lr * g
    return p + _rounded(xp, v, p), v


def _adam(xp: Any, p: Any, g: Any, m: Any, v: Any, beta1: float, beta2: float, lr: float, eps: float) -> tuple:
    m = m + (1 - beta1) * (g - m)
    v = v + (1 - beta2) * (g * g - v)
    return p + _rounded(xp, -lr * m / (xp.sqrt(v) + eps), p), m, v


class SGD(Optimizer):
    """p ← p − lr·g."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = _rate("SGD", "lr", lr)

    def update_one(self, param: Parameter) -> None:
        p = param.data
        param.data = fused("sgd", _sgd, array_namespace(p), p, param.grad.data, self.lr)


class MomentumSGD(Optimizer):
    """v ← momentum·v − lr·g; p ← p + v."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__()
        self.lr = _rate("MomentumSGD", "lr", lr)
        self.momentum = _hyper("MomentumSGD", "momentum", momentum, 0.0, 1.0, high_open=True)
        self.vs = _state_store()

    def update_one(self, param: Parameter) -> None:
        xp, g = _widened(param.grad.data)
        v = self._state(self.vs, param, g)
        param.data, self.vs[param] = fused("momentum_sgd", _momentum_sgd, xp, param.data, g, v, self.momentum, self.lr)


class AdaGrad(Optimizer):
    """h ← h + g²; p ← p − lr·g / (√h + eps)."""

    def __init__(self, lr: float = 0.001, eps: float = 1e-8) -> None:
        super().__init__()
        self.lr = _rate("AdaGrad", "lr", lr)
        self.eps = _rate("AdaGrad", "eps", eps)
        self.hs = _state_store()

    def update_one(self, param: Parameter) -> None:
        xp, g = _widened(param.grad.data)
        h = self._state(self.hs, param, g) + g * g
        self.hs[param] = h
        self._step(xp, param, -self.lr * g / (xp.sqrt(h) + self.eps))


class AdaDelta(Optimizer):
    """s ← ρs + (1−ρ)g²; Δ = √((d + eps)/(s + eps))·g; d ← ρd + (1−ρ)Δ²; p ← p − Δ."""

    def __init__(self, rho: float = 0.95, eps: float = 1e-6) -> None:
        super().__init__()
        self.rho = _hyper("AdaDelta", "rho", rho, 0.0, 1.0)
        self.eps = _rate("AdaDelta", "eps", eps)
        self.msg = _state_store()
        self.msdx = _state_store()

    def update_one(self, param: Parameter) -> None:
        rho, eps = self.rho, self.eps
        xp, g = _widened(param.grad.data)
        msg = rho * self._state(self.msg, param, g) + (1 - rho) * g * g
        msdx = self._state(self.msdx, param, g)
        dx = xp.sqrt((msdx + eps) / (msg + eps)) * g
        self.msg[param] = msg
        self.msdx[param] = rho * msdx + (1 - rho) * dx * dx
        self._step(xp, param, -dx)


class Adam(Optimizer):
    """m ← m + (1−β₁)(g − m); v ← v + (1−β₂)(g² − v); p ← p − lr·m / (√v + eps), lr = α√(1−β₂ᵗ)/(1−β₁ᵗ)."""

    def __init__(self, alpha: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__()
        self.t = 0
        self.alpha = _rate("Adam", "alpha", alpha)
        self.beta1 = _hyper("Adam", "beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2 = _hyper("Adam", "beta2", beta2, 0.0, 1.0, high_open=True)
        self.eps = _rate("Adam", "eps", eps)
        self.ms = _state_store()
        self.vs = _state_store()

    def update(self) -> None:
        self.t += 1
        super().update()

    @property
    def lr(self) -> float:
        """The bias-corrected step size for the current step count `t`."""
        return self.alpha * math.sqrt(1.0 - self.beta2**self.t) / (1.0 - self.beta1**self.t)

    def update_one(self, param: Parameter) -> None:
        xp, g = _widened(param.grad.data)
        m = self._state(self.ms, param, g)
        v = self._state(self.vs, param, g)
        hyper = (self.beta1, self.beta2, self.lr, self.eps)
        param.data, self.ms[param], self.vs[param] = fused("adam", _adam, xp, param.data, g, m, v, *hyper)


# --- hooks -----------------------------------------------------------------------------------------


class WeightDecay:
    """g ← g + rate·p for each parameter (L2 regularisation), exactly once per parameter."""

    def __init__(self, rate: float) -> None:
        self.rate = _rate("WeightDecay", "rate", rate)

    def __call__(self, params: list[Parameter]) -> None:
        for p in params:
            p.grad = Variable(p.grad.data + self.rate * p.data)


class ClipGrad:
    """Scale all gradients by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the norm of all gradients together."""

    def __init__(self, max_norm: float) -> None:
        self.max_norm = _hyper("ClipGrad", "max_norm", max_norm, 0.0, math.inf, low_open=True)

    def __call__(self, params: list[Parameter]) -> None:
        grads = [_widened(p.grad.data)[1] for p in params]
        grads = [g for g in grads if math.prod(g.shape) > 0]
        if not grads:
            return
        # ‖g‖ = a·√Σ(g/a)² with a = max |g|, summed in float32 at least: no square overflows (float16's do from
        # |g| ≈ 256, float32's from 1.8e19) and no float16 sum of many elements does.
        xp = array_namespace(grads[0])
        a = None
        for g in grads:
            m = xp.maximum(xp.max(g), -xp.min(g))  # max |g| without an |g| array
            a = m if a is None else xp.maximum(a, m)
        # a = 0 (all-zero gradients) or inf/NaN: divide by 1 instead (no 0/0 or inf/inf), the norm comes out right.
        safe_a = xp.where((a > 0) & xp.isfinite(a), a, 1.0)
        total = None
        for g in grads:
            r = g / safe_a
            s = xp.sum(xp.vecdot(r, r)) if r.ndim else r * r  # vecdot: Σr² without an r² array
            total = s if total is None else total + s
        # An infinite gradient gives the norm inf (so the factor 0), as it would unscaled and in torch.
        norm = xp.where(xp.isinf(a), a, safe_a * xp.sqrt(total))
        # No branch on the value (lazy and traced arrays): the factor is clipped at 1 instead.
        scale = xp.clip(self.max_norm / (norm + 1e-6), max=1.0)
        for p in params:
            g = p.grad.data
            p.grad = Variable(g * xp.astype(scale, g.dtype))


class FreezeParam:
    """Leave the given Layers' (or Parameters') parameters unchanged by dropping their gradients."""

    def __init__(self, *layers: Any) -> None:
        frozen: list[Parameter] = []
        for item in layers:
            if isinstance(item, Parameter):
                frozen.append(item)
            elif callable(getattr(item, "params", None)):
                frozen.extend(item.params())
            else:
                raise TypeError(f"FreezeParam takes Layers and Parameters, got {type(item).__name__}")
        self.freeze_params = frozen
        self._frozen_ids = {id(p) for p in frozen}

    def __call__(self, params: Iterable[Parameter]) -> None:
        for p in params:
            if id(p) in self._frozen_ids:
                p.grad = None
