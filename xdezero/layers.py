"""Layers: objects that own Parameters (registered by attribute assignment) and compute with xdezero.functions.

Parameters are created on the host with NumPy's global random generator (so `np.random.seed` makes a model
reproducible) and move to the library and device of the first input a layer sees; `to_cpu`, `to_gpu` and
`to_device` move them explicitly. Weights are saved as NumPy `.npz` files whatever the backend.

A little over 500 lines: the Layer base class with its weights I/O, and DeZero's layer catalogue, which a reader
looks up in one place.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import xdezero.functions as F
from xdezero._config import recorder_slot
from xdezero._files import FileLike, atomic_write, opened, read_entry, read_text, write_npz
from xdezero._geometry import pair
from xdezero.backends import (
    Bits,
    array_namespace,
    device_of,
    dtype_name,
    place,
    to_cpu,
    to_device,
    to_gpu,
    to_host,
    to_library,
)
from xdezero.core import Parameter, Variable

__all__ = ["Layer", "Linear", "Conv2d", "Deconv2d", "RNN", "LSTM", "EmbedID", "BatchNorm", "Parameter", "pair"]


# --- helpers ---------------------------------------------------------------------------------------


def _raw(x: Any) -> Any:
    return x.data if isinstance(x, Variable) else x


def _on_library_of(host: np.ndarray, like: Any) -> Any:
    """The NumPy array `host` as an array of `like`'s library and device (NumPy itself when `like` is None)."""
    if like is None or isinstance(like, np.ndarray):
        return host
    return array_namespace(like).asarray(host, device=device_of(like))


def _size(owner: str, name: str, value: Any) -> int:
    """`value` as an int >= 1, or an error naming the layer, the argument and the value."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{owner}: {name} must be a positive integer, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer (>= 1), got {value}")
    return int(value)


def _weak(x: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(x)
    except TypeError:  # an object without weak reference support counts as already freed
        return lambda: None


def _lazy_parameter(name: str, shape: tuple[int | None, ...], dtype: Any) -> Parameter:
    """A Parameter whose data is created on the first input; `shape` may hold None for the unknown sizes.

    The expected shape and dtype let `load_weights` fill (and validate) it before the first call.
    """
    p = Parameter(None, name=name)
    p.expected_shape = shape
    p.expected_dtype = None if dtype is None else np.dtype(dtype)
    return p


# --- Layer -----------------------------------------------------------------------------------------


class _Structure:
    """A version number of every layer's registered Parameters and sublayers, bumped by any change to any of them."""

    version = 0

    @classmethod
    def changed(cls) -> None:
        cls.version += 1


_structure = _Structure
# Per layer: (the structure's version when walked, [(path, Parameter)], [Parameter]).
_param_lists: weakref.WeakKeyDictionary[Layer, tuple[int, list[tuple[str, Parameter]], list[Parameter]]] = (
    weakref.WeakKeyDictionary()
)


