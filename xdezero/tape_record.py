"""The recording half of `xdezero.capture` (see xdezero/tape.py): while a thread records its captured step, hooks
on Function calls, the backward pass, Variable's data and gradients and Optimizer.update note every array
operation of that thread as an `Op` on a `Recorder`.

One file on purpose (about 420 lines): the hooks all read and write the same recorder.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xdezero import core
from xdezero.backends import Bits, dtype_name, is_array, to_host
from xdezero.core import Function, Variable
from xdezero.optimizers import Optimizer

__all__ = ["BOUND", "CaptureError", "Op", "Recorder", "fill", "fingerprint", "record", "variable_name"]


class CaptureError(RuntimeError):
    """A step that cannot be replayed: the message names the op and what differed. Raised after the step's
    second recording, `result` holds what that call returned (it ran eagerly, and completely); else None."""

    result: Any = None


# --- recording -----------------------------------------------------------------------------------------

# An input of a recorded op: ("slot", index) a value computed during the step (or an argument, or a gradient
# read by a 'read_grad' op); ("data", Variable) the data of a Variable that exists before the step, read at
# replay; ("const", value) anything else, fixed when recorded.


class Op:
    """One recorded operation: `kind` is 'forward' (a Function's forward), 'array' (the backward pass's own),
    'read_grad', 'set_grad', 'set_data', 'clear_grad' (of a Variable from before the step) or 'call' (an
    optimizer's update)."""

    __slots__ = ("kind", "target", "inputs", "outputs", "attrs", "bound", "frees", "signature")

    kind: str
    target: Any  # a Function, an array operation, a Variable, ("argument", k) or an Optimizer, by `kind`
    inputs: list[tuple[str, Any]]  # (source kind, value): see the kinds above
    outputs: list[int]  # the slots the op writes
    attrs: list[tuple[str, Any]]  # (name, its slot, or its slots with None for non-arrays): what a forward leaves
    signature: Any

    def __init__(
        self,
        kind: str,
        target: Any,
        inputs: list[tuple[str, Any]],
        outputs: list[int],
        attrs: Sequence[tuple[str, Any]] = (),
        signature: Any = None,
    ) -> None:
        self.kind, self.target, self.inputs, self.outputs, self.attrs = kind, target, inputs, outputs, list(attrs)
        # Attributes a forward was built with that hold arrays of the step (`embed_id`'s ids, a GetItemGrad's
        # index): (name, template); their arrays are the op's inputs after its forward's own (`n_forward`).
        self.bound: list[tuple[str, Any]] = []
        self.frees: list[int] = []
        self.signature = signature  # what must match between the two recordings


class Recorder:
    """Collects the ops of one call of the step on one thread."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.slot_of: dict[int, int] = {}  # id(array) -> slot
        self.keep: list[Any] = []  # every recorded array stays alive while recording, so that ids stay unique
        self.n_slots: int = 0
        self.external: dict[int, Variable] = {}  # Variables that existed before the step and ops read
        # their data (and a host copy) when the step first met them
        self.first_data: dict[int, tuple[Any, np.ndarray | None]] = {}
        self.updated: set[int] = set()  # ids of those whose data an optimizer's update or a recorded op sets
        self.created: set[int] = set()  # ids of Variables made during the step (kept alive in `keep`)
        self.arguments: dict[int, int] = {}  # id(Variable passed as an argument) -> its place among the arrays
        self.backward_ran = False
        self.paused = 0

    def active(self) -> bool:
        """Whether ops are recorded now (not inside a recorded op or an optimizer's update)."""
        return not self.paused

    def new_slot(self, array: Any) -> int:
        """A new slot for `array`, which stays alive while recording."""
        slot = self.n_slots
        self.n_slots += 1
        self.slot_of[id(array)] = slot
        self.keep.append(array)
        return slot

    def source(self, value: Any, owner: Variable | None = None) -> tuple[str, Any]:
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
            self.first_data[id(v)] = (v._data, None if v._data is None else host_values(v._data).copy())

    def check_external_data(self) -> None:
        """A Variable from before the step whose data changed outside the recorded ops (an in-place
        `p.data -= ...`, an assignment) would not change in a replay: refuse the step."""
        for key, v in self.external.items():
            if key in self.updated:
                continue
            data, host = self.first_data.get(key, (v._data, None))
            same_values = host is None or np.array_equal(host_values(v._data), host, equal_nan=True)
            changed = v._data is not data or not same_values
            if changed:
                raise CaptureError(
                    f"capture: the data of {variable_name(v)} changed during the step outside xdezero's functions and "
                    "optimizers (an in-place update such as p.data -= lr * p.grad.data, or an assignment): a replay "
                    "would not repeat it; update parameters with an Optimizer, or call the step uncaptured"
                )


_recorders: dict[int, Recorder] = {}  # thread id -> the step that thread is recording
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
        signature = (type(f), tuple(constants), fingerprint(list(constants.values())))
        op = Op("forward", f, sources + bound_sources, out_slots, attrs, signature)
        op.bound = bound
        recorder.ops.append(op)
        return result

    return call


_NUMBERS = (int, float, complex, np.generic)


def _bind(recorder: Recorder, value: Any) -> tuple[Any, list]:
    """(template, sources) for an attribute holding arrays: the arrays the step computed or received (they
    have slots) become sources, read at replay; `BOUND` marks their places in the template."""
    if is_array(value):
        slot = recorder.slot_of.get(id(value))
        return (BOUND, [("slot", slot)]) if slot is not None else (value, [])
    template, found = [], []
    for v in value:
        slot = recorder.slot_of.get(id(v)) if is_array(v) else None
        template.append(BOUND if slot is not None else v)
        if slot is not None:
            found.append(("slot", slot))
    return (type(value)(template), found) if found else (value, [])


class _BoundMarker:
    """The place of an array of the step in an attribute's template (`BOUND`)."""

    def __repr__(self) -> str:  # the fingerprint of a template holds this, the same in both recordings
        return "<array of the step>"


BOUND = _BoundMarker()


def fill(template: Any, arrays: Sequence[Any]) -> Any:
    """The attribute's value for this replay: `template` with this replay's arrays in the marked places."""
    if template is BOUND:
        return arrays[0]
    it = iter(arrays)
    return type(template)(next(it) if v is BOUND else v for v in template)


def _as_data(x: Any) -> Any:
    return x if is_array(x) else core.as_variable(x)._data


def _holds_arrays(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return any(is_array(v) for v in value)
    return is_array(value)


def _attr_slots(recorder: Recorder, value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [recorder.new_slot(v) if is_array(v) else None for v in value]
    return recorder.new_slot(value)


def host_values(a: Any) -> np.ndarray:
    """`a`'s values on the host, for comparing: its bit pattern where NumPy has no such dtype (bfloat16)."""
    host = to_host(a)
    return host.bits if isinstance(host, Bits) else host


def fingerprint(values: Sequence[Any]) -> tuple[Any, ...]:
    """What identifies constant values across the two recordings: shape, dtype and the host copy's bytes."""
    out: list[Any] = []
    for v in values:
        for a in v if isinstance(v, tuple | list) else [v]:
            if is_array(a):
                host = host_values(a)
                out.append((host.shape, dtype_name(a), host.tobytes()))
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
        recorder.ops.append(Op("array", fn, sources, [recorder.new_slot(result)], signature=fn))
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
                read = Op("read_grad", recorder.target(v), [], [recorder.new_slot(v.grad._data)], signature="read_grad")
                recorder.ops.append(read)
        original(self, retain_grad, create_graph)
        stored = []
        for v in list(recorder.external.values()):
            if v.grad is not None and v.grad is not held.get(id(v)):
                slot = recorder.slot_of.get(id(v.grad._data))
                if slot is None:
                    raise CaptureError(
                        f"capture: the gradient of {variable_name(v)} was computed outside the recorded ops"
                    )
                stored.append((slot, v))
        # in the order the gradients were computed, which every call repeats (the order in which the step met
        # the Variables may differ between the first call and the next: lazily shaped or moved parameters)
        for slot, v in sorted(stored, key=lambda pair: pair[0]):
            recorder.ops.append(Op("set_grad", recorder.target(v), [("slot", slot)], [], signature="set_grad"))
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
                f"capture: the step assigns to the data of {variable_name(self)} an array not computed by xdezero's "
                "functions (batch_norm's running statistics, for one): a replay would not repeat it; call the "
                "step uncaptured"
            )
        recorder.updated.add(id(self))
        recorder.ops.append(Op("set_data", recorder.target(self), [("slot", slot)], [], signature="set_data"))

    return set_data


def _moved_off_the_host(previous: Any, value: Any) -> bool:
    """Whether `value` is `previous`, a NumPy array, taken to another library (a layer following its input)."""
    return (
        isinstance(previous, np.ndarray)
        and not isinstance(value, np.ndarray)
        and tuple(value.shape) == previous.shape
        and np.array_equal(host_values(value), previous)
    )


def _recording_cleargrad(original: Callable) -> Callable:
    @functools.wraps(original)
    def cleargrad(self: Variable) -> None:
        recorder = _current(_thread())
        original(self)
        if recorder is not None and recorder.active() and id(self) not in recorder.created:
            recorder.watch(self)
            recorder.ops.append(Op("clear_grad", recorder.target(self), [], [], signature="clear_grad"))

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
                    f"capture: the gradient of {variable_name(p)} was replaced outside the recorded ops before "
                    "Optimizer.update (a communicator's allreduce_grad, or an assignment to .grad): a replay would "
                    "miss it; call such a step uncaptured"
                )
        recorder.paused += 1
        try:
            original(self)
        finally:
            recorder.paused -= 1
        # Replayed as `optimizer.update()` itself, so that a subclass's own update (Adam counts its steps) runs.
        recorder.ops.append(Op("call", self, [], [], signature=type(self)))
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


def record(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arrays: Sequence[Any],
    variables: Sequence[Variable | None] | None,
) -> tuple[Recorder, Any]:
    """Run fn(*args, **kwargs) eagerly while recording what it computes; `arrays`, the array arguments' data,
    take the first slots. Each thread records its own step; the hooks are in place while any thread records,
    and pass every call of the other threads straight through."""
    recorder, thread = Recorder(), _thread()
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


def variable_name(v: Variable) -> str:
    """`v` as error messages name it: its name, or its shape."""
    return repr(v.name) if v.name else f"a Variable of shape {v.shape}"
