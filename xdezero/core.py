"""The define-by-run engine: Variable, Parameter, Function, and the heap-ordered backward pass.

Nothing else lives here. The ops behind Variable's operators live in `xdezero.functions`, above this module:
that package hands them to `operators` below when it is imported, which `import xdezero` always does first.
The engine keeps only the two ops its own backward pass needs: Copy and Cast. It is one concern, kept in
one file (about 560 lines) so that the call path and the backward loop can be read together.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xdezero._config import Config, enable_backprop_flag, no_grad, recorder_slot, test_mode, using_config
from xdezero.backends import (
    LEGACY_NUMPY,
    Backend,
    array_namespace,
    as_array_data,
    backend_of_namespace,
    dtype_name,
    keep_input_precision,
    memory_key,
    to_cpu,
    to_device,
    to_gpu,
    to_library,
    to_numpy,
)
from xdezero.backends import NAMESPACES as _NAMESPACES

__all__ = ["Variable", "Parameter", "Function", "as_variable", "as_array"]


class _Operators:
    """The functions behind Variable's operators and shape methods, supplied by `xdezero.functions`."""

    __slots__ = (
        "add", "sub", "mul", "div", "neg", "pow", "rpow", "rsub", "rdiv", "sum_to", "broadcast_to",
        "matmul", "get_item", "reshape", "transpose", "sum",
    )  # fmt: skip

    # Declared so that Variable's operators type-check: each returns a Variable.
    add: Callable[[Any, Any], Variable]
    sub: Callable[[Any, Any], Variable]
    mul: Callable[[Any, Any], Variable]
    div: Callable[[Any, Any], Variable]
    neg: Callable[[Any], Variable]
    pow: Callable[[Any, Any], Variable]
    rpow: Callable[[Any, Any], Variable]
    rsub: Callable[[Any, Any], Variable]
    rdiv: Callable[[Any, Any], Variable]
    sum_to: Callable[[Any, tuple[int, ...]], Variable]
    broadcast_to: Callable[[Any, tuple[int, ...]], Variable]
    matmul: Callable[[Any, Any], Variable]
    get_item: Callable[[Any, Any], Variable]
    reshape: Callable[[Any, Any], Variable]
    transpose: Callable[[Any, Any], Variable]
    sum: Callable[[Any, Any, bool], Variable]

    def install(self, **functions: Callable[..., Variable]) -> None:
        """Set the named functions (`add=add, mul=mul, ...`); `xdezero.functions` calls this once on import."""
        for name, function in functions.items():
            setattr(self, name, function)


operators: _Operators = _Operators()


_NEEDED = (True,)
_NOT_NEEDED = (False,)
_NOT_NEEDED_2 = (False, False)

# Serialises accumulation into `.grad` of Variables that outlive a backward pass (leaves, retained gradients),
# so that two threads running backward into one leaf lose no update. Uncontended it is one acquire per leaf
# per backward pass.
_grad_lock = threading.Lock()


# Hooks called when backward adds to a leaf's .grad (Variable.register_grad_hook); kept beside the variables, not in
# them, so that a pickled or copied model carries none.
_grad_hooks: weakref.WeakKeyDictionary[Variable, list[Callable[[Variable], None]]] = weakref.WeakKeyDictionary()


