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

Limits: the step's arguments are arrays (or Variables holding them) and hashable values; it returns a Variable,
an array, or a tuple/list/dict of them. A Variable whose gradient the step reads or leaves behind must exist
before the step (parameters do). An op built with an array of the step (`embed_id`'s ids, `x[ids]`, the
index a GetItemGrad scatters to) reads it from this call's values at replay; other arrays an op is built with
are constants, and must be equal in the two recordings.

One file (about 770 lines, a third of them docstrings and messages) on purpose: the recording hooks, the op
records, the comparison of the two recordings and the replay program all read and write the same records.
"""

from __future__ import annotations

import functools
import threading
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
    """A step that cannot be replayed: the message names the op and what differed."""


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
        self.thread = threading.get_ident()
        self.ops: list[_Op] = []
        self.slot_of: dict[int, int] = {}  # id(array) -> slot
        self.keep: list = []  # every recorded array stays alive while recording, so that ids stay unique
        self.n_slots = 0
        self.external: dict[int, Variable] = {}  # Variables that existed before the step and ops read
        self.first_data: dict[int, tuple] = {}  # their data (and a host copy) when the step first met them
        self.updated: set[int] = set()  # ids of those whose data an optimizer's update or a recorded op sets
        self.created: set[int] = set()  # ids of Variables made during the step (kept alive in `keep`)
        self.paused = 0

    def active(self) -> bool:
        return not self.paused and threading.get_ident() == self.thread

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


_recording: _Recorder | None = None


def _recording_call(original: Callable) -> Callable:
    @functools.wraps(original)
    def call(f: Function, *inputs: Any) -> Any:
        recorder = _recording
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
            if _holds_arrays(value):
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
        recorder = _recording
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
        recorder = _recording
        if recorder is None or not recorder.active():
            return original(self, retain_grad, create_graph)
        if create_graph:
            raise CaptureError("capture: backward(create_graph=True) inside a captured step is not supported")
        # Gradients already held by Variables from before the step are read at replay, not fixed.
        held = {id(v): v.grad for v in recorder.external.values() if v.grad is not None}
        for v in recorder.external.values():
            if v.grad is not None and id(v.grad._data) not in recorder.slot_of:
                recorder.ops.append(_Op("read_grad", v, [], [recorder.new_slot(v.grad._data)], signature="read_grad"))
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
            recorder.ops.append(_Op("set_grad", v, [("slot", slot)], [], signature="set_grad"))
        return None

    return backward


def _recording_init(original: Callable) -> Callable:
    @functools.wraps(original)
    def init(self: Variable, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        recorder = _recording
        if recorder is not None and recorder.active():
            recorder.created.add(id(self))  # made during the step: its data is a constant or a computed value
            recorder.keep.append(self)

    return init


def _recording_data_setter(original: Callable) -> Callable:
    @functools.wraps(original)
    def set_data(self: Variable, value: Any) -> None:
        recorder = _recording
        previous = self._data
        original(self, value)
        if recorder is None or threading.get_ident() != recorder.thread or id(self) in recorder.created:
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
        recorder.ops.append(_Op("set_data", self, [("slot", slot)], [], signature="set_data"))

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
        recorder = _recording
        original(self)
        if recorder is not None and recorder.active() and id(self) not in recorder.created:
            recorder.watch(self)
            recorder.ops.append(_Op("clear_grad", self, [], [], signature="clear_grad"))

    return cleargrad


def _recording_update(original: Callable) -> Callable:
    @functools.wraps(original)
    def update(self: Optimizer) -> None:
        recorder = _recording
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


def _record(fn: Callable, args: tuple, kwargs: dict, arrays: list) -> tuple[_Recorder, Any]:
    """Run fn(*args, **kwargs) eagerly while recording what it computes; `arrays`, the array arguments' data,
    take the first slots."""
    global _recording
    recorder = _Recorder()
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in _HOOKS]
    with _patch_lock:
        if _recording is not None:
            raise CaptureError("capture: another captured step is recording (captured steps do not nest)")
        _recording = recorder
        for (owner, name, original), (_, _, recording_version) in zip(originals, _HOOKS):
            setattr(owner, name, recording_version(original))
    try:
        for a in arrays:
            recorder.new_slot(a)
        result = fn(*args, **kwargs)
        recorder.check_external_data()
    finally:
        with _patch_lock:
            for owner, name, original in originals:
                setattr(owner, name, original)
            _recording = None
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
        self.result_slots = _result_slots(self.result)
        self._plan_frees()
        self.stashed = [
            (op.target, name) for op in self.ops if op.kind == "forward" for name, _ in [*op.attrs, *op.bound]
        ]
        self.program = [_compile(op) for op in self.ops]
        for op in self.ops:  # the graph of the recording call is not needed by the replay
            if op.kind == "forward":
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

    def replay(self, arrays: list) -> Any:
        values = self.graph.replay(arrays) if self.graph is not None else None
        return _build_result(self.result, self.run_on(arrays) if values is None else values)


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


def _compile(op: _Op) -> Callable[[list], None]:
    """The op as one function of the slot values (the replay loop calls nothing else)."""
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


def _build_result(spec: Any, values: list) -> Any:
    if spec is None:
        return None
    kind, value = spec
    if kind == "variable":
        return Variable(values[value], requires_grad=False)
    if kind == "array":
        return values[value]
    if kind is dict:
        return {k: _build_result(v, values) for k, v in value.items()}
    return kind(_build_result(v, values) for v in value)


def _same_tapes(first: _Tape, second: _Tape) -> str | None:
    """None when the two recordings did the same thing, else what differed (for CaptureError)."""
    if len(first.ops) != len(second.ops):
        return f"it ran {len(first.ops)} operations the first time and {len(second.ops)} the second"
    for k, (a, b) in enumerate(zip(first.ops, second.ops)):
        what = _describe(a)
        same_op = a.signature[:2] == b.signature[:2] if a.kind == "forward" else a.signature == b.signature
        if a.kind != b.kind or not same_op:
            return f"operation {k} was {what} the first time and {_describe(b)} the second"
        if a.kind == "forward" and a.signature[2] != b.signature[2]:
            return f"operation {k} ({what}) was built with different arrays (indices or constants from the inputs)"
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


def _signature(args: tuple, kwargs: dict) -> tuple[tuple, list]:
    """What a tape is recorded for (the arrays' kinds, shapes, dtypes and devices, the other arguments' values,
    and the configuration), and the array arguments' data in order, from one pass over the arguments."""
    parts: list = [tuple(sorted(kwargs))] if kwargs else []
    arrays: list = []
    for value in _arguments(args, kwargs) if kwargs else args:
        data = value._data if isinstance(value, Variable) else value
        if type(data) is np.ndarray:  # the common case, kept cheap: NumPy arrays live on the host
            parts.append((np.ndarray, data.shape, data.dtype))
            arrays.append(data)
        elif is_array(data):
            parts.append((type(data), tuple(data.shape), str(data.dtype), str(device_of(data))))
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
    return (*parts, bool(Config.train), bool(Config.enable_backprop)), arrays