class Layer:
    """A differentiable building block: Parameters and Layers assigned as attributes are its parameters.

    Registration follows assignment order (nested Layers included), so `params()` and weight-file keys are
    stable. A Parameter reachable twice (a shared layer) is yielded once.
    """

    _placed = False  # set once the layer's own parameters have followed its first input
    # Weak references to the last call's inputs and outputs (DeZero's), set by `__call__`.
    inputs: list[Callable[[], Any]]
    outputs: list[Callable[[], Any]]

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})  # attribute names, in insertion order (a dict used as a set)

    def __setattr__(self, name: str, value: Any) -> None:
        registry = self.__dict__.get("_params")
        if registry is None:  # a subclass that skipped Layer.__init__
            Layer.__init__(self)
            registry = self._params
        if isinstance(value, Parameter | Layer):
            registry[name] = None
            _structure.changed()
        elif registry.pop(name, 0) is None:
            _structure.changed()
        object.__setattr__(self, name, value)
        recorder = recorder_slot.get()
        if recorder is not None:
            recorder.attribute_assigned(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self.__dict__.get("_params", {}).pop(name, 0) is None:
            _structure.changed()
        object.__delattr__(self, name)

    def __call__(self, *inputs: Any) -> Variable:
        """Run `forward` on `inputs`; a layer whose forward returns several outputs returns them as a tuple."""
        if not self._placed:
            self._follow_first_input(inputs)
        outputs = self.forward(*inputs)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        object.__setattr__(self, "inputs", [_weak(x) for x in inputs])
        object.__setattr__(self, "outputs", [_weak(y) for y in outputs])
        # Typed for the one output that every layer here has; several come back as the tuple (see the docstring).
        return outputs if len(outputs) > 1 else outputs[0]  # pyright: ignore[reportReturnType, reportGeneralTypeIssues]

    # Gradual signature (`*args: Any, **kwargs: Any`), so a subclass declares its own parameters as an override.
    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """The computation on `inputs` (Variables or arrays): a Variable, or a tuple of them; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def _follow_first_input(self, inputs: tuple[Any, ...]) -> None:
        """Move this layer's own NumPy-created parameters to the library and device of its first input."""
        like = next((_raw(x) for x in inputs if _raw(x) is not None), None)
        if like is None or isinstance(like, np.ndarray) or not hasattr(like, "shape"):
            object.__setattr__(self, "_placed", True)
            return
        for name in self.__dict__.get("_params", ()):
            p = self.__dict__[name]
            if isinstance(p, Parameter) and isinstance(p.data, np.ndarray):
                p.data = _on_library_of(p.data, like)
        object.__setattr__(self, "_placed", True)

    # --- parameters -------------------------------------------------------------------------
    def named_params(self) -> Iterator[tuple[str, Parameter]]:
        """(path, Parameter) pairs, paths joined by '/' (`l1/W`), in registration order."""
        return iter(self._param_list()[0])

    def _param_list(self) -> tuple[list[tuple[str, Parameter]], list[Parameter]]:
        # The walk is kept until some layer anywhere registers or drops a Parameter or a Layer: a training step
        # lists the parameters twice (cleargrads, update), and walking the tree each time cost about as much as
        # a small layer's forward.
        cached = _param_lists.get(self)
        if cached is None or cached[0] != _structure.version:
            named = list(self._named_params("", set()))
            cached = _param_lists[self] = (_structure.version, named, [p for _, p in named])
        return cached[1], cached[2]

    def _named_params(self, prefix: str, seen: set[int]) -> Iterator[tuple[str, Parameter]]:
        seen.add(id(self))
        for name in self.__dict__.get("_params", ()):
            obj = self.__dict__[name]
            key = f"{prefix}/{name}" if prefix else name
            if id(obj) in seen:
                continue
            if isinstance(obj, Layer):
                yield from obj._named_params(key, seen)
            else:
                seen.add(id(obj))
                yield key, obj

    def sublayers(self) -> Iterator[Layer]:
        """This layer and every layer registered under it, each once, in registration order (depth first)."""
        return self._sublayers(set())

    def _sublayers(self, seen: set[int]) -> Iterator[Layer]:
        seen.add(id(self))
        yield self
        for name in self.__dict__.get("_params", ()):
            obj = self.__dict__[name]
            if isinstance(obj, Layer) and id(obj) not in seen:
                yield from obj._sublayers(seen)

    def params(self) -> Iterator[Parameter]:
        """Every Parameter of this layer and its sublayers, each once."""
        return iter(self._param_list()[1])

    def cleargrads(self) -> None:
        """Reset the gradient of every parameter to None."""
        for p in self.params():
            p.cleargrad()

    # DeZero's name for the flattening; kept for code written against it.
    def _flatten_params(self, params_dict: dict[str, Parameter], parent_key: str = "") -> None:
        for key, p in self._named_params(parent_key, set()):
            params_dict[key] = p

    # --- devices ----------------------------------------------------------------------------
    def _move(self, move: Callable[[Any], Any], what: str) -> Layer:
        # Every array is moved before any is assigned: a failure leaves the layer as it was.
        moved: list[tuple[Parameter, Any, Variable | None]] = []
        for key, p in self.named_params():
            try:
                data = None if p.data is None else move(p.data)
                grad = None if p.grad is None else Variable(move(p.grad.data))
            except (RuntimeError, TypeError, ValueError) as e:
                raise type(e)(f"{type(self).__name__}.{what}: cannot move parameter {key!r}: {e}") from e
            moved.append((p, data, grad))
        for p, data, grad in moved:
            p.data = data
            p.grad = grad
        return self

    def to_cpu(self) -> Layer:
        """Move every parameter to the host (CuPy → NumPy; torch/JAX stay themselves, on the CPU)."""
        return self._move(to_cpu, "to_cpu")

    def to_gpu(self) -> Layer:
        """Move every parameter to the GPU (NumPy → CuPy; torch/JAX to their GPU device)."""
        return self._move(to_gpu, "to_gpu")

    def to_device(self, device: Any) -> Layer:
        """Move every parameter (and gradient) to `device` within its own library: a device of the parameters'
        library (`torch.device("cuda:0")`, `array_api_strict.Device("device1")`, ...); 'cpu' and 'gpu' are
        shorthands."""
        return self._move(lambda a: to_device(a, device), "to_device")

    def to_library(self, name: str, device: Any = None) -> Layer:
        """Move every parameter (and gradient) to array library `name` ('numpy', 'torch', 'jax', 'cupy',
        'array_api_strict', 'dask') on `device` (see `xdezero.backends.to_library`), in one call.

        Move a model before its optimizer builds state (momenta stay in the library they were made in)."""
        return self._move(lambda a: to_library(a, name, device), "to_library")

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every parameter's array by its path (`l1/W`), BatchNorm's running statistics included: the arrays
        themselves, in their library and on their device (updates rebind them, so the dict keeps this moment)."""
        state: dict[str, Any] = {}
        for key, p in self.named_params():
            if p.data is None:
                raise ValueError(
                    f"{type(self).__name__}.state_dict: parameter {key!r} has no data yet (its shape comes from the "
                    "first input); call the model on an input first"
                )
            state[key] = p.data
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set every parameter from `state` (as `state_dict` returns it; arrays of any library), each placed in
        its parameter's library and device. Every entry is checked first: a missing or unknown key, another shape
        or dtype is an error naming it, and then nothing changes."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{where}: expected a dict of arrays keyed by parameter path, got {type(state).__name__}")
        staged = _stage(state, dict(self.named_params()), type(self).__name__, where)
        for p, data in staged:
            p.data = data

    def __getstate__(self) -> dict[str, Any]:
        # The weak references to the last call's inputs and outputs do not pickle, and mean nothing elsewhere.
        return {k: v for k, v in self.__dict__.items() if k not in ("inputs", "outputs")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # --- weights on disk --------------------------------------------------------------------
    def save_weights(self, file: FileLike) -> None:
        """Write every parameter to a NumPy `.npz` file (keys like `l1/W`): a path, written atomically (through
        a symlink to its target), or a writable binary file object.

        The model is not moved: each array is copied to the host for writing. A path gets a temporary file in
        the same directory, renamed over the target, so a failure leaves any old file intact. As with `np.savez`,
        `.npz` is appended to a path that lacks it. bfloat16 parameters are written as their bit patterns, with an
        entry naming their dtype, and load back as bfloat16.
        """
        arrays: dict[str, Any] = {}
        narrow: dict[str, str] = {}
        for key, p in self.named_params():
            if p.data is None:
                raise ValueError(
                    f"save_weights: parameter {key!r} has no data yet (its shape comes from the first input); "
                    "call the model on an input before saving"
                )
            host = to_host(p.data)
            if isinstance(host, Bits):
                narrow[key], host = host.dtype, host.bits
            arrays[key] = host
        if narrow:
            arrays[DTYPES_ENTRY] = np.array(json.dumps(narrow))
        if not hasattr(file, "write"):
            file = os.fspath(file)
            file = file if file.endswith(".npz") else file + ".npz"
        atomic_write(file, lambda f: write_npz(f, arrays), "save_weights")

    def load_weights(self, file: FileLike) -> None:
        """Load a `.npz` file written by `save_weights` (or DeZero), a path or a binary file object, into the
        parameters, in place.

        Every entry is checked first: a missing or extra key, a shape or dtype mismatch, or pickled data is an
        error naming the parameter, and then nothing is changed. Arrays go to each parameter's current library
        and device.
        """
        where = f"load_weights({os.fspath(file)!r})" if not hasattr(file, "read") else "load_weights"
        params = dict(self.named_params())
        with opened(file, where, "an .npz weights file") as f, np.load(f, allow_pickle=False) as archive:
            narrow = {}
            if DTYPES_ENTRY + ".npy" in archive.zip.namelist():
                narrow = json.loads(read_text(archive, DTYPES_ENTRY, where, "the dtypes entry"))
            stored = {}
            for key in archive.files:
                if key == DTYPES_ENTRY:
                    continue
                a = read_entry(archive, key, where, f"parameter {key!r}")
                stored[key] = Bits(a, narrow[key]) if key in narrow else a
        for p, data in _stage(stored, params, type(self).__name__, where):
            p.data = data


# The entry of a weights file naming the dtypes that NumPy lacks (bfloat16), stored as bit patterns.
DTYPES_ENTRY = "__dtypes__"


def _stage(stored: dict[str, Any], params: dict[str, Parameter], owner: str, where: str) -> list[tuple[Parameter, Any]]:
    """(parameter, new array) for every parameter, all validated before any is assigned."""
    missing = [k for k in params if k not in stored]
    extra = [k for k in stored if k not in params]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing parameter(s) " + ", ".join(map(repr, missing)))
        if extra:
            parts.append("unknown key(s) " + ", ".join(map(repr, extra)))
        raise ValueError(f"{where}: the file does not match {owner}: " + "; ".join(parts))
    return [(p, _staged_array(stored[key], key, p, where)) for key, p in params.items()]


def _staged_array(a: Any, key: str, p: Parameter, where: str) -> Any:
    """`a` for parameter `key`, validated and placed on the parameter's library and device."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(f"{where}: parameter {key!r} must be an array, got {type(a).__name__}")
    if p.data is not None:
        shape, dtype = tuple(p.data.shape), dtype_name(p.data)
    else:
        shape = getattr(p, "expected_shape", None)
        dtype = getattr(p, "expected_dtype", None)
        dtype = None if dtype is None else dtype.name
    given = dtype_name(a)
    if dtype is None and not given.startswith(("float", "bfloat")):
        raise ValueError(f"{where}: parameter {key!r} must hold floating-point numbers, the file has {given}")
    if dtype is not None and given != dtype:
        raise ValueError(f"{where}: parameter {key!r} has dtype {dtype}, the file has {given}")
    a_shape = tuple(a.shape)
    fits = shape is None or (len(shape) == len(a_shape) and all(s is None or s == n for s, n in zip(shape, a_shape)))
    if not fits:
        expected = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "")
        raise ValueError(f"{where}: parameter {key!r} has shape {expected}), the file has {a_shape}")
    return place(to_host(a), p.data)