class Variable:
    """A node of the graph holding an array of any array-API library, its gradient and its creator.

    A Variable you create gets a gradient from `backward` (as in DeZero) unless `requires_grad=False`; an
    array or number passed straight to an op is a constant, and so is every result computed from constants
    only or under `no_grad()`.
    """

    __slots__ = ("_data", "name", "grad", "creator", "generation", "_index", "requires_grad", "__weakref__", "__dict__")
    __array_priority__ = 200
    __array_ufunc__ = None  # makes `ndarray op Variable` defer to Variable's reflected operator

    def __init__(self, data: Any, name: str | None = None, requires_grad: bool = True) -> None:
        self._data: Any = data if type(data) is np.ndarray and data.dtype.kind in "fiubc" else as_array_data(data)
        self.name: str | None = name
        self.grad: Variable | None = None
        self.creator: Function | None = None
        self.generation: int = 0
        self._index: int = 0  # position among its creator's outputs
        self.requires_grad: bool = requires_grad
        recorder = recorder_slot.get()
        if recorder is not None:
            recorder.variable_created(self)

    # --- data and its description -------------------------------------------------------------
    @property
    def data(self) -> Any:
        """The array, of any array-API library, or None; a NumPy scalar set here becomes a 0-d array."""
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        """Replace the array (checked to be a numeric array of some array-API library, or None)."""
        previous, self._data = self._data, as_array_data(value)
        recorder = recorder_slot.get()
        if recorder is not None:
            recorder.data_assigned(self, previous)

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape, as a tuple of ints."""
        return tuple(self._data.shape)

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return self._data.ndim

    @property
    def size(self) -> int:
        """The number of elements."""
        return math.prod(self._data.shape)

    @property
    def dtype(self) -> Any:
        """The array's dtype (of its own library)."""
        return self._data.dtype

    def item(self) -> int | float | complex | bool:
        """The one element of the data as a Python number (copied to the host), as torch's `Tensor.item()`."""
        data = self._data
        if math.prod(data.shape) != 1:
            raise TypeError(
                f"item() needs a Variable of exactly one element, this one has shape {tuple(data.shape)}: index it "
                "first (v[i]) or reduce it (F.sum(v))"
            )
        if dtype_name(data) == "bfloat16":  # NumPy has no bfloat16: read it through float32, which holds it exactly
            data = array_namespace(data).astype(data, array_namespace(data).float32)
        return to_numpy(data).reshape(()).item()

    def __float__(self) -> float:
        """float(v): the one element of a one-element Variable (see `item`)."""
        return float(self.item())  # type: ignore[arg-type]  # a complex raises, as float() of one does

    def __int__(self) -> int:
        """int(v): the one element of a one-element Variable, truncated (see `item`)."""
        return int(self.item())  # type: ignore[arg-type]

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
        """Forget the gradient (`.grad = None`), before the next backward pass."""
        self.grad = None
        recorder = recorder_slot.get()
        if recorder is not None:
            recorder.grad_cleared(self)

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
            if f._weak_inputs:
                f._sources = [(None, 0)] * len(f._sources)

    def backward(self, retain_grad: bool = False, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`.

        Functions run in decreasing generation order (a heap with an insertion counter, so the order is
        deterministic); intermediate gradients are kept only with `retain_grad=True`; with
        `create_graph=True` the backward pass is itself recorded, for higher-order derivatives.
        """
        if self._data is None:
            raise ValueError("backward() called on a Variable with no data")
        recorder = recorder_slot.get()
        if recorder is not None:
            return recorder.backward(self, retain_grad, create_graph)
        return backward_pass(self, retain_grad, create_graph)

    # --- devices ------------------------------------------------------------------------------
    def register_grad_hook(self, hook: Callable[[Variable], None]) -> Callable[[], None]:
        """Call `hook(self)` each time a backward pass adds to this variable's `.grad` as a leaf of the graph
        (after the addition), e.g. to send a parameter's gradient off while backward goes on. Returns a function
        that removes the hook."""
        hooks = _grad_hooks.setdefault(self, [])
        hooks.append(hook)

        def remove() -> None:
            if hook in hooks:
                hooks.remove(hook)

        return remove

    def to_cpu(self) -> Variable:
        """Move the data to the host: CuPy arrays become NumPy arrays, other libraries stay themselves; returns self."""
        self._data = to_cpu(self._data)
        return self

    def to_gpu(self) -> Variable:
        """Move the data to the GPU: NumPy arrays become CuPy arrays, torch and JAX arrays move; returns self."""
        self._data = to_gpu(self._data)
        return self

    def to_device(self, device: Any) -> Variable:
        """Move the data to `device` of its own library ('cpu' and 'gpu' are shorthands); returns self."""
        self._data = to_device(self._data, device)
        return self

    def to_library(self, name: str, device: Any = None) -> Variable:
        """Move the data to array library `name` on `device` (see `xdezero.backends.to_library`); returns self."""
        self._data = to_library(self._data, name, device)
        return self

    # --- operators and shape methods (their Functions live in xdezero.functions) ------------------
    def reshape(self, *shape: int | tuple[int, ...] | list[int]) -> Variable:
        """y = x with a new shape: `x.reshape(2, 3)` or `x.reshape((2, 3))`; dy/dx = reshape back."""
        if len(shape) == 1 and isinstance(shape[0], tuple | list):
            shape = tuple(shape[0])
        return operators.reshape(self, shape)

    def transpose(self, *axes: int | tuple[int, ...] | list[int] | None) -> Variable:
        """y = x with its axes permuted: `x.transpose(1, 0)`, `x.transpose((1, 0))`, or reversed by default."""
        if len(axes) == 0:
            axes = None
        elif len(axes) == 1 and isinstance(axes[0], tuple | list | type(None)):
            axes = axes[0]
        return operators.transpose(self, axes)

    @property
    def T(self) -> Variable:
        """y = x with its axes reversed."""
        return operators.transpose(self, None)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Variable:
        """y = Σ x over `axis` (all axes by default); dy/dx = 1."""
        return operators.sum(self, axis, keepdims)

    def __getitem__(self, slices: Any) -> Variable:
        return operators.get_item(self, slices)

    def __matmul__(self, other: Any) -> Variable:
        return operators.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Variable:
        return operators.matmul(other, self)

    def __add__(self, other: Any) -> Variable:
        return operators.add(self, other)

    def __radd__(self, other: Any) -> Variable:
        return operators.add(other, self)

    def __sub__(self, other: Any) -> Variable:
        return operators.sub(self, other)

    def __rsub__(self, other: Any) -> Variable:
        return operators.sub(other, self)

    def __mul__(self, other: Any) -> Variable:
        return operators.mul(self, other)

    def __rmul__(self, other: Any) -> Variable:
        return operators.mul(other, self)

    def __truediv__(self, other: Any) -> Variable:
        return operators.div(self, other)

    def __rtruediv__(self, other: Any) -> Variable:
        return operators.div(other, self)

    def __neg__(self) -> Variable:
        return operators.neg(self)

    def __pos__(self) -> Variable:
        return self

    def __pow__(self, other: Any) -> Variable:
        return operators.pow(self, other)

    def __rpow__(self, other: Any) -> Variable:
        return operators.rpow(self, other)


class Parameter(Variable):
    """A Variable that a Layer registers as one of its parameters."""


def as_variable(obj: Any) -> Variable:
    """`obj` if it is a Variable, else a constant Variable (one that gets no gradient) wrapping the array `obj`."""
    if isinstance(obj, Variable):
        return obj
    return Variable(obj, requires_grad=False)


def as_array(x: Any, array_module: Any = np) -> Any:
    """DeZero's helper: Python and NumPy scalars become 0-d arrays of `array_module` (NumPy by default)."""
    if np.isscalar(x):
        return array_module.asarray(x)
    return x


def backward_pass(start: Variable, retain_grad: bool, create_graph: bool) -> None:
    """`start.backward(retain_grad, create_graph)` itself (what a recorder runs when it records one)."""
    if start.grad is None:
        start.grad = Variable(array_op(_ones_like, start._data), requires_grad=False)
    if start.creator is None:
        return
    with using_config("enable_backprop", create_graph):
        _run_backward(start, retain_grad, create_graph)


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
        return operators.add(total, gx) if create_graph else Variable(array_op(_add, total._data, gx._data))

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
        inputs = [ref() for ref in f._input_refs] if f._weak_inputs else f.inputs
        if len(gxs) != len(inputs):
            raise ValueError(f"{type(f).__name__}.backward returned {len(gxs)} gradients for {len(inputs)} inputs")
        needs = f.needs_grad
        for i, x in enumerate(inputs):
            gx = gxs[i]
            if gx is None or not needs[i]:
                continue
            if not isinstance(gx, Variable):
                gx = Variable(gx)
            # The live graph wins (the variable may have been unchained since); a freed one uses the record.
            if x is not None:
                creator, index = x.creator, x._index
                dtype, gx_dtype = x._data.dtype, gx._data.dtype
                if gx_dtype is not dtype and gx_dtype != dtype and _is_inexact(x._data):  # dtypes met
                    gx = _cast(gx, dtype)
            else:
                creator, index = f._sources[i]
                if creator is None or index in creator._severed:
                    continue
            if creator is None:
                with _grad_lock:
                    x.grad = own(gx) if x.grad is None else accumulate(x.grad, gx)
                if _grad_hooks:
                    for hook in list(_grad_hooks.get(x, ())):
                        hook(x)
                continue
            slots = pending.get(creator)
            if slots is None:
                slots = pending[creator] = [None] * len(creator.outputs)
                heappush(heap, (-creator.generation, next(counter), creator))
            previous = slots[index]
            slots[index] = gx if previous is None else accumulate(previous, gx)
    if not retain_grad:
        start.grad = None


_new_variable = object.__new__


def _result(data: Any, requires_grad: bool) -> Variable:
    """A Function's output: a Variable made without re-validating data that an op just computed."""
    y = _new_variable(Variable)
    if type(data) is not np.ndarray:  # NumPy returns scalars for 0-d results: normalise them to 0-d arrays
        data = np.asarray(data) if isinstance(data, np.generic) else as_array_data(data, what="a Function's output")
    y._data = data
    y.name = y.grad = y.creator = None
    y.generation = y._index = 0
    y.requires_grad = requires_grad
    return y


def _zeros_like(y: Variable) -> Variable:
    return Variable(array_op(_zeros, y._data), requires_grad=False)


# The backward pass's own array operations, outside any Function, go through `array_op`, which reports them to a
# recorder (xdezero.capture's) when one is set.


def array_op(fn: Any, *arrays: Any) -> Any:
    """fn(*arrays): an array operation of the engine itself (not of a Function)."""
    result = fn(*arrays)
    recorder = recorder_slot.get()
    if recorder is not None:
        recorder.array_op(fn, arrays, result)
    return result


def _add(a: Any, b: Any) -> Any:
    return a + b


def _ones_like(a: Any) -> Any:
    return array_namespace(a).ones_like(a)


def _zeros(a: Any) -> Any:
    return array_namespace(a).zeros_like(a)


def _fresh_copy(a: Any) -> Any:
    return array_namespace(a).asarray(a, copy=True)


def _astype(a: Any, dtype: Any) -> Any:
    return array_namespace(a).astype(a, dtype)


_constant = as_variable  # an operand that is not a Variable takes part in the computation, without a gradient


class Function:
    """An operation of the graph: `forward` computes on raw arrays with `self.xp`, the namespace resolved once
    for the call; `backward` computes on Variables, so that it can itself be differentiated."""

    # Ops whose backward reads no input *data* set this False, so intermediate inputs can be freed early.
    keeps_inputs: bool = True
    # Ops may also say, per input i, which inputs' data the gradient of input i reads: then only those are kept,
    # for the inputs that need a gradient in this call (Mul(h, c) with a constant c keeps c, not h).
    # Such an op's backward finds None in `self.inputs` for an input it was not meant to read.
    inputs_read: tuple[tuple[int, ...], ...] | None = None
    # Indices of outputs that were unchained: backward must not come back here through them.
    _severed: frozenset[int] | set[int] = frozenset()
    # True when the inputs are held by weak reference plus a record of where each came from.
    _weak_inputs: bool = False

    # What a captured step's replay must know of an op (xdezero.tapes): the attributes holding arrays its forward
    # keeps for backward (ReLU's mask), and those holding Variables whose data its forward assigns (batch_norm's
    # running statistics).
    saved: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    # Set by each call (declared here, not in an __init__, so that subclasses need not call one):
    xp: Any  # the array namespace of the inputs, for `forward`
    needs_grad: tuple[bool, ...]  # per input: whether it gets a gradient in this call
    generation: int
    # Declared as Variables (None only where the op's own `inputs_read` says backward does not look), so that a
    # backward uses them unchecked.
    inputs: list[Variable]
    outputs: list[weakref.ref[Variable]]
    _input_refs: list[weakref.ref[Variable]]
    _sources: list[tuple[Function | None, int]]

    def __call__(self, *inputs: Any) -> Any:
        # The engine's hot path: kept flat on purpose (it runs once per op, forward and backward), with the
        # one- and two-input cases spelled out.
        recorder = recorder_slot.get()
        if recorder is not None:
            return recorder.function_call(self, inputs)
        if len(inputs) == 1:
            x = inputs[0]
            if not isinstance(x, Variable):
                x = _constant(x)
            record = x.requires_grad and enable_backprop_flag.get()
            self.needs_grad = _NEEDED if record else _NOT_NEEDED
            data = x._data
            self.xp = _NAMESPACES.get(type(data)) or array_namespace(data)
            ys = self.forward(data)
            inputs = [x]
            generation = x.generation
        elif len(inputs) == 2:
            x0, x1 = inputs
            if not isinstance(x0, Variable):
                x0 = _constant(x0)
            if not isinstance(x1, Variable):
                x1 = _constant(x1)
            needs = (x0.requires_grad, x1.requires_grad)
            record = (needs[0] or needs[1]) and enable_backprop_flag.get()
            self.needs_grad = needs if record else _NOT_NEEDED_2
            d0, d1 = x0._data, x1._data
            self.xp = (type(d0) is type(d1) and _NAMESPACES.get(type(d0))) or array_namespace(d0, d1)
            ys = self.forward(d0, d1)
            inputs = [x0, x1]
            generation = x0.generation if x0.generation > x1.generation else x1.generation
        else:
            inputs = [x if isinstance(x, Variable) else _constant(x) for x in inputs]
            needs = tuple([x.requires_grad for x in inputs])
            record = True in needs and enable_backprop_flag.get()
            self.needs_grad = needs if record else (False,) * len(needs)
            xs = [x._data for x in inputs]
            self.xp = array_namespace(*xs)
            ys = self.forward(*xs)
            generation = max([x.generation for x in inputs])
        if type(ys) is not tuple:
            if LEGACY_NUMPY and type(ys) is np.float64:  # NumPy 1.x widened a scalar expression: see backends
                ys = keep_input_precision(ys, [x._data for x in inputs])
            y = _result(ys, record)
            if record:
                self.generation = generation
                y.creator = self
                y.generation = generation + 1
                self.outputs = [weakref.ref(y)]
                self._keep(inputs)
            return y
        outputs = [_result(y, record) for y in ys]
        if record:
            self.generation = generation
            for i, y in enumerate(outputs):
                y.creator = self
                y.generation = generation + 1
                y._index = i
            self.outputs = [weakref.ref(y) for y in outputs]
            self._keep(inputs)
        return outputs

    @property
    def backend(self) -> Backend:
        """The kernels of the inputs' array library (the backend beside the namespace `xp`)."""
        return backend_of_namespace(self.xp)

    def _keep(self, inputs: list) -> None:
        """Keep the inputs whose data backward reads; hold the others weakly, with a record of their source."""
        if self.keeps_inputs:
            needs = self.needs_grad
            reads = self.inputs_read
            if reads is None or False not in needs:
                self.inputs = inputs
                return
            kept = {j for i, needed in enumerate(needs) if needed for j in reads[i]}
            self.inputs = [x if i in kept else None for i, x in enumerate(inputs)]  # pyright: ignore[reportAttributeAccessIssue]
        self._weak_inputs = True
        self._input_refs = [weakref.ref(x) for x in inputs]
        self._sources = [(x.creator, x._index) for x in inputs]

    def _current_inputs(self) -> Sequence[Variable | None]:
        """The input Variables, None for one that was freed (only possible for weakly held inputs)."""
        return [ref() for ref in self._input_refs] if self._weak_inputs else self.inputs

    def _recorded_source(self, i: int) -> tuple[Function | None, int]:
        """(creator, output index) of input i as recorded at call time (used once that input is freed)."""
        return self._sources[i]

    def _sever(self, index: int) -> None:
        """Output `index` was unchained: the gradient of a function that recorded it stops there."""
        if type(self._severed) is frozenset:
            self._severed = set()
        self._severed.add(index)

    def forward(self, *xs: Any) -> Any:
        """The op on raw arrays (one per input, of namespace `self.xp`): an array, or a tuple of arrays."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, *gys: Variable) -> Any:
        """Gradients of the inputs (Variables, or None where not needed) from those of the outputs."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")


class Copy(Function):
    """y = x as a fresh array; dy/dx = 1."""

    keeps_inputs = False

    def forward(self, x: Any) -> Any:
        """y = a fresh copy of x."""
        return self.xp.asarray(x, copy=True)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy."""
        return gy


class Cast(Function):
    """y = x converted to `dtype`; dy/dx = 1 (converted back to x's dtype)."""

    keeps_inputs = False

    def __init__(self, dtype: Any) -> None:
        self.dtype: Any = dtype

    def forward(self, x: Any) -> Any:
        """y = x as `dtype`."""
        self.x_dtype: Any = x.dtype
        return self.xp.astype(x, self.dtype)

    def backward(self, gy: Variable) -> Variable:
        """gx = gy as x's dtype."""
        return _cast(gy, self.x_dtype)


def _is_inexact(a: Any) -> bool:
    return array_namespace(a).isdtype(a.dtype, ("real floating", "complex floating"))


def _cast(x: Variable, dtype: Any) -> Variable:
    if enable_backprop_flag.get():
        return Cast(dtype)(x)
    return Variable(array_op(_astype, x._data, dtype))


def _copy(x: Variable) -> Variable:
    if enable_backprop_flag.get():
        return Copy()(x)
    return Variable(array_op(_fresh_copy, x._data))


# --- DeZero compatibility: the other names `dezero.core` exports ----------------------------------------

array_types: tuple[type, ...] = (np.ndarray,)  # DeZero's host array type; the engine itself takes any array-API array

# DeZero's arithmetic Function classes (Add, Mul, ...), registered by xdezero.functions, which defines them.
dezero_classes: dict[str, type[Function]] = {}


def __getattr__(name: str) -> Any:
    # DeZero's `dezero.core` also exports its arithmetic: the functions (add, mul, ...) and their Function
    # classes (Add, Mul, ...). Here both live in xdezero.functions, which hands them over when imported.
    if name in dezero_classes:
        return dezero_classes[name]
    if name in ("add", "sub", "rsub", "mul", "div", "rdiv", "neg", "pow", "sum_to", "broadcast_to"):
        return getattr(operators, name)
    raise AttributeError(f"module 'xdezero.core' has no attribute {name!r}")


def setup_variable() -> None:
    """A no-op: DeZero installs Variable's operators here; xdezero's Variable defines them in its class body."""


__all__ += ["Config", "no_grad", "test_mode", "using_config", "array_types", "setup_variable"]