class CapturedStep:
    """`fn` recorded per signature of its arguments and replayed (see the module's docstring)."""

    def __init__(self, fn: Callable, cuda_graphs: bool = True) -> None:
        if not callable(fn):
            raise TypeError(f"capture: expected a function, got {type(fn).__name__}")
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"capture: cuda_graphs must be True or False, got {cuda_graphs!r}")
        self.fn = fn
        self.cuda_graphs = cuda_graphs
        self.tapes: dict[tuple, _Tape] = {}
        self._first: dict[tuple, _Tape] = {}
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key, arrays = _signature(args, kwargs)
        tape = self.tapes.get(key)
        if tape is not None:
            return tape.replay(arrays)
        recorder, result = _record(self.fn, args, kwargs, arrays)
        new = _Tape(recorder, len(arrays), result)
        first = self._first.pop(key, None)
        if first is None:
            self._first[key] = new
            return result
        difference = _same_tapes(first, new)
        if difference is not None:
            raise CaptureError(
                f"capture: the step cannot be replayed: {difference}. Its Python code must run the same "
                "operations on every call (no branches on array values) and compute every array from its inputs "
                "with xdezero's functions; call the step uncaptured otherwise"
            )
        kit = graph_kit(arrays) if self.cuda_graphs else None
        if kit is not None:
            new.graph = GraphReplay(kit, new)
        self.tapes[key] = new
        return result

    @property
    def recorded(self) -> int:
        """How many signatures have a tape (replay from their third call on)."""
        return len(self.tapes)

    @property
    def graphs(self) -> int:
        """How many signatures replay as a CUDA graph (from their fourth call on; CuPy and torch on CUDA)."""
        return sum(tape.graph is not None and tape.graph.graphed is not None for tape in self.tapes.values())

    @property
    def graph_notes(self) -> list[str]:
        """Why signatures on a CUDA device replay without a CUDA graph (empty when all of them have one)."""
        return [tape.graph.note for tape in self.tapes.values() if tape.graph is not None and tape.graph.note]


def capture(fn: Callable | None = None, *, cuda_graphs: bool = True) -> Any:
    """Record `fn` (a training step) and replay it on later calls with arrays of the same shapes: see
    `xdezero.capture`'s module documentation. Usable as a decorator, with or without arguments. On CuPy and
    torch CUDA arrays the replay runs as one CUDA graph where it can (`cuda_graphs=False`: never; see
    `xdezero.tape_graphs`)."""
    if fn is None:
        return functools.partial(CapturedStep, cuda_graphs=cuda_graphs)
    return CapturedStep(fn, cuda_graphs=cuda_graphs)