# --- layers ----------------------------------------------------------------------------------------


class Linear(Layer):
    """y = x W + b, W of shape (in_size, out_size); in_size is taken from the first input when not given."""

    def __init__(
        self, out_size: int, nobias: bool = False, dtype: Any = np.float32, in_size: int | None = None
    ) -> None:
        super().__init__()
        out_size = _size("Linear", "out_size", out_size)
        in_size = None if in_size is None else _size("Linear", "in_size", in_size)
        self.in_size: int | None = in_size
        self.out_size: int = out_size
        self.dtype: Any = dtype
        self.W: Parameter = _lazy_parameter("W", (in_size, out_size), dtype)
        if in_size is not None:
            self._init_W()
        self.b: Parameter | None = None if nobias else Parameter(np.zeros(out_size, dtype=dtype), name="b")

    def _init_W(self, like: Any = None) -> None:
        n_in, n_out = self.in_size, self.out_size
        W = np.random.randn(n_in, n_out).astype(self.dtype) * math.sqrt(1 / n_in)
        self.W.data = _on_library_of(W, like)

    def forward(self, x: Any) -> Variable:
        """x W + b for x of shape (N, in_size)."""
        if self.W.data is None:
            self.in_size = x.shape[1]
            self._init_W(_raw(x))
        return F.linear(x, self.W, self.b)


