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
from typing import Any, Self

from xdezero._config import recorder_slot
from xdezero.backends import array_namespace, dtype_name, fused, place, to_host
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


def _hyper(
    owner: str, name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> Any:
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


def _state_store() -> weakref.WeakKeyDictionary[Parameter, Any]:
    # Keyed by the Parameter itself (never id(), which a new object may reuse); weak, so a dropped model's
    # state goes with it.
    return weakref.WeakKeyDictionary()


class Optimizer:
    """Updates the parameters of `target` (a Layer, or anything with `params()`) from their gradients.

    `state_dict()` holds what a resumed run needs: the numbers named in `hyper_parameters` (step counts
    included), the per-parameter arrays of the tables named in `state_tables` keyed by parameter path, and the
    numbers of the hooks."""

    hyper_parameters: tuple[str, ...] = ()
    state_tables: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.target: Any = None  # the Layer (or anything with `params()`) given to `setup`
        self.hooks: list[Callable[[list[Parameter]], None]] = []

    def setup(self, target: Any) -> Self:
        """Optimize the parameters of `target` (a Layer or Model); returns this optimizer, for chaining."""
        if not callable(getattr(target, "params", None)):
            raise TypeError(f"{type(self).__name__}.setup: the target must be a Layer or Model, got {target!r}")
        self.target = target
        return self

    def update(self) -> None:
        """Run the hooks on the parameters that have a gradient, then update each of them one step."""
        if self.target is None:
            raise RuntimeError(f"{type(self).__name__}.update: call setup(model) first")
        recorder = recorder_slot.get()
        if recorder is not None:
            return recorder.optimizer_update(self)
        self.apply_update()

    def apply_update(self) -> None:
        """`update()` itself (what a recorder runs when it records one)."""
        params = [p for p in self.target.params() if p.grad is not None]
        for hook in self.hooks:
            hook(params)
        for p in params:
            if p.grad is not None:  # a hook (FreezeParam) may have dropped it
                self.update_one(p)

    def update_one(self, param: Parameter) -> None:
        """Update one parameter from its gradient; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement update_one")

    def add_hook(self, f: Callable[[list[Parameter]], None]) -> None:
        """Call `f(params)` on the parameters that have a gradient before every update (WeightDecay, ClipGrad)."""
        self.hooks.append(f)

    def _state(self, store: weakref.WeakKeyDictionary[Parameter, Any], param: Parameter, like: Any) -> Any:
        """The state of `param`, first zeros like `like` (the widened gradient: its dtype, library and device)."""
        state = store.get(param)
        if state is None:
            state = store[param] = array_namespace(like).zeros_like(like)
        return state

    # --- state ------------------------------------------------------------------------------
    def _named_params(self, what: str) -> dict[str, Parameter]:
        if self.target is None:
            raise RuntimeError(
                f"{type(self).__name__}.{what}: call setup(model) first (state is keyed by parameter path)"
            )
        named = getattr(self.target, "named_params", None)
        if not callable(named):
            raise TypeError(f"{type(self).__name__}.{what}: the target must be a Layer (its parameters have paths)")
        return dict(named())

    def state_dict(self) -> dict[str, Any]:
        """{"type", "hyper" (numbers), "state" (table → parameter path → array), "hooks" (each hook's numbers)}."""
        paths = {id(p): key for key, p in self._named_params("state_dict").items()}
        tables = {}
        for table in self.state_tables:
            store = getattr(self, table)
            tables[table] = {paths[id(p)]: a for p, a in store.items() if id(p) in paths}
        return {
            "type": type(self).__name__,
            "hyper": {name: getattr(self, name) for name in self.hyper_parameters},
            "state": tables,
            "hooks": [_hook_state(hook) for hook in self.hooks],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (arrays of any library, placed with their parameters). Everything is
        checked first: another optimizer, other hooks, an unknown parameter path, a shape or dtype that does not
        fit its parameter is an error naming it, and then nothing changes."""
        where = f"{type(self).__name__}.load_state_dict"
        params = self._named_params("load_state_dict")
        try:
            kind, hyper, tables, hooks = state["type"], dict(state["hyper"]), dict(state["state"]), list(state["hooks"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: not a state that state_dict returned ({type(e).__name__}: {e})") from None
        if kind != type(self).__name__:
            raise ValueError(f"{where}: the state is {kind}'s, this optimizer is {type(self).__name__}")
        if set(hyper) != set(self.hyper_parameters) or set(tables) != set(self.state_tables):
            raise ValueError(
                f"{where}: the state holds {sorted(hyper)} and tables {sorted(tables)}; {kind} has "
                f"{sorted(self.hyper_parameters)} and tables {sorted(self.state_tables)}"
            )
        staged_tables = {name: _staged_state(where, name, dict(tables[name]), params) for name in self.state_tables}
        mine = [_hook_state(hook) for hook in self.hooks]
        if [h.get("type") for h in hooks] != [h["type"] for h in mine]:
            raise ValueError(
                f"{where}: the state's hooks are {[h.get('type') for h in hooks]}, this optimizer's are "
                f"{[h['type'] for h in mine]}; add the same hooks (add_hook) before loading"
            )
        for name, value in hyper.items():
            _number_like(where, name, value, getattr(self, name))
        for saved, hook in zip(hooks, self.hooks):
            for name in getattr(hook, "hyper_parameters", ()):
                _number_like(where, f"{type(hook).__name__}.{name}", saved.get(name), getattr(hook, name))
        # Everything fits: apply.
        for name, value in hyper.items():
            setattr(self, name, value)
        for saved, hook in zip(hooks, self.hooks):
            for name in getattr(hook, "hyper_parameters", ()):
                setattr(hook, name, saved[name])
        for name, staged in staged_tables.items():
            store = getattr(self, name)
            store.clear()
            store.update(staged)

    def __getstate__(self) -> dict[str, Any]:
        # The state tables are weak dictionaries keyed by Parameter, which do not pickle: stored as pairs.
        state = dict(self.__dict__)
        for name in self.state_tables:
            state[name] = list(state[name].items())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in self.state_tables:
            store = _state_store()
            store.update(state[name])
            state[name] = store
        self.__dict__.update(state)

    @staticmethod
    def _step(xp: Any, param: Parameter, delta: Any) -> None:
        """p ← p + delta, delta rounded to p's dtype (float32 state of a float16/bfloat16 parameter)."""
        param.data = param.data + _rounded(xp, delta, param.data)


def _hook_state(hook: Any) -> dict[str, Any]:
    """A hook's type and the numbers it declares in `hyper_parameters` (a plain function: its name only)."""
    kind = getattr(hook, "__qualname__", None) or type(hook).__name__  # a function's own name, else its class's
    return {"type": kind, **{name: getattr(hook, name) for name in getattr(hook, "hyper_parameters", ())}}


def _number_like(where: str, name: str, value: Any, current: Any) -> None:
    """A saved hyper-parameter must be a number (an int where the current value is one: a step count)."""
    wanted = int if isinstance(current, int) and not isinstance(current, bool) else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise ValueError(f"{where}: {name} must be {'an integer' if wanted is int else 'a number'}, got {value!r}")


def _staged_state(where: str, table: str, saved: dict[str, Any], params: dict[str, Parameter]) -> dict[Parameter, Any]:
    """{Parameter: array} of one state table, each array checked against its parameter and placed with it."""
    unknown = sorted(set(saved) - set(params))
    if unknown:
        raise ValueError(f"{where}: table {table!r} holds state of parameters this model lacks: {unknown}")
    staged: dict[Parameter, Any] = {}
    for key, a in saved.items():
        p = params[key]
        if p.data is None:
            raise ValueError(f"{where}: parameter {key!r} has no data yet; call the model on an input first")
        if not hasattr(a, "shape") or tuple(a.shape) != tuple(p.data.shape):
            shape = getattr(a, "shape", type(a).__name__)
            raise ValueError(f"{where}: {table}[{key!r}] has shape {shape}, the parameter {tuple(p.data.shape)}")
        narrow = array_namespace(p.data).finfo(p.data.dtype).bits < 32  # its state is float32 (see _widened)
        wanted = "float32" if narrow else dtype_name(p.data)
        if dtype_name(a) != wanted:
            raise ValueError(f"{where}: {table}[{key!r}] has dtype {dtype_name(a)}, this parameter's state is {wanted}")
        staged[p] = place(to_host(a), p.data)
    return staged


def _rounded(xp: Any, delta: Any, p: Any) -> Any:
    """delta in p's dtype (the float32 state of a float16/bfloat16 parameter rounds only here)."""
    return delta if delta.dtype == p.dtype else xp.astype(delta, p.dtype)


# The updates as functions of arrays, returning the new parameter (and state): the portable code, which one
# kernel replaces on CuPy (backends/_fused.py).


def _sgd(xp: Any, p: Any, g: Any, lr: float) -> Any:
    return p - lr * g


def _momentum_sgd(xp: Any, p: Any, g: Any, v: Any, momentum: float, lr: float) -> tuple[Any, Any]:
    v = momentum * v - lr * g
    return p + _rounded(xp, v, p), v


def _adam(
    xp: Any, p: Any, g: Any, m: Any, v: Any, beta1: float, beta2: float, lr: float, eps: float
) -> tuple[Any, Any, Any]:
    m = m + (1 - beta1) * (g - m)
    v = v + (1 - beta2) * (g * g - v)
    return p + _rounded(xp, -lr * m / (xp.sqrt(v) + eps), p), m, v


class SGD(Optimizer):
    """p ← p − lr·g."""

    hyper_parameters: tuple[str, ...] = ("lr",)

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr: float = _rate("SGD", "lr", lr)

    def update_one(self, param: Parameter) -> None:
        """p ← p − lr·g."""
        p = param.data
        param.data = fused("sgd", _sgd, array_namespace(p), p, param.grad.data, self.lr)


class MomentumSGD(Optimizer):
    """v ← momentum·v − lr·g; p ← p + v."""

    hyper_parameters: tuple[str, ...] = ("lr", "momentum")
    state_tables: tuple[str, ...] = ("vs",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__()
        self.lr: float = _rate("MomentumSGD", "lr", lr)
        self.momentum: float = _hyper("MomentumSGD", "momentum", momentum, 0.0, 1.0, high_open=True)
        self.vs: weakref.WeakKeyDictionary[Parameter, Any] = _state_store()

    def update_one(self, param: Parameter) -> None:
        """v ← momentum·v − lr·g; p ← p + v."""
        xp, g = _widened(param.grad.data)
        v = self._state(self.vs, param, g)
        param.data, self.vs[param] = fused("momentum_sgd", _momentum_sgd, xp, param.data, g, v, self.momentum, self.lr)


class AdaGrad(Optimizer):
    """h ← h + g²; p ← p − lr·g / (√h + eps)."""

    hyper_parameters: tuple[str, ...] = ("lr", "eps")
    state_tables: tuple[str, ...] = ("hs",)

    def __init__(self, lr: float = 0.001, eps: float = 1e-8) -> None:
        super().__init__()
        self.lr: float = _rate("AdaGrad", "lr", lr)
        self.eps: float = _rate("AdaGrad", "eps", eps)
        self.hs: weakref.WeakKeyDictionary[Parameter, Any] = _state_store()

    def update_one(self, param: Parameter) -> None:
        """h ← h + g²; p ← p − lr·g / (√h + eps)."""
        xp, g = _widened(param.grad.data)
        h = self._state(self.hs, param, g) + g * g
        self.hs[param] = h
        self._step(xp, param, -self.lr * g / (xp.sqrt(h) + self.eps))


class AdaDelta(Optimizer):
    """s ← ρs + (1−ρ)g²; Δ = √((d + eps)/(s + eps))·g; d ← ρd + (1−ρ)Δ²; p ← p − Δ."""

    hyper_parameters: tuple[str, ...] = ("rho", "eps")
    state_tables: tuple[str, ...] = ("msg", "msdx")

    def __init__(self, rho: float = 0.95, eps: float = 1e-6) -> None:
        super().__init__()
        self.rho: float = _hyper("AdaDelta", "rho", rho, 0.0, 1.0)
        self.eps: float = _rate("AdaDelta", "eps", eps)
        self.msg: weakref.WeakKeyDictionary[Parameter, Any] = _state_store()
        self.msdx: weakref.WeakKeyDictionary[Parameter, Any] = _state_store()

    def update_one(self, param: Parameter) -> None:
        """One AdaDelta step of `param` (see the class docstring)."""
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

    hyper_parameters: tuple[str, ...] = ("alpha", "beta1", "beta2", "eps", "t")
    state_tables: tuple[str, ...] = ("ms", "vs")

    def __init__(self, alpha: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__()
        self.t: int = 0
        self.alpha: float = _rate("Adam", "alpha", alpha)
        self.beta1: float = _hyper("Adam", "beta1", beta1, 0.0, 1.0, high_open=True)
        self.beta2: float = _hyper("Adam", "beta2", beta2, 0.0, 1.0, high_open=True)
        self.eps: float = _rate("Adam", "eps", eps)
        self.ms: weakref.WeakKeyDictionary[Parameter, Any] = _state_store()
        self.vs: weakref.WeakKeyDictionary[Parameter, Any] = _state_store()

    def update(self) -> None:
        """Count the step (t ← t + 1), then update every parameter that has a gradient."""
        self.t += 1
        super().update()

    @property
    def lr(self) -> float:
        """The bias-corrected step size for the current step count `t`."""
        unbiased = 1.0 - self.beta2**self.t
        root = math.sqrt(unbiased) if isinstance(unbiased, float) else unbiased**0.5  # a traced count: see tapes
        return self.alpha * root / (1.0 - self.beta1**self.t)

    def update_one(self, param: Parameter) -> None:
        """One Adam step of `param` with the step size `lr` of the current `t`."""
        xp, g = _widened(param.grad.data)
        m = self._state(self.ms, param, g)
        v = self._state(self.vs, param, g)
        hyper = (self.beta1, self.beta2, self.lr, self.eps)
        param.data, self.ms[param], self.vs[param] = fused("adam", _adam, xp, param.data, g, m, v, *hyper)


# --- hooks -----------------------------------------------------------------------------------------


class WeightDecay:
    """g ← g + rate·p for each parameter (L2 regularisation), exactly once per parameter."""

    hyper_parameters: tuple[str, ...] = ("rate",)

    def __init__(self, rate: float) -> None:
        self.rate: float = _rate("WeightDecay", "rate", rate)

    def __call__(self, params: list[Parameter]) -> None:
        """Add rate·p to each parameter's gradient."""
        for p in params:
            p.grad = Variable(p.grad.data + self.rate * p.data)


class ClipGrad:
    """Scale all gradients by min(1, max_norm / (‖g‖ + 1e-6)), ‖g‖ the norm of all gradients together."""

    hyper_parameters: tuple[str, ...] = ("max_norm",)

    def __init__(self, max_norm: float) -> None:
        self.max_norm: float = _hyper("ClipGrad", "max_norm", max_norm, 0.0, math.inf, low_open=True)

    def __call__(self, params: list[Parameter]) -> None:
        """Scale the gradients of `params` together so that their joint norm is at most max_norm."""
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
        """Drop the gradients of the frozen parameters."""
        for p in params:
            if id(p) in self._frozen_ids:
                p.grad = None
