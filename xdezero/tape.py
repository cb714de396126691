"""`xdezero.capture`: record a training step, then replay it without rebuilding the graph.

    step = xdezero.capture(train_step)     # train_step(x, t): forward, cleargrads, backward, update; returns loss
    for x, t in loader:
        loss = step(x, t)

A define-by-run step pays for Python on every op: Variables, the graph, the backward heap. A training step runs
the same ops on the same shapes every time, so `capture` records what the step computes, at the level of
arrays, and replays that list:

- every Function call: its `forward` on the arrays it received, and the arrays it left on itself for later
  ops (a ReLU's mask, the probabilities of softmax cross-entropy);
- the backward pass's own array operations (the first gradient, sums where gradients meet, copies), the
  gradients it stores in Variables that outlive the step (the parameters'), `cleargrad` calls;
- `Optimizer.update()` calls, which replay as calls (their state stays the optimizer's own).

Replay runs the recorded `forward` methods of the same Function objects, in order, on the new inputs, reading
the parameters' current data, and frees each intermediate after its last use. The results are those of eager
execution, bit for bit on NumPy: the same code runs on the same arrays in the same order.

The first two calls with a new signature (the shapes, dtypes and devices of the array arguments, the other
arguments, `Config.train` and `Config.enable_backprop`) run eagerly and record; the second confirms the first:
the same ops, and the same values wherever an op took an array from outside (a constant). A step whose ops or
constants differ between those calls depends on its inputs in a way a replay cannot repeat (Python control flow
on array values, an array computed from the inputs outside xdezero's functions): `CaptureError` says which op.
From the third call on, the step replays (on CuPy and CUDA torch as one CUDA graph from the fourth: see
`xdezero.tape_graphs`). Its Python side effects (printing, appending to lists) happen only
while it records, as with `torch.jit.trace`: return what you need (the loss, metrics as Variables).

Limits: the step's arguments are arrays (or Variables holding them: the gradient a step leaves on such an
argument goes to each call's own Variable, and the step then replays without a CUDA graph) and hashable values;
it returns a Variable, an array, or a tuple/list/dict of them. A Variable whose gradient the step reads or leaves
behind must exist before the step (parameters do). An op built with an array of the step (`embed_id`'s ids,
`x[ids]`, the index a GetItemGrad scatters to) reads it from this call's values at replay; other arrays an op is
built with are constants, and must be equal in the two recordings.

One file (about 770 lines, a third of them docstrings and messages) on purpose: the recording hooks, the op
records, the comparison of the two recordings and the replay program all read and write the same records.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from xdezero import core
from xdezero._config import Config
from xdezero.backends import LEGACY_NUMPY, device_of, graph_kit, is_array, keep_input_precision, to_numpy
from xdezero.core import Function, Variable
from xdezero.optimizers import Optimizer
from xdezero.tape_graphs import GraphReplay

__all__ = ["capture", "CaptureError", "CapturedStep"]


class CaptureError(RuntimeError):
    """A step that cannot be replayed: the message names the op and what differed. Raised after the step's
    second recording, `result` holds what that call returned (it ran eagerly, and completely); else None."""

    result: Any = None


MAX_SIGNATURES = 16  # signatures kept per captured step (and of first recordings awaiting their confirmation)
MAX_VARIANTS = 4  # tapes kept per signature, for steps that start from different states (see CapturedStep)


# --- recording -----------------------------------------------------------------------------------------

# An input of a recorded op: ("slot", index) a value computed during the step (or an argument, or a gradient
# read by a 'read_grad' op); ("data", Variable) the data of a Variable that exists before the step, read at
# replay; ("const", value) anything else, fixed when recorded.


class _Op:
    """One recorded operation: `kind` is 'forward' (a Function's forward), 'array' (the backward pass's own),
    'read_grad', 'set_grad', 'set_data', 'clear_grad' (of a Variable from before the step) or 'call' (an
    optimizer's update)."""

    __slots__ = ("kind", "target", "inputs", "outputs", "attrs", "bound", "frees", "signature")

    def __init__(self, kind: str, target: Any, inputs: list, outputs: list, attrs: list = (), signature: Any = None):
        self.kind, self.target, self.inputs, self.outputs, self.attrs = kind, target, inputs, outputs, list(attrs)
        # Attributes a forward was built with that hold arrays of the step (`embed_id`'s ids, a GetItemGrad's
        # index): (name, template); their arrays are the op's inputs after its forward's own (`n_forward`).
        self.bound: list[tuple[str, Any]] = []
        self.frees: list[int] = []
        self.signature = signature  # what must match between the two recordings


class _Recorder:
    """Collects the ops of one call of the step on one thread."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.slot_of: dict[int, int] = {}  # id(array) -> slot
        self.keep: list = []  # every recorded array stays alive while recording, so that ids stay unique
        self.n_slots = 0
        self.external: dict[int, Variable] = {}  # Variables that existed before the step and ops read
        self.first_data: dict[int, tuple] = {}  # their data (and a host copy) when the step first met them
        self.updated: set[int] = set()  # ids of those whose data an optimizer's update or a recorded op sets
        self.created: set[int] = set()  # ids of Variables made during the step (kept alive in `keep`)
        self.arguments: dict[int, int] = {}  # id(Variable passed as an argument) -> its place among the arrays
        self.backward_ran = False
        self.paused = 0

    def active(self) -> bool:
        return not self.paused

    def new_slot(self, array: Any) -> int:
        slot = self.n_slots
        self.n_slots += 1
        self.slot_of[id(array)] = slot
        self.keep.append(array)
        return slot

    def source(self, value: Any, owner: Variable | None = None) -> tuple:
        """Where an op's input comes from (see the kinds above)."""
        slot = self.slot_of.get(id(value))
        if slot is not None:
            return ("slot", slot)
        if owner is not None and id(owner) not in self.created:
            self.watch(owner)
            return ("data", owner)
        return ("const", value)

    def target(self, v: Variable) -> Any:
        """What an op on `v` (its gradient or data) acts on at replay: ("argument", k) for the Variable passed
        as the k-th array argument (each call passes its own), else `v` itself."""
        k = self.arguments.get(id(v))
        return v if k is None else ("argument", k)

    def watch(self, v: Variable) -> None:
        """Note a Variable from before the step, and what its data was when the step first met it."""
        if id(v) not in self.external:
            self.external[id(v)] = v
            self.first_data[id(v)] = (v._data, None if v._data is None else to_numpy(v._data).copy())

    def check_external_data(self) -> None:
        """A Variable from before the step whose data changed outside the recorded ops (an in-place
        `p.data -= ...`, an assignment) would not change in a replay: refuse the step."""
        for key, v in self.external.items():
            if key in self.updated:
                continue
            data, host = self.first_data.get(key, (v._data, None))
            same_values = host is None or np.array_equal(to_numpy(v._data), host, equal_nan=True)
            changed = v._data is not data or not same_values
            if changed:
                raise CaptureError(
                    f"capture: the data of {_name(v)} changed during the step outside xdezero's functions and "
                    "optimizers (an in-place update such as p.data -= lr * p.grad.data, or an assignment): a replay "
                    "would not repeat it; update parameters with an Optimizer, or call the step uncaptured"
                )


_recorders: dict[int, _Recorder] = {}  # thread id -> the step that thread is recording
_current = _recorders.get  # _current(threading.get_ident())
_thread = threading.get_ident


def _recording_call(original: Callable) -> Callable:
    @functools.wraps(original)
    def call(f: Function, *inputs: Any) -> Any:
        recorder = _current(_thread())
        if recorder is None or not recorder.active():
            return original(f, *inputs)
        before = dict(vars(f))
        sources = [
            recorder.source(x._data, x) if isinstance(x, Variable) else recorder.source(_as_data(x)) for x in inputs
        ]
        # Array attributes the op was built with: arrays of this step (they have slots now; a forward may hand
        # the same array object back as a new result) are read at replay, the others are constants.
        constants, bound, bound_sources = {}, [], []
        for name, value in before.items():
            if isinstance(value, _NUMBERS):  # MulConstant's c, a dropout ratio: fixed in a replay, so compared
                constants[name] = value
            elif _holds_arrays(value):
                template, found = _bind(recorder, value)
                if found:
                    bound.append((name, template))
                    bound_sources += found
                    value = template  # what stays fixed: the non-array parts
                constants[name] = value
        recorder.paused += 1  # a Function calling Functions inside its forward is one op
        try:
            result = original(f, *inputs)
        finally:
            recorder.paused -= 1
        outputs = result if isinstance(result, list) else [result]
        out_slots = []
        for y in outputs:
            recorder.created.add(id(y))
            recorder.keep.append(y)
            out_slots.append(recorder.new_slot(y._data))
        attrs = []
        for name, value in vars(f).items():
            if _holds_arrays(value) and before.get(name) is not value:
                attrs.append((name, _attr_slots(recorder, value)))
        signature = (type(f), tuple(constants), _fingerprint(list(constants.values())))
        op = _Op("forward", f, sources + bound_sources, out_slots, attrs, signature)
        op.bound = bound
        recorder.ops.append(op)
        return result

    return call


_NUMBERS = (int, float, complex, np.generic)


def _bind(recorder: _Recorder, value: Any) -> tuple[Any, list]:
    """(template, sources) for an attribute holding arrays: the arrays the step computed or received (they
    have slots) become sources, read at replay; `_BOUND` marks their places in the template."""
    if is_array(value):
        slot = recorder.slot_of.get(id(value))
        return (_BOUND, [("slot", slot)]) if slot is not None else (value, [])
    template, found = [], []
    for v in value:
        slot = recorder.slot_of.get(id(v)) if is_array(v) else None
        template.append(_BOUND if slot is not None else v)
        if slot is not None:
            found.append(("slot", slot))
    return (type(value)(template), found) if found else (value, [])


class _BoundMarker:
    def __repr__(self) -> str:  # the fingerprint of a template holds this, the same in both recordings
        return "<array of the step>"


_BOUND = _BoundMarker()


def _fill(template: Any, arrays: list) -> Any:
    """The attribute's value for this replay: `template` with this replay's arrays in the marked places."""
    if template is _BOUND:
        return arrays[0]
    it = iter(arrays)
    return type(template)(next(it) if v is _BOUND else v for v in template)


def _as_data(x: Any) -> Any:
    return x if is_array(x) else core.as_variable(x)._data


def _holds_arrays(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return any(is_array(v) for v in value)
    return is_array(value)


def _attr_slots(recorder: _Recorder, value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [recorder.new_slot(v) if is_array(v) else None for v in value]
    return recorder.new_slot(value)


def _fingerprint(values: list) -> tuple:
    """What identifies constant values across the two recordings: shape, dtype and the host copy's bytes."""
    out = []
    for v in values:
        for a in v if isinstance(v, tuple | list) else [v]:
            if is_array(a):
                host = to_numpy(a)
                out.append((host.shape, str(host.dtype), host.tobytes()))
            else:
                out.append(repr(a))
    return tuple(out)


def _recording_array_op(original: Callable) -> Callable:
    def array_op(fn: Callable, *arrays: Any) -> Any:
        recorder = _current(_thread())
        result = original(fn, *arrays)
        if recorder is None or not recorder.active():
            return result
        sources = [recorder.source(a) if is_array(a) else ("const", a) for a in arrays]
        recorder.ops.append(_Op("array", fn, sources, [recorder.new_slot(result)], signature=fn))
        return result

    return array_op


def _recording_backward(original: Callable) -> Callable:
    @functools.wraps(original)
    def backward(self: Variable, retain_grad: bool = False, create_graph: bool = False) -> None:
        recorder = _current(_thread())
        if recorder is None or not recorder.active():
            return original(self, retain_grad, create_graph)
        if create_graph:
            raise CaptureError("capture: backward(create_graph=True) inside a captured step is not supported")
        recorder.backward_ran = True
        # Gradients already held by Variables from before the step are read at replay, not fixed.
        held = {id(v): v.grad for v in recorder.external.values() if v.grad is not None}
        for v in recorder.external.values():
            if v.grad is not None and id(v.grad._data) not in recorder.slot_of:
                read = _Op(
                    "read_grad", recorder.target(v), [], [recorder.new_slot(v.grad._data)], signature="read_grad"
                )
                recorder.ops.append(read)
        original(self, retain_grad, create_graph)
        stored = []
        for v in list(recorder.external.values()):
            if v.grad is not None and v.grad is not held.get(id(v)):
                slot = recorder.slot_of.get(id(v.grad._data))
                if slot is None:
                    raise CaptureError(f"capture: the gradient of {_name(v)} was computed outside the recorded ops")
                stored.append((slot, v))
        # in the order the gradients were computed, which every call repeats (the order in which the step met
        # the Variables may differ between the first call and the next: lazily shaped or moved parameters)
        for slot, v in sorted(stored, key=lambda pair: pair[0]):
            recorder.ops.append(_Op("set_grad", recorder.target(v), [("slot", slot)], [], signature="set_grad"))
        return None

    return backward


def _recording_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def init(self: Variable, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        recorder = _current(_thread())
        if recorder is not None and recorder.active():
            recorder.created.add(id(self))  # made during the step: its data is a constant or a computed value
            recorder.keep.append(self)

    return init


def _recording_data_setter(original: Callable) -> Callable:
    @functools.wraps(original)
    def set_data(self: Variable, value: Any) -> None:
        recorder = _current(_thread())
        previous = self._data
        original(self, value)
        if recorder is None or id(self) in recorder.created:
            return
        if recorder.paused:  # inside a recorded op (batch_norm's running statistics): its replay assigns again
            recorder.updated.add(id(self))
            return
        if previous is None:  # a lazily shaped parameter gets its first value: from now on it is just there
            recorder.external.pop(id(self), None)
            recorder.watch(self)
            return
        if _moved_off_the_host(previous, self._data):
            # A layer moves its NumPy-made parameters to the library of its first input, once: the next
            # recording never sees it, so this one notes nothing (the Variable is met when an op reads it).
            if id(self) in recorder.external:
                recorder.first_data[id(self)] = (self._data, recorder.first_data[id(self)][1])
            return
        recorder.watch(self)
        slot = recorder.slot_of.get(id(self._data))
        if slot is None and self._data is previous:  # `v.data -= ...`: the array was changed in place
            recorder.check_external_data()
        if slot is None:
            raise CaptureError(
                f"capture: the step assigns to the data of {_name(self)} an array not computed by xdezero's "
                "functions (batch_norm's running statistics, for one): a replay would not repeat it; call the "
                "step uncaptured"
            )
        recorder.updated.add(id(self))
        recorder.ops.append(_Op("set_data", recorder.target(self), [("slot", slot)], [], signature="set_data"))

    return set_data


def _moved_off_the_host(previous: Any, value: Any) -> bool:
    """Whether `value` is `previous`, a NumPy array, taken to another library (a layer following its input)."""
    return (
        isinstance(previous, np.ndarray)
        and not isinstance(value, np.ndarray)
        and tuple(value.shape) == previous.shape
        and np.array_equal(to_numpy(value), previous)
    )


def _recording_cleargrad(original: Callable) -> Callable:
    @functools.wraps(original)
    def cleargrad(self: Variable) -> None:
        recorder = _current(_thread())
        original(self)
        if recorder is not None and recorder.active() and id(self) not in recorder.created:
            recorder.watch(self)
            recorder.ops.append(_Op("clear_grad", recorder.target(self), [], [], signature="clear_grad"))

    return cleargrad


def _recording_update(original: Callable) -> Callable:
    @functools.wraps(original)
    def update(self: Optimizer) -> None:
        recorder = _current(_thread())
        if recorder is None or not recorder.active():
            return original(self)
        for p in self.target.params():
            recorder.watch(p)
            recorder.updated.add(id(p))
            if p.grad is not None and id(p.grad._data) not in recorder.slot_of:
                raise CaptureError(
                    f"capture: the gradient of {_name(p)} was replaced outside the recorded ops before "
                    "Optimizer.update (a communicator's allreduce_grad, or an assignment to .grad): a replay would "
                    "miss it; call such a step uncaptured"
                )
        recorder.paused += 1
        try:
            original(self)
        finally:
            recorder.paused -= 1
        # Replayed as `optimizer.update()` itself, so that a subclass's own update (Adam counts its steps) runs.
        recorder.ops.append(_Op("call", self, [], [], signature=type(self)))
        return None

    return update


_patch_lock = threading.Lock()


def _recording_data(prop: property) -> property:
    return prop.setter(_recording_data_setter(prop.fset))


# What recording swaps in, and back out: (owner, attribute, the recording version of the original).
_HOOKS = (
    (Function, "__call__", _recording_call),
    (core, "array_op", _recording_array_op),
    (Variable, "backward", _recording_backward),
    (Variable, "cleargrad", _recording_cleargrad),
    (Variable, "__init__", _recording_init),
    (Variable, "data", _recording_data),
    (Optimizer, "update", _recording_update),
)


_originals: list = []  # what the hooks replaced, while any thread records


def _record(fn: Callable, args: tuple, kwargs: dict, arrays: list, variables: list | None) -> tuple[_Recorder, Any]:
    """Run fn(*args, **kwargs) eagerly while recording what it computes; `arrays`, the array arguments' data,
    take the first slots. Each thread records its own step; the hooks are in place while any thread records,
    and pass every call of the other threads straight through."""
    recorder, thread = _Recorder(), _thread()
    with _patch_lock:
        if thread in _recorders:
            raise CaptureError(
                "capture: a captured step called inside another one while it records (captured steps do not nest)"
            )
        if not _recorders:
            _originals[:] = [(owner, name, getattr(owner, name)) for owner, name, _ in _HOOKS]
            for (owner, name, original), (_, _, recording_version) in zip(_originals, _HOOKS):
                setattr(owner, name, recording_version(original))
        _recorders[thread] = recorder
    try:
        for a in arrays:
            recorder.new_slot(a)
        for k, v in enumerate(variables or ()):
            if v is not None:  # its data is argument k; the gradient the step leaves on it goes to each call's own
                recorder.arguments[id(v)] = k
                recorder.watch(v)
        result = fn(*args, **kwargs)
        recorder.check_external_data()
    finally:
        with _patch_lock:
            del _recorders[thread]
            if not _recorders:
                for owner, name, original in _originals:
                    setattr(owner, name, original)
                _originals.clear()
    return recorder, result


def _name(v: Variable) -> str:
    return repr(v.name) if v.name else f"a Variable of shape {v.shape}"


# --- the tape ------------------------------------------------------------------------------------------


class _Tape:
    """The ops of one recorded call, with the slots of the arguments and the result's structure."""

    def __init__(self, recorder: _Recorder, n_args: int, result: Any) -> None:
        self.ops = recorder.ops
        self.n_slots = recorder.n_slots
        self.n_args = n_args
        self.result = _result_spec(recorder, result)
        # A step that returns a Variable with a graph and leaves the backward to its caller: the recording calls
        # keep their graphs, and a replay's results refuse backward (a replay builds no graph).
        self.graphless = not recorder.backward_ran and bool(Config.enable_backprop) and _needs_grad(result)
        self.result_slots = _result_slots(self.result)
        self._plan_frees()
        self.stashed = [
            (op.target, name) for op in self.ops if op.kind == "forward" for name, _ in [*op.attrs, *op.bound]
        ]
        self.arguments: list = []  # the Variables passed as array arguments, during a replay that has them
        self.on_arguments = any(isinstance(op.target, tuple) for op in self.ops if op.kind != "forward")
        self.program = [_compile(op, self.arguments) for op in self.ops]
        self.expected = _expected_state(self.ops, recorder)
        # The variant of the step (see CapturedStep): which gradients it found present when it first touched them.
        self.state = tuple(has_grad for _, _, has_grad in self.expected if has_grad is not None)
        for op in self.ops:  # the graph of the recording call is not needed by the replay
            if op.kind == "forward" and not self.graphless:
                _release_graph(op.target)
        self.graph: GraphReplay | None = None  # set where the arguments' library has CUDA graphs (tape_graphs.py)

    def _plan_frees(self) -> None:
        last_use: dict[int, int] = {}
        for k, op in enumerate(self.ops):
            for kind, value in op.inputs:
                if kind == "slot":
                    last_use[value] = k
        kept = set(_result_slots(self.result))
        for slot, k in last_use.items():
            if slot not in kept:
                self.ops[k].frees.append(slot)

    def run(self, values: list) -> None:
        """The recorded ops on `values` (the arguments in the first slots)."""
        for run in self.program:
            run(values)
        for f, name in self.stashed:  # what forwards left for later ops is not held between steps
            setattr(f, name, None)

    def run_on(self, arrays: list) -> list:
        """The slot values after running the recorded ops on `arrays` (the step's array arguments)."""
        values: list = [None] * self.n_slots
        values[: self.n_args] = arrays
        self.run(values)
        return values

    def replay(self, arrays: list, variables: list | None) -> Any:
        if self.on_arguments:
            self.arguments[:] = variables
            try:
                return _build_result(self.result, self.run_on(arrays), self.graphless)
            finally:
                self.arguments.clear()  # the caller's Variables are not held between calls
        values = self.graph.replay(arrays) if self.graph is not None else None
        return _build_result(self.result, self.run_on(arrays) if values is None else values, self.graphless)

    def fits(self, variables: list | None) -> bool:
        """Whether the Variables the tape acts on are as they were when it was recorded: the same
        `requires_grad`, and a gradient where the recording read one, none where it set the first."""
        for target, requires_grad, has_grad in self.expected:
            v = variables[target[1]] if isinstance(target, tuple) else target
            if requires_grad is not None and v.requires_grad != requires_grad:
                return False
            if has_grad is not None and (v.grad is not None) is not has_grad:
                return False
        return True


def _needs_grad(result: Any) -> bool:
    if isinstance(result, tuple | list):
        return any(_needs_grad(r) for r in result)
    if isinstance(result, dict):
        return any(_needs_grad(r) for r in result.values())
    return isinstance(result, Variable) and result.creator is not None and result.requires_grad


def _expected_state(ops: list, recorder: _Recorder) -> list:
    """(target, requires_grad or None, has a gradient or None) to check before each replay: the flags of the
    Variables from before the step, and whether each Variable whose gradient the tape touches before clearing it
    had one (a read means it had, a first set means it had none)."""
    expected = [(recorder.target(v), v.requires_grad, None) for v in recorder.external.values()]
    seen: set = set()
    for op in ops:
        if op.kind in ("read_grad", "set_grad", "clear_grad"):
            key = op.target if isinstance(op.target, tuple) else id(op.target)
            if key not in seen:
                seen.add(key)
                if op.kind != "clear_grad":
                    expected.append((op.target, None, op.kind == "read_grad"))
    return expected


def _reader(sources: list) -> Callable[[list], list]:
    """A function of the slot values giving an op's inputs."""
    if all(kind == "slot" for kind, _ in sources):
        slots = [slot for _, slot in sources]
        if len(slots) == 1:
            (i,) = slots
            return lambda values: [values[i]]
        if len(slots) == 2:
            i, j = slots
            return lambda values: [values[i], values[j]]
        return lambda values: [values[i] for i in slots]
    parts = [(0 if kind == "slot" else 1 if kind == "data" else 2, value) for kind, value in sources]

    def read(values: list) -> list:
        return [values[x] if k == 0 else x._data if k == 1 else x for k, x in parts]

    return read


def _count_bound(binding: tuple[str, Any]) -> int:
    template = binding[1]
    return 1 if template is _BOUND else sum(v is _BOUND for v in template)


def _binding_reader(read: Callable, target: Function, bound: list, n_inputs: int) -> Callable[[list], list]:
    """`read` (of `n_inputs` values), which also sets the op's bound attributes from the values after its
    forward's own inputs."""
    counts = [_count_bound(b) for b in bound]
    n_forward = n_inputs - sum(counts)

    def read_and_bind(values: list) -> list:
        inputs = read(values)
        start = n_forward
        for (name, template), n in zip(bound, counts):
            setattr(target, name, _fill(template, inputs[start : start + n]))
            start += n
        return inputs[:n_forward]

    return read_and_bind


def _compile(op: _Op, arguments: list) -> Callable[[list], None]:
    """The op as one function of the slot values (the replay loop calls nothing else); `arguments` holds the
    Variables passed as array arguments while a replay runs, for ops on ("argument", k)."""
    if op.kind != "forward" and isinstance(op.target, tuple):
        return _compile_on_argument(op, arguments)
    read, frees, outputs, target = _reader(op.inputs), tuple(op.frees), op.outputs, op.target
    if op.kind == "forward":
        forward, attrs, first = target.forward, op.attrs, outputs[0]
        if op.bound:
            read = _binding_reader(read, target, op.bound, len(op.inputs))

        def run(values: list) -> None:
            inputs = read(values)
            ys = forward(*inputs)
            if LEGACY_NUMPY and type(ys) is np.float64:  # as Function.__call__ narrows it (NumPy 1.x)
                ys = keep_input_precision(ys, inputs)
            if len(outputs) == 1:
                values[first] = ys
            else:
                for slot, y in zip(outputs, ys):
                    values[slot] = y
            for name, slots in attrs:
                value = getattr(target, name)
                if isinstance(slots, list):
                    for slot, v in zip(slots, value):
                        if slot is not None:
                            values[slot] = v
                else:
                    values[slots] = value
            for slot in frees:
                values[slot] = None

    elif op.kind == "array":

        def run(values: list) -> None:
            values[outputs[0]] = target(*read(values))
            for slot in frees:
                values[slot] = None

    elif op.kind == "set_grad":
        source = op.inputs[0][1]

        def run(values: list) -> None:
            target.grad = Variable(values[source], requires_grad=False)
            for slot in frees:
                values[slot] = None

    elif op.kind == "set_data":
        source = op.inputs[0][1]

        def run(values: list) -> None:
            target.data = values[source]
            for slot in frees:
                values[slot] = None

    elif op.kind == "clear_grad":

        def run(values: list) -> None:
            target.grad = None

    elif op.kind == "read_grad":

        def run(values: list) -> None:
            values[outputs[0]] = target.grad._data

    else:  # "call": an optimizer's update

        def run(values: list) -> None:
            target.update()

    return run


def _compile_on_argument(op: _Op, arguments: list) -> Callable[[list], None]:
    """An op on the gradient or data of the Variable passed as array argument k, which each call passes anew."""
    k, frees = op.target[1], tuple(op.frees)
    source = op.inputs[0][1] if op.inputs else None
    output = op.outputs[0] if op.outputs else None

    def run(values: list) -> None:
        v = arguments[k]
        if op.kind == "set_grad":
            v.grad = Variable(values[source], requires_grad=False)
        elif op.kind == "set_data":
            v.data = values[source]
        elif op.kind == "clear_grad":
            v.grad = None
        else:  # read_grad
            values[output] = v.grad._data
        for slot in frees:
            values[slot] = None

    return run


def _release_graph(f: Function) -> None:
    for name in ("inputs", "outputs", "_input_refs", "_sources"):
        if name in vars(f):
            setattr(f, name, None)


def _result_spec(recorder: _Recorder, result: Any) -> Any:
    if isinstance(result, tuple | list):
        return (type(result), [_result_spec(recorder, r) for r in result])
    if isinstance(result, dict):
        return (dict, {k: _result_spec(recorder, v) for k, v in result.items()})
    if result is None:
        return None
    data = result._data if isinstance(result, Variable) else result
    slot = recorder.slot_of.get(id(data)) if is_array(data) else None
    if slot is None and isinstance(result, Variable):
        raise CaptureError(
            "capture: the step returns a Variable whose value no recorded operation computed (F.accuracy computes "
            "its value outside the graph, for one): a replay could not give it; compute it outside the step from a "
            "returned Variable (e.g. the logits)"
        )
    if slot is None:
        raise CaptureError(
            "capture: the step must return Variables or arrays it computed with xdezero's functions (or tuples, "
            f"lists or dicts of them), got {type(result).__name__}; return the Variable and convert it outside"
        )
    return ("variable" if isinstance(result, Variable) else "array", slot)


def _result_slots(spec: Any) -> list:
    if spec is None:
        return []
    kind, value = spec
    if kind in ("variable", "array"):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [s for item in items for s in _result_slots(item)]


def _build_result(spec: Any, values: list, graphless: bool = False) -> Any:
    if spec is None:
        return None
    kind, value = spec
    if kind == "variable":
        return (_GraphlessResult if graphless else Variable)(values[value], requires_grad=False)
    if kind == "array":
        return values[value]
    if kind is dict:
        return {k: _build_result(v, values, graphless) for k, v in value.items()}
    return kind(_build_result(v, values, graphless) for v in value)


class _GraphlessResult(Variable):
    """A replayed result of a step that ran no backward: its value, without the graph a backward would need."""

    def backward(self, *args: Any, **kwargs: Any) -> None:
        raise CaptureError(
            "capture: backward on a result of a replayed step: a replay builds no graph, so the gradient cannot be "
            "computed outside the step; call backward (and the optimizer's update) inside the captured step"
        )


def _constants_differing(a: _Op, b: _Op) -> str:
    names, first, second = a.signature[1], a.signature[2], b.signature[2]
    if len(first) == len(names) == len(second):  # one value per name: say which
        return ", ".join(
            f"{n} {x[:60]} then {y[:60]}" for n, x, y in zip(names, first, second) if x != y and isinstance(x, str)
        )
    return ", ".join(names)


def _same_tapes(first: _Tape, second: _Tape) -> str | None:
    """None when the two recordings did the same thing, else what differed (for CaptureError)."""
    reads = [sum(op.kind == "read_grad" for op in tape.ops) for tape in (first, second)]
    if reads[0] != reads[1]:
        return (
            "the gradients it adds to were empty on one call and held values on the other (gradients left from "
            "the previous call: call model.cleargrads() inside the step)"
        )
    if len(first.ops) != len(second.ops):
        return f"it ran {len(first.ops)} operations the first time and {len(second.ops)} the second"
    for k, (a, b) in enumerate(zip(first.ops, second.ops)):
        what = _describe(a)
        same_op = a.signature[:2] == b.signature[:2] if a.kind == "forward" else a.signature == b.signature
        if a.kind != b.kind or not same_op:
            return f"operation {k} was {what} the first time and {_describe(b)} the second"
        if a.kind == "forward" and a.signature[2] != b.signature[2]:
            return (
                f"operation {k} ({what}) was built with different constants ({_constants_differing(a, b)}): a number "
                "or an array computed from the inputs outside xdezero's functions (such as w.sum() of a batch) is "
                "fixed in a replay; compute it with xdezero's functions or pass it as an argument"
            )
        for i, (sa, sb) in enumerate(zip(a.inputs, b.inputs)):
            if sa[0] != sb[0] or (sa[0] == "slot" and sa[1] != sb[1]) or (sa[0] == "data" and sa[1] is not sb[1]):
                return f"input {i} of operation {k} ({what}) came from elsewhere the second time"
            if sa[0] == "const" and _fingerprint([sa[1]]) != _fingerprint([sb[1]]):
                return (
                    f"input {i} of operation {k} ({what}) is an array that changed between the calls: it was "
                    "computed from the inputs outside xdezero's functions, or drawn at random outside an op"
                )
    return None


def _describe(op: _Op) -> str:
    if op.kind == "forward":
        return type(op.target).__name__
    if op.kind == "array":
        return f"the backward pass's {op.target.__name__.strip('_')}"
    return op.kind.replace("_", " ")


# --- the user-facing wrapper ---------------------------------------------------------------------------


def _arguments(args: tuple, kwargs: dict) -> list:
    return [*args, *(kwargs[k] for k in sorted(kwargs))]


def _signature(args: tuple, kwargs: dict) -> tuple[tuple, list, list | None]:
    """What a tape is recorded for (the arrays' kinds, shapes, dtypes and devices, whether each came in a
    Variable, which arguments are the same array, the other arguments' values, and the configuration); the array
    arguments' data in order; and the Variables among them (None when there are none), from one pass."""
    parts: list = [tuple(sorted(kwargs))] if kwargs else []
    arrays: list = []
    variables: list | None = None
    for value in _arguments(args, kwargs) if kwargs else args:
        if isinstance(value, Variable):
            if variables is None:
                variables = [None] * len(arrays)
            variables.append(value)
            data = value._data
        else:
            data = value
            if variables is not None and is_array(data):
                variables.append(None)
        if type(data) is np.ndarray:  # the common case, kept cheap: NumPy arrays live on the host
            parts.append((np.ndarray, data.shape, data.dtype, data is not value))
            arrays.append(data)
        elif is_array(data):
            parts.append((type(data), tuple(data.shape), str(data.dtype), str(device_of(data)), data is not value))
            arrays.append(data)
        else:
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"capture: the step's arguments must be arrays, Variables or hashable values, got "
                    f"{type(value).__name__}"
                ) from None
            parts.append(("value", value))
    if len(arrays) > 1:
        ids = [id(a) for a in arrays]
        if len(set(ids)) < len(ids):  # the same array twice: the tape reads it from one slot
            parts.append(("same arrays", tuple(ids.index(i) for i in ids)))
    return (*parts, bool(Config.train), bool(Config.enable_backprop)), arrays, variables


class CapturedStep:
    """`fn` recorded per signature of its arguments and replayed (see the module's docstring)."""

    def __init__(self, fn: Callable, cuda_graphs: bool = True) -> None:
        if not callable(fn):
            raise TypeError(f"capture: expected a function, got {type(fn).__name__}")
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"capture: cuda_graphs must be True or False, got {cuda_graphs!r}")
        self.fn = fn
        self.cuda_graphs = cuda_graphs
        self.tapes: dict[tuple, list[_Tape]] = {}  # signature -> its tapes (variants, see __call__)
        self._first: dict[tuple, list[_Tape]] = {}  # first recordings awaiting their confirmation
        self._warned = False
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key, arrays, variables = _signature(args, kwargs)
        variants = self.tapes.get(key)
        if variants is not None:
            for tape in variants:
                if tape.fits(variables):
                    return tape.replay(arrays, variables)
        # New arguments, or the state the step starts from differs from every recording's (a gradient left from
        # an earlier call, a changed requires_grad): record; each such variant gets its own tape.
        recorder, result = _record(self.fn, args, kwargs, arrays, variables)
        new = _Tape(recorder, len(arrays), result)
        pending = self._first.get(key, [])
        first = next((tape for tape in pending if tape.state == new.state), None)
        if first is None:
            self._keep(self._first, key, new)
            return result
        pending.remove(first)
        difference = _same_tapes(first, new)
        if difference is not None:
            error = CaptureError(
                f"capture: the step cannot be replayed: {difference}. Its Python code must run the same "
                "operations on every call (no branches on array values) and compute every array from its inputs "
                "with xdezero's functions; call the step uncaptured otherwise. This call ran eagerly and is "
                "complete (its update is applied; its result is this error's `result`): carry on uncaptured from "
                "the next call"
            )
            error.result = result
            raise error
        kit = graph_kit(arrays) if self.cuda_graphs and not new.on_arguments else None
        if kit is not None:
            new.graph = GraphReplay(kit, new)
        self._keep(self.tapes, key, new)
        return result

    def _keep(self, tapes: dict, key: tuple, tape: _Tape) -> None:
        """Add `tape` to the variants of `key`, forgetting the oldest beyond MAX_VARIANTS, and the oldest signature
        beyond MAX_SIGNATURES (with a warning, once)."""
        variants = tapes.setdefault(key, [])
        variants.append(tape)
        del variants[:-MAX_VARIANTS]
        if len(tapes) > MAX_SIGNATURES:
            del tapes[next(iter(tapes))]
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"capture: {self.__name__!r} was recorded for more than {MAX_SIGNATURES} signatures (shapes, "
                    "dtypes, or values of its other arguments); only the latest are kept. A number argument that "
                    "changes on every call (a learning rate, a step count) makes every call record: set it on the "
                    "optimizer, or pass it as an array",
                    RuntimeWarning,
                    stacklevel=3,
                )

    @property
    def recorded(self) -> int:
        """How many signatures have a tape (replay from their third call on)."""
        return sum(map(len, self.tapes.values()))

    @property
    def graphs(self) -> int:
        """How many signatures replay as a CUDA graph (from their fourth call on; CuPy and torch on CUDA)."""
        return sum(tape.graph is not None and tape.graph.graphed is not None for tape in self._all())

    @property
    def graph_notes(self) -> list[str]:
        """Why signatures on a CUDA device replay without a CUDA graph (empty when all of them have one)."""
        return [tape.graph.note for tape in self._all() if tape.graph is not None and tape.graph.note]

    def _all(self) -> list:
        return [tape for variants in self.tapes.values() for tape in variants]


def capture(fn: Callable | None = None, *, cuda_graphs: bool = True) -> Any:
    """Record `fn` (a training step) and replay it on later calls with arrays of the same shapes: see
    `xdezero.capture`'s module documentation. Usable as a decorator, with or without arguments. On CuPy and
    torch CUDA arrays the replay runs as one CUDA graph where it can (`cuda_graphs=False`: never; see
    `xdezero.tape_graphs`)."""
    if fn is None:
        return functools.partial(CapturedStep, cuda_graphs=cuda_graphs)
    return CapturedStep(fn, cuda_graphs=cuda_graphs)