class _ConvBase(Layer):
    """The parameters shared by Conv2d and Deconv2d; W's layout is set by `_w_shape`."""

    def __init__(
        self,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        pad: int | tuple[int, int] = 0,
        nobias: bool = False,
        dtype: Any = np.float32,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        out_channels = _size(owner, "out_channels", out_channels)
        in_channels = None if in_channels is None else _size(owner, "in_channels", in_channels)
        self.in_channels: int | None = in_channels
        self.out_channels: int = out_channels
        self.kernel_size: int | tuple[int, int] = kernel_size
        self.stride: int | tuple[int, int] = stride
        self.pad: int | tuple[int, int] = pad
        self.dtype: Any = dtype
        self._kernel = pair(kernel_size, f"{owner}: kernel_size", minimum=1)
        self.W: Parameter = _lazy_parameter("W", self._w_shape(in_channels), dtype)
        if in_channels is not None:
            self._init_W()
        self.b: Parameter | None = None if nobias else Parameter(np.zeros(out_channels, dtype=dtype), name="b")

    def _w_shape(self, in_channels: int | None) -> tuple[int | None, ...]:
        raise NotImplementedError

    def _init_W(self, like: Any = None) -> None:
        kh, kw = self._kernel
        scale = math.sqrt(1 / (self.in_channels * kh * kw))
        W = np.random.randn(*self._w_shape(self.in_channels)).astype(self.dtype) * scale
        self.W.data = _on_library_of(W, like)

    def _prepare(self, x: Any) -> None:
        if self.W.data is None:
            self.in_channels = x.shape[1]
            self._init_W(_raw(x))


class Conv2d(_ConvBase):
    """2-D convolution of NCHW inputs; W of shape (out_channels, in_channels, kh, kw)."""

    def _w_shape(self, in_channels: int | None) -> tuple[int | None, ...]:
        return (self.out_channels, in_channels, *self._kernel)

    def forward(self, x: Any) -> Variable:
        """The convolution of x (N, C, H, W) with W, plus b."""
        self._prepare(x)
        return F.conv2d(x, self.W, self.b, self.stride, self.pad)


class Deconv2d(_ConvBase):
    """2-D transposed convolution of NCHW inputs; W of shape (in_channels, out_channels, kh, kw)."""

    def _w_shape(self, in_channels: int | None) -> tuple[int | None, ...]:
        return (in_channels, self.out_channels, *self._kernel)

    def forward(self, x: Any) -> Variable:
        """The transposed convolution of x (N, C, H, W) with W, plus b."""
        self._prepare(x)
        return F.deconv2d(x, self.W, self.b, self.stride, self.pad)


class RNN(Layer):
    """h' = tanh(x W_x + b + h W_h), keeping h between calls until `reset_state()`."""

    def __init__(self, hidden_size: int, in_size: int | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        hidden_size = _size("RNN", "hidden_size", hidden_size)
        self.x2h: Linear = Linear(hidden_size, in_size=in_size, dtype=dtype)
        # Created with the sizes known, as in DeZero: lazily (at the second step) when in_size is not given,
        # so that the weights are drawn in DeZero's order.
        self.h2h: Linear = Linear(
            hidden_size, in_size=None if in_size is None else hidden_size, nobias=True, dtype=dtype
        )
        self.h: Variable | None = None

    def reset_state(self) -> None:
        """Forget the hidden state: the next step starts a new sequence."""
        self.h = None

    def forward(self, x: Any) -> Variable:
        """One time step: the new hidden state h, kept for the next call."""
        a = self.x2h(x)
        if self.h is not None:
            a = a + self.h2h(self.h)
        self.h = F.tanh(a)
        return self.h


class LSTM(Layer):
    """Long short-term memory: gates f, i, o = σ(x W + h U + b), u = tanh(…); c' = f c + i u; h' = o tanh(c')."""

    # The gates' Linear layers, registered by `setattr` in `__init__` (x2f: input to gate f, h2f: h to gate f).
    x2f: Linear
    x2i: Linear
    x2o: Linear
    x2u: Linear
    h2f: Linear
    h2i: Linear
    h2o: Linear
    h2u: Linear

    def __init__(self, hidden_size: int, in_size: int | None = None, dtype: Any = np.float32) -> None:
        super().__init__()
        H = _size("LSTM", "hidden_size", hidden_size)
        for gate in "fiou":
            setattr(self, f"x2{gate}", Linear(H, in_size=in_size, dtype=dtype))
        for gate in "fiou":
            setattr(self, f"h2{gate}", Linear(H, in_size=H, nobias=True, dtype=dtype))
        self.reset_state()

    def reset_state(self) -> None:
        """Forget the hidden and cell states: the next step starts a new sequence."""
        self.h: Variable | None = None
        self.c: Variable | None = None

    def forward(self, x: Any) -> Variable:
        """One time step: the new hidden state h (the cell state c is kept too, for the next call)."""
        f, i, o, u = (getattr(self, f"x2{g}")(x) for g in "fiou")
        if self.h is not None:
            f = f + self.h2f(self.h)
            i = i + self.h2i(self.h)
            o = o + self.h2o(self.h)
            u = u + self.h2u(self.h)
        f, i, o, u = F.sigmoid(f), F.sigmoid(i), F.sigmoid(o), F.tanh(u)
        c = i * u if self.c is None else f * self.c + i * u
        self.h = o * F.tanh(c)
        self.c = c
        return self.h


class EmbedID(Layer):
    """y = W[x]: rows of W (in_size, out_size) picked by integer ids."""

    def __init__(self, in_size: int, out_size: int, dtype: Any = np.float32) -> None:
        super().__init__()
        in_size, out_size = _size("EmbedID", "in_size", in_size), _size("EmbedID", "out_size", out_size)
        self.W: Parameter = Parameter(np.random.randn(in_size, out_size).astype(dtype), name="W")

    def forward(self, x: Any) -> Variable:
        """The rows of W picked by the integer ids x."""
        return F.embed_id(x, self.W)


class BatchNorm(Layer):
    """Batch normalization over axis 0 (and the spatial axes of NCHW inputs), with running statistics."""

    def __init__(self, decay: float = 0.9, eps: float = 2e-5) -> None:
        super().__init__()
        # `not a <= x <= b` is also true for NaN.
        if not isinstance(decay, numbers.Real) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"BatchNorm: decay must be a number in [0, 1], got {decay!r}")
        if not isinstance(eps, numbers.Real) or not 0.0 <= eps < math.inf:
            raise ValueError(f"BatchNorm: eps must be a finite number >= 0, got {eps!r}")
        self.decay: float = decay
        self.eps: float = eps
        # Running statistics are Parameters (as in DeZero) so they are saved, loaded and moved with the rest;
        # they never get a gradient, so optimizers leave them alone.
        self.avg_mean: Parameter = _lazy_parameter("avg_mean", (None,), None)
        self.avg_var: Parameter = _lazy_parameter("avg_var", (None,), None)
        self.gamma: Parameter = _lazy_parameter("gamma", (None,), None)
        self.beta: Parameter = _lazy_parameter("beta", (None,), None)

    def _init_params(self, x: Any) -> None:
        xp = array_namespace(x)
        D, dtype, device = x.shape[1], x.dtype, device_of(x)
        if self.avg_mean.data is None:
            self.avg_mean.data = xp.zeros((D,), dtype=dtype, device=device)
        if self.avg_var.data is None:
            self.avg_var.data = xp.ones((D,), dtype=dtype, device=device)
        if self.gamma.data is None:
            self.gamma.data = xp.ones((D,), dtype=dtype, device=device)
        if self.beta.data is None:
            self.beta.data = xp.zeros((D,), dtype=dtype, device=device)

    def forward(self, x: Any) -> Variable:
        """γ x̂ + β, x̂ normalized by the batch's statistics (training) or the running ones (test mode)."""
        self._init_params(_raw(x))
        # F.batch_norm rebinds the running statistics' `.data` (never writes into the arrays) in train mode.
        return F.batch_norm(x, self.gamma, self.beta, self.avg_mean, self.avg_var, self.decay, self.eps)
