"""The define-by-run engine: Variable, Function, and the heap-ordered backward pass.

The arithmetic behind Variable's operators (and the broadcast/sum-to pair that undoes broadcasting)
lives here too, as in DeZero, so that the engine needs nothing above it at import time.
"""

from __future__ import annotations

import heapq
import itertools
import math
import numbers
import threading
import weakref
from typing import Any

import numpy as np

from xdezero._config import enable_backprop_flag, using_config
from xdezero.backends import array_namespace, as_array_data, describe, memory_key, to_cpu, to_device, to_gpu
from xdezero.backends._namespace import NAMESPACES as _NAMESPACES

__all__ = [
    "Variable",
    "Parameter",
    "Function",
    "as_variable",
    "as_array",
    "add",
    "sub",
    "rsub",
    "mul",
    "div",
    "rdiv",
    "neg",
    "pow",
    "sum_to",
    "broadcast_to",
]


def _is_scalar(x: Any) -> bool:
    """A Python or NumPy number used as an operand: it takes the array's dtype instead of forcing float64."""
    t = type(x)
    return t is float or t is int or isinstance(x, numbers.Number)


def _number(c: Any) -> Any:
    """A scalar operand as a Python number (NumPy scalars too, so that every library accepts it)."""
    return c.item() if isinstance(c, np.generic) else c


# Serialises accumulation into `.grad` of Variables that outlive a backward pass (leaves, retained gradients),
# so that two threads running backward into one leaf lose no update. Uncontended, it costs well under 1% of a
# backward step.
_grad_lock = threading.Lock()


class Variable:
    """A node of the graph holding an array of any array-API library, its gradient and its creator."""

    __slots__ = ("_data", "name", "grad", "creator", "generation", "_index", "__weakref__", "__dict__")
    __array_priority__ = 200
    __array_ufunc__ = None  # makes `ndarray op Variable` defer to Variable's reflected operator

    def __init__(self, data: Any, name: str | None = None) -> None:
        self._data = data if type(data) is np.ndarray and data.dtype.kind in "fiubc" else as_array_data(data)
        self.name = name
        self.grad: Variable | None = None
        self.creator: Function | None = None
        self.generation = 0
        self._index = 0  # position among its creator's outputs

    # --- data and its description -------------------------------------------------------------
    @property
    def data(self) -> Any:
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = as_array_data(value)

    @property
    def shape(self) -> tuple:
        return tuple(self._data.shape)

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return math.prod(self._data.shape)

    @property
    def dtype(self) -> Any:
        return self._data.dtype

    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of unsized object: the Variable holds a 0-d array")
        return self._data.shape[0]

    def __repr__(self) -> str:
        if self._data is None:
            return "variable(None)"
        return "variable(" + str(self._data).replace("\n", "\n" + " " * 9) + ")"

    # --- graph --------------------------------------------------------------------------------
    def cleargrad(self) -> None:
        self.grad = None

    def unchain(self) -> None:
        """Make this Variable a leaf: backward stops here, also for functions that recorded it and were called
        before it was freed."""
        if self.creator is not None:
            self.creator._sever(self._index)
            self.creator = None

    def unchain_backward(self) -> None:
        """Cut the graph behind this variable (iteratively) so that it can be freed."""
        stack = [self.creator] if self.creator is not None else []
        seen = set(stack)
        while stack:
            f = stack.pop()
            for i, x in enumerate(f._current_inputs()):
                creator, index = (x.creator, x._index) if x is not None else f._recorded_source(i)
                if x is not None:
                    x.unchain()
                elif creator is not None:
                    creator._sever(index)  # the freed input's other consumers must stop there too
                if creator is not None and creator not in seen:
                    seen.add(creator)
                    stack.append(creator)
            if not f.keeps_inputs:
                f._sources = [(None, 0)] * len(f._sources)

    def backward(self, retain_grad: bool = False, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`.

        Functions run in decreasing generation order (a heap with an insertion counter, so the order is
        deterministic); intermediate gradients are kept only with `retain_grad=True`; with
        `create_graph=True` the backward pass is itself recorded, for higher-order derivatives.
        """
        if self._data is None:
            raise ValueError("backward() called on a Variable with no data")
        if self.grad is None:
            self.grad = Variable(array_namespace(self._data).ones_like(self._data))
        if self.creator is None:
            return
        with using_config("enable_backprop", create_graph):
            _run_backward(self, retain_grad, create_graph)

    # --- devices ------------------------------------------------------------------------------
    def to_cpu(self) -> Variable:
        self._data = to_cpu(self._data)
        return self

    def to_gpu(self) -> Variable:
        self._data = to_gpu(self._data)
        return self

    def to_device(self, device: Any) -> Variable:
        self._data = to_device(self._data, device)
        return self

    # --- shape methods (their Functions live in xdezero.functions, above this module) ----------
    def reshape(self, *shape: int) -> Variable:
        from xdezero.functions import reshape

        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return reshape(self, shape)

    def transpose(self, *axes: int) -> Variable:
        from xdezero.functions import transpose

        if len(axes) == 0:
            axes = None
        elif len(axes) == 1 and isinstance(axes[0], tuple | list | type(None)):
            axes = axes[0]
        return transpose(self, axes)

    @property
    def T(self) -> Variable:
        return self.transpose()

    def sum(self, axis: int | tuple | None = None, keepdims: bool = False) -> Variable:
        from xdezero.functions import sum

        return sum(self, axis, keepdims)

    def __getitem__(self, slices: Any) -> Variable:
        from xdezero.functions import get_item

        return get_item(self, slices)

    def __matmul__(self, other: Any) -> Variable:
        from xdezero.functions import matmul

        return matmul(self, other)

    def __rmatmul__(self, other: Any) -> Variable:
        from xdezero.functions import matmul

        return matmul(other, self)

    # --- arithmetic ---------------------------------------------------------------------------
    def __add__(self, other: Any) -> Variable:
        return add(self, other)

    def __radd__(self, other: Any) -> Variable:
        return add(other, self)

    def __sub__(self, other: Any) -> Variable:
        return sub(self, other)

    def __rsub__(self, other: Any) -> Variable:
        return sub(other, self)

    def __mul__(self, other: Any) -> Variable:
        return mul(self, other)

    def __rmul__(self, other: Any) -> Variable:
        return mul(other, self)

    def __truediv__(self, other: Any) -> Variable:
        return div(self, other)

    def __rtruediv__(self, other: Any) -> Variable:
        return div(other, self)

    def __neg__(self) -> Variable:
        return neg(self)

    def __pos__(self) -> Variable:
        return self

    def __pow__(self, other: Any) -> Variable:
        return pow(self, other)

    def __rpow__(self, other: Any) -> Variable:
        return _rpow(other, self)


class Parameter(Variable):
    """A Variable that a Layer registers as one of its parameters."""


def as_variable(obj: Any) -> Variable:
    """`obj` if it is a Variable, else a new Variable wrapping the array `obj`."""
    if isinstance(obj, Variable):
        return obj
    return Variable(obj)


def as_array(x: Any, array_module: Any = np) -> Any:
    """DeZero's helper: Python and NumPy scalars become 0-d arrays of `array_module` (NumPy by default)."""
    if np.isscalar(x):
        return array_module.asarray(x)
    return x


def _run_backward(start: Variable, retain_grad: bool, create_graph: bool) -> None:
    # Gradients for function outputs wait here (keyed by function) until the function is popped, so an
    # intermediate Variable that nobody holds any more still passes its gradient on. The loop is the engine's
    # hot path: it is kept flat on purpose.
    pending: dict[Function, list] = {}
    heap: list = []
    heappush, heappop = heapq.heappush, heapq.heappop
    counter = itertools.count()
    handed_out: set = set()  # memory keys of the arrays already given to some Variable's .grad

    def own(gx: Variable) -> Variable:
        # A gradient assigned to `.grad` must not share memory with another `.grad` (reshape and transpose
        # give views), so that editing one in place cannot change another.
        key = memory_key(gx._data)
        if key in handed_out:
            gx = _copy(gx)
            key = memory_key(gx._data)
        handed_out.add(key)
        return gx

    def accumulate(total: Variable, gx: Variable) -> Variable:
        return total + gx if create_graph else Variable(total._data + gx._data)

    first = start.creator
    pending[first] = [None] * len(first.outputs)
    pending[first][start._index] = start.grad
    heap.append((-first.generation, next(counter), first))
    handed_out.add(memory_key(start.grad._data))

    while heap:
        f = heappop(heap)[2]
        gys = pending.pop(f)
        if retain_grad or len(gys) > 1:
            outputs = [ref() for ref in f.outputs]
            if retain_grad:
                with _grad_lock:
                    for y, gy in zip(outputs, gys):
                        if y is not None and gy is not None and y is not start:
                            y.grad = own(gy)
            gys = [_zeros_like(y) if gy is None and y is not None else gy for y, gy in zip(outputs, gys)]
        gxs = f.backward(*gys)
        if type(gxs) is not tuple:
            gxs = tuple(gxs) if isinstance(gxs, list) else (gxs,)
        inputs = f._current_inputs()
        if len(gxs) != len(inputs):
            raise ValueError(f"{type(f).__name__}.backward returned {len(gxs)} gradients for {len(inputs)} inputs")
        for i, x in enumerate(inputs):
            gx = gxs[i]
            if gx is None:
                continue
            if not isinstance(gx, Variable):
                gx = Variable(gx)
            # The live graph wins (the variable may have been unchained since); a freed one uses the record.
            if x is not None:
                creator, index = x.creator, x._index
                dtype = x._data.dtype
                if gx._data.dtype != dtype and _is_inexact(x._data):  # inputs of different dtypes met
                    gx = _cast(gx, dtype)
            else:
                creator, index = f._recorded_source(i)
                if creator is None or index in creator._severed:
                    continue
            if creator is None:
                with _grad_lock:
                    x.grad = own(gx) if x.grad is None else accumulate(x.grad, gx)
                continue
            slots = pending.get(creator)
            if slots is None:
                slots = pending[creator] = [None] * len(creator.outputs)
                heappush(heap, (-creator.generation, next(counter), creator))
            previous = slots[index]
            slots[index] = gx if previous is None else accumulate(previous, gx)
    if not retain_grad:
        start.grad = None


def _zeros_like(y: Variable) -> Variable:
    return Variable(array_namespace(y._data).zeros_like(y._data))


class Function:
    """An operation of the graph: `forward` computes on raw arrays with `self.xp`, the namespace resolved once
    for the call; `backward` computes on Variables, so that it can itself be differentiated."""

    # Ops whose backward reads no input *data* set this False, so intermediate inputs can be freed early.
    keeps_inputs = True
    # Indices of outputs that were unchained: backward must not come back here through them.
    _severed: frozenset | set = frozenset()

    def __call__(self, *inputs: Any) -> Any:
        # The engine's hot path: kept flat on purpose (it runs once per op, forward and backward).
        if len(inputs) == 1:
            x = inputs[0]
            if not isinstance(x, Variable):
                x = Variable(x)
            inputs = [x]
            data = x._data
            self.xp = _NAMESPACES.get(type(data)) or array_namespace(data)
            ys = self.forward(data)
        else:
            inputs = [x if isinstance(x, Variable) else Variable(x) for x in inputs]
            xs = [x._data for x in inputs]
            self.xp = array_namespace(*xs)
            ys = self.forward(*xs)
        if type(ys) is not tuple:
            y = Variable(ys)
            if enable_backprop_flag.get():
                self._record(inputs, [y])
            return y
        outputs = [Variable(y) for y in ys]
        if enable_backprop_flag.get():
            self._record(inputs, outputs)
        return outputs

    def _record(self, inputs: list, outputs: list) -> None:
        """Link this call into the graph: outputs point here, inputs are kept (or weakly referenced)."""
        self.generation = generation = max([x.generation for x in inputs]) if len(inputs) > 1 else inputs[0].generation
        for i, y in enumerate(outputs):
            y.creator = self
            y.generation = generation + 1
            y._index = i
        if self.keeps_inputs:
            self.inputs = inputs
        else:
            self._input_refs = [weakref.ref(x) for x in inputs]
            self._sources = [(x.creator, x._index) for x in inputs]
        self.outputs = [weakref.ref(y) for y in outputs]

    def _current_inputs(self) -> list:
        """The input Variables, None for one that was freed (only possible when `keeps_inputs` is False)."""
        return self.inputs if self.keeps_inputs else [ref() for ref in self._input_refs]

    def _recorded_source(self, i: int) -> tuple:
        """(creator, output index) of input i as recorded at call time (used once that input is freed)."""
        return self._sources[i]

    def _sever(self, index: int) -> None:
        """Output `index` was unchained: the gradient of a function that recorded it stops there."""
        if type(self._severed) is frozenset:
            self._severed = set()
        self._severed.add(index)

    def forward(self, *xs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, *gys: Variable) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")


# --- arithmetic (the operators of Variable) --------------------------------------------------------


def _check_broadcastable(name: str, a: Any, b: Any) -> None:
    for m, n in zip(reversed(a.shape), reversed(b.shape)):
        if m != n and m != 1 and n != 1:
            raise ValueError(
                f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together "
                "(trailing dimensions must be equal or 1)"
            )


def _unbroadcast(gx: Variable, shape: tuple) -> Variable:
    return gx if gx.shape == shape else sum_to(gx, shape)


class Add(Function):
    """y = x0 + x1; dy/dx0 = dy/dx1 = 1 (summed over broadcast axes)."""

    keeps_inputs = False

    def forward(self, x0, x1):
        self.shapes = (tuple(x0.shape), tuple(x1.shape))
        if self.shapes[0] != self.shapes[1]:
            _check_broadcastable("add", x0, x1)
        return x0 + x1

    def backward(self, gy):
        return _unbroadcast(gy, self.shapes[0]), _unbroadcast(gy, self.shapes[1])


class Sub(Function):
    """y = x0 - x1; dy/dx0 = 1, dy/dx1 = -1."""

    keeps_inputs = False

    def forward(self, x0, x1):
        self.shapes = (tuple(x0.shape), tuple(x1.shape))
        if self.shapes[0] != self.shapes[1]:
            _check_broadcastable("sub", x0, x1)
        return x0 - x1

    def backward(self, gy):
        return _unbroadcast(gy, self.shapes[0]), _unbroadcast(-gy, self.shapes[1])


class Mul(Function):
    """y = x0 * x1; dy/dx0 = x1, dy/dx1 = x0."""

    def forward(self, x0, x1):
        if x0.shape != x1.shape:
            _check_broadcastable("mul", x0, x1)
        return x0 * x1

    def backward(self, gy):
        x0, x1 = self.inputs
        return _unbroadcast(gy * x1, x0.shape), _unbroadcast(gy * x0, x1.shape)


class Div(Function):
    """y = x0 / x1; dy/dx0 = 1/x1, dy/dx1 = -x0/x1²."""

    def forward(self, x0, x1):
        if x0.shape != x1.shape:
            _check_broadcastable("div", x0, x1)
        return x0 / x1

    def backward(self, gy):
        x0, x1 = self.inputs
        gx0 = gy / x1
        return _unbroadcast(gx0, x0.shape), _unbroadcast(-gx0 * x0 / x1, x1.shape)


class Neg(Function):
    """y = -x; dy/dx = -1."""

    keeps_inputs = False

    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class AddConstant(Function):
    """y = x + c for a Python number c; dy/dx = 1."""

    keeps_inputs = False

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x + self.c

    def backward(self, gy):
        return gy


class RSubConstant(Function):
    """y = c - x for a Python number c; dy/dx = -1."""

    keeps_inputs = False

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return self.c - x

    def backward(self, gy):
        return -gy


class MulConstant(Function):
    """y = c * x for a Python number c; dy/dx = c."""

    keeps_inputs = False

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x * self.c

    def backward(self, gy):
        return gy * self.c


class DivConstant(Function):
    """y = x / c for a Python number c; dy/dx = 1/c."""

    keeps_inputs = False

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x / self.c

    def backward(self, gy):
        return gy / self.c


class RDivConstant(Function):
    """y = c / x for a Python number c; dy/dx = -c/x²."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return self.c / x

    def backward(self, gy):
        (x,) = self.inputs
        return gy * (-self.c) / (x * x)


class Pow(Function):
    """y = x ** c for a Python number c; dy/dx = c x^(c-1)."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return x**self.c

    def backward(self, gy):
        (x,) = self.inputs
        if self.c == 0:  # x**0 is constant; c x^(c-1) would be 0 * inf = nan at x = 0
            return _zeros_like(x)
        return gy * (self.c * x ** (self.c - 1))


class RPow(Function):
    """y = c ** x for a positive Python number c; dy/dx = log(c) c^x."""

    def __init__(self, c):
        self.c = c

    def forward(self, x):
        return self.c**x

    def backward(self, gy):
        (x,) = self.inputs
        return gy * _rpow(self.c, x) * math.log(self.c)


class SumTo(Function):
    """y = x summed down to `shape` (the inverse of broadcasting); dy/dx = broadcast back."""

    keeps_inputs = False

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = tuple(x.shape)
        return sum_to_array(self.xp, x, self.shape)

    def backward(self, gy):
        return broadcast_to(gy, self.x_shape)


class BroadcastTo(Function):
    """y = x broadcast to `shape` (a fresh, writable array); dy/dx = sum back to x's shape."""

    keeps_inputs = False

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.x_shape = tuple(x.shape)
        try:
            y = self.xp.broadcast_to(x, self.shape)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"broadcast_to: cannot broadcast shape {self.x_shape} to {self.shape}") from e
        return self.xp.asarray(y, copy=True)

    def backward(self, gy):
        return sum_to(gy, self.x_shape)


class Copy(Function):
    """y = x as a fresh array; dy/dx = 1."""

    keeps_inputs = False

    def forward(self, x):
        return self.xp.asarray(x, copy=True)

    def backward(self, gy):
        return gy


class Cast(Function):
    """y = x converted to `dtype`; dy/dx = 1 (converted back to x's dtype)."""

    keeps_inputs = False

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        self.x_dtype = x.dtype
        return self.xp.astype(x, self.dtype)

    def backward(self, gy):
        return _cast(gy, self.x_dtype)


def sum_to_array(xp: Any, x: Any, shape: tuple) -> Any:
    """Sum the raw array `x` down to `shape` (undoing a broadcast)."""
    shape = tuple(shape)
    if tuple(x.shape) == shape:
        return x
    lead = x.ndim - len(shape)
    if lead < 0 or any(s != 1 and s != n for s, n in zip(shape, tuple(x.shape)[lead:])):
        raise ValueError(f"sum_to: shape {tuple(x.shape)} cannot be summed to {shape}")
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and x.shape[lead + i] != 1)
    y = xp.sum(x, axis=axes, keepdims=True)
    return xp.reshape(y, shape) if lead else y


def _is_inexact(a: Any) -> bool:
    return array_namespace(a).isdtype(a.dtype, ("real floating", "complex floating"))


def _cast(x: Variable, dtype: Any) -> Variable:
    if enable_backprop_flag.get():
        return Cast(dtype)(x)
    return Variable(array_namespace(x._data).astype(x._data, dtype))


def _copy(x: Variable) -> Variable:
    if enable_backprop_flag.get():
        return Copy()(x)
    return Variable(array_namespace(x._data).asarray(x._data, copy=True))


def add(x0: Any, x1: Any) -> Variable:
    """x0 + x1, broadcasting; a Python number operand takes the other operand's dtype."""
    if _is_scalar(x1):
        return AddConstant(_number(x1))(x0)
    if _is_scalar(x0):
        return AddConstant(_number(x0))(x1)
    return Add()(x0, x1)


def sub(x0: Any, x1: Any) -> Variable:
    """x0 - x1, broadcasting."""
    if _is_scalar(x1):
        return AddConstant(-_number(x1))(x0)
    if _is_scalar(x0):
        return RSubConstant(_number(x0))(x1)
    return Sub()(x0, x1)


def rsub(x0: Any, x1: Any) -> Variable:
    """x1 - x0 (DeZero's reflected subtraction)."""
    return sub(x1, x0)


def mul(x0: Any, x1: Any) -> Variable:
    """x0 * x1, broadcasting."""
    if _is_scalar(x1):
        return MulConstant(_number(x1))(x0)
    if _is_scalar(x0):
        return MulConstant(_number(x0))(x1)
    return Mul()(x0, x1)


def div(x0: Any, x1: Any) -> Variable:
    """x0 / x1, broadcasting."""
    if _is_scalar(x1):
        return DivConstant(_number(x1))(x0)
    if _is_scalar(x0):
        return RDivConstant(_number(x0))(x1)
    return Div()(x0, x1)


def rdiv(x0: Any, x1: Any) -> Variable:
    """x1 / x0 (DeZero's reflected division)."""
    return div(x1, x0)


def neg(x: Any) -> Variable:
    """-x."""
    return Neg()(x)


def pow(x: Any, c: Any) -> Variable:
    """x ** c for a Python number c."""
    if not _is_scalar(c):
        raise TypeError(f"pow: the exponent must be a Python number, not {describe(c)}")
    return Pow(_number(c))(x)


def _rpow(c: Any, x: Any) -> Variable:
    if not _is_scalar(c):
        raise TypeError(f"pow: the base of `base ** Variable` must be a Python number, not {describe(c)}")
    return RPow(_number(c))(x)


def sum_to(x: Any, shape: tuple) -> Variable:
    """Sum x down to `shape`; the backward of broadcasting."""
    x = as_variable(x)
    if x.shape == tuple(shape):
        return x
    return SumTo(shape)(x)


def broadcast_to(x: Any, shape: tuple) -> Variable:
    """Broadcast x to `shape`."""
    x = as_variable(x)
    if x.shape == tuple(shape):
        return x
    return BroadcastTo(shape)(x)
