"""The recording half of `xdezero.capture` (see xdezero/tapes/step.py): a `Recorder` is what the engine reports to
through its one seam, `xdezero._config.recorder_slot`, while a step is captured; it notes every array operation
of the step as an `Op`.

What reaches the recorder: Function calls, the backward pass (and its own array operations), assignments to a
Variable's data, `cleargrad`, `Optimizer.update`, and the multi-node optimizer's exchange of gradients (a
collective, which every process runs at the same point of each call, recording, replaying or eager). What
changes state without passing the seam is found by comparing, and refused: an array changed in place (a
parameter's, a gradient's, an argument's, or one the step computed), a gradient replaced with an array no op
computed, an op that keeps an array it did not declare.
Assigning a new gradient the step computed (`p.grad = p.grad * 0.5`, `p.grad = None`) is recorded and replayed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xdezero import core
from xdezero._config import recorder_slot
from xdezero.backends import is_array
from xdezero.core import Function, Parameter, Variable
from xdezero.layers import Layer
from xdezero.optimizers import Optimizer
from xdezero.tapes.values import BOUND, fingerprint, host_copy, moved_off_the_host, setting, still_holds

__all__ = ["COMPLETE", "CaptureError", "Collective", "Op", "Recorder", "record", "variable_name"]


# What every refusal after a recording call adds.
COMPLETE = (
    "This call ran eagerly and is complete (what it did is applied, as in an uncaptured call; its result is this "
    "error's `result`): carry on uncaptured from the next call"
)


class CaptureError(RuntimeError):
    """A step that cannot be replayed: the message names the op and what differed. Raised after a recording call
    of the step has run to its end eagerly, `result` holds what that call returned; else None."""

    result: Any = None


# --- recording -----------------------------------------------------------------------------------------

# An input of a recorded op: ("slot", index) a value computed during the step (or an argument, or a gradient
# read by a 'read_grad' op); ("data", Variable) the data of a Variable that exists before the step, read at
# replay; ("const", value) anything else, fixed when recorded.


class Op:
    """One recorded operation: `kind` is 'forward' (a Function's forward), 'array' (the backward pass's own),
    'read_grad', 'set_grad', 'set_data', 'clear_grad' (of a Variable from before the step), 'set_attr' (of a
    layer), 'call' (an optimizer's update) or 'collective' (an exchange of gradients between processes)."""

    __slots__ = ("kind", "target", "inputs", "outputs", "attrs", "bound", "frees", "signature", "line")

    kind: str
    target: Any  # a Function, an array operation, a Variable, ("argument", k) or an Optimizer, by `kind`
    inputs: list[tuple[str, Any]]  # (source kind, value): see the kinds above
    outputs: list[int]  # the slots the op writes
    attrs: list[tuple[str, Any]]  # (name, its slot, or its slots with None for non-arrays): what a forward keeps
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
        self.line: str = user_line()  # where the user's step ran it


class Collective:
    """The target of a 'collective' op: `run()` gives `variables` new gradients from all processes."""

    __slots__ = ("run", "variables")
    run: Callable[[], str | None]
    variables: list[Variable]

    def __init__(self, run: Callable[[], str | None], variables: list[Variable]) -> None:
        self.run, self.variables = run, variables


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_line() -> str:
    """'file:line' of the innermost caller outside xdezero: the line of the user's step running an operation."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
    return "" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _at(line: str) -> str:
    return f" (at {line})" if line else ""


class Recorder:
    """Collects the ops of one call of the step (the engine's `StepRecorder`, set in `recorder_slot` while the
    call runs), and checks that nothing the replay would miss happened."""

    def __init__(self, known: Sequence[Variable] = ()) -> None:
        self.ops: list[Op] = []
        self.slot_of: dict[int, int] = {}  # id(array) -> slot
        self.keep: list[Any] = []  # every recorded array stays alive while recording, so that ids stay unique
        self.n_slots: int = 0
        self.external: dict[int, Variable] = {}  # Variables that existed before the step and that it met
        # per such Variable: its data as the recorded ops leave it (the array, and a host copy to compare)
        self.expected_data: dict[int, tuple[Any, np.ndarray | None]] = {}
        # per such Variable whose gradient the recorded ops touched: the array they leave as its gradient (None:
        # no gradient), and a host copy to compare
        self.expected_grad: dict[int, tuple[Any, np.ndarray | None]] = {}
        self.updated: set[int] = set()  # ids of those whose data an optimizer's update or a recorded op sets
        self.created: set[int] = set()  # ids of Variables made during the step (kept alive in `keep`)
        self.arguments: dict[int, int] = {}  # id(Variable passed as an argument) -> its place among the arrays
        self.argument_values: list[tuple[Any, np.ndarray | None]] = []  # the array arguments and host copies of them
        # Variables an earlier recording of this signature met, and their data when this call started: a change
        # before the step first meets one (an in-place clip before the forward) is found when it does
        self.known: dict[int, np.ndarray | None] = {id(v): host_copy(v._data) for v in known}
        self.functions: set[int] = set()  # ids of the Functions this call ran (the others are of earlier calls)
        self.backward_ran: bool = False
        self.refusal: str | None = None  # why the step cannot be replayed, found while it ran on

    # --- what the engine reports (xdezero._config.StepRecorder) --------------------------------------
    def function_call(self, f: Function, inputs: tuple[Any, ...]) -> Any:
        """Run `f(*inputs)` as one op, noting its inputs, outputs and what it keeps for backward."""
        sources = [self.source(x._data, x) if isinstance(x, Variable) else self.source(_as_data(x)) for x in inputs]
        # What the op was built with: settings (MulConstant's c, an index, an axis) are compared between the
        # recordings; arrays of this step (they have slots) are read at replay, other arrays are constants.
        constants, bound, bound_sources = {}, [], []
        before = dict(vars(f))
        for name, value in before.items():
            if name in _PER_CALL:
                continue
            if not _holds_arrays(value):
                constants[name] = setting(value)
            else:
                template, found = _bind(self, value)
                if found:
                    bound.append((name, template))
                    bound_sources += found
                    value = template  # what stays fixed: the non-array parts
                constants[name] = value
        self.functions.add(id(f))
        token = recorder_slot.set(None)  # a Function calling Functions inside its forward is one op
        try:
            result = f(*inputs)
        finally:
            recorder_slot.reset(token)
        outputs = result if isinstance(result, list) else [result]
        out_slots = []
        for y in outputs:
            self.created.add(id(y))
            self.keep.append(y)
            out_slots.append(self.new_slot(y._data))
        saved = type(f).saved
        attrs = [(name, _attr_slots(self, getattr(f, name))) for name in saved if _holds_arrays(getattr(f, name, None))]
        for name, value in vars(f).items():
            if name not in saved and _holds_arrays(value) and before.get(name) is not value:
                self.refuse(
                    f"{type(f).__name__}.forward keeps the array attribute {name!r} without declaring it: a replay "
                    f"would give its backward the recorded value; declare it on the class (saved = ({name!r},))"
                )
        for name in type(f).writes:  # the Variables the op writes (batch_norm's running statistics)
            target = getattr(f, name)
            if isinstance(target, Variable) and id(target) not in self.created:
                self.watch(target)
                self.updated.add(id(target))
                self._expect_data(target)
        signature = (type(f), tuple(constants), fingerprint(list(constants.values())))
        op = Op("forward", f, sources + bound_sources, out_slots, attrs, signature)
        op.bound = bound
        self.ops.append(op)
        return result

    def array_op(self, fn: Callable[..., Any], arrays: tuple[Any, ...], result: Any) -> None:
        """Note an array operation of the backward pass itself (its first gradient, a sum where gradients meet)."""
        sources = [self.source(a) if is_array(a) else ("const", a) for a in arrays]
        self.ops.append(Op("array", fn, sources, [self.new_slot(result)], signature=fn))

    def backward(self, v: Variable, retain_grad: bool, create_graph: bool) -> None:
        """Run the backward pass from `v`, noting the gradients it reads and stores in Variables from before it."""
        if create_graph:
            raise CaptureError(
                f"capture: backward(create_graph=True) inside a captured step is not supported{_at(user_line())}"
            )
        self.backward_ran = True
        earlier = self._earlier_op(v)
        if earlier is not None:
            self.refuse(
                f"the backward pass reaches {type(earlier).__name__}, an operation of an earlier call (a recurrent "
                "layer's hidden state carried from call to call, or a Variable computed before the step): a replay "
                "cannot repeat it; start the step from Variables without a graph (h.unchain_backward() before the "
                "step), or call it uncaptured"
            )
        self.reconcile_grads()
        # Gradients already held by Variables from before the step are read at replay, not fixed.
        held = {id(x): x.grad for x in self.external.values() if x.grad is not None}
        for x in self.external.values():
            if x.grad is not None and id(x.grad._data) not in self.slot_of:
                self.ops.append(
                    Op("read_grad", self.target(x), [], [self.new_slot(x.grad._data)], signature="read_grad")
                )
                self._expect_grad(x)
        core.backward_pass(v, retain_grad, create_graph)
        stored = []
        for x in list(self.external.values()):
            if x.grad is not None and x.grad is not held.get(id(x)):
                slot = self.slot_of.get(id(x.grad._data))
                if slot is None:
                    raise CaptureError(
                        f"capture: the gradient of {variable_name(x)} was computed outside the recorded ops"
                    )
                stored.append((slot, x))
        # in the order the gradients were computed, which every call repeats (the order in which the step met
        # the Variables may differ between the first call and the next: lazily shaped or moved parameters)
        for slot, x in sorted(stored, key=lambda pair: pair[0]):
            self.ops.append(Op("set_grad", self.target(x), [("slot", slot)], [], signature="set_grad"))
            self._expect_grad(x)

    def _earlier_op(self, v: Variable) -> Function | None:
        """The first op behind `v` that this call did not record, or None."""
        seen, stack = set(), [v.creator] if v.creator is not None else []
        while stack:
            f = stack.pop()
            if id(f) not in self.functions:
                return f
            for x in f._current_inputs():
                creator = x.creator if x is not None else None
                if creator is not None and id(creator) not in seen:
                    seen.add(id(creator))
                    stack.append(creator)
        return None

    def variable_created(self, v: Variable) -> None:
        """Note a Variable made during the step: its data is a constant or a computed value."""
        self.created.add(id(v))
        self.keep.append(v)

    def data_assigned(self, v: Variable, previous: Any) -> None:
        """Note `v.data = value`: recorded when the value was computed by the step's ops, else refused."""
        value = v._data
        if id(v) in self.created:
            if value is previous and id(value) in self.slot_of:
                owner = next((x for x in self.external.values() if x.grad is v), None)
                what = f"the gradient of {variable_name(owner)}" if owner else "a Variable the step computed"
                self.refuse(
                    f"{what} ({variable_name(v)}) was changed in place (an augmented assignment such as "
                    "v.data *= 2): the ops that read it would read the value from before; compute the new value "
                    "with xdezero's functions (v = v * 2, p.grad = p.grad * 2)"
                )
            return
        if previous is None:  # a lazily shaped parameter gets its first value: from now on it is just there
            self.external.pop(id(v), None)
            self.watch(v)
            return
        if moved_off_the_host(previous, value):
            # A layer moves its NumPy-made parameters to the library of its first input, once: the next
            # recording never sees it, so this one notes nothing (the Variable is met when an op reads it).
            if id(v) in self.external:
                self._expect_data(v)
            return
        self.watch(v)
        slot = self.slot_of.get(id(value))
        if slot is None:
            how = "changed in place (p.data -= lr * p.grad.data)" if value is previous else "assigned an array"
            self.refuse(
                f"the data of {variable_name(v)} was {how} not computed by xdezero's functions: a replay would not "
                "repeat it; update parameters with an Optimizer, or call the step uncaptured"
            )
            return
        self.updated.add(id(v))
        self.ops.append(Op("set_data", self.target(v), [("slot", slot)], [], signature="set_data"))
        self._expect_data(v)

    def grad_cleared(self, v: Variable) -> None:
        """Note `v.cleargrad()` on a Variable from before the step."""
        if id(v) not in self.created:
            self.watch(v)
            self.ops.append(Op("clear_grad", self.target(v), [], [], signature="clear_grad"))
            self.expected_grad[id(v)] = (None, None)

    def optimizer_update(self, optimizer: Optimizer) -> None:
        """Run `optimizer.update()` as one op; its parameters' data and gradients must be what the recorded ops
        left (a gradient the step assigned is recorded first)."""
        params = list(optimizer.target.params())
        for p in params:
            self.watch(p)
        self.reconcile_grads()
        self.check_data(params, "before the optimizer's update")
        token = recorder_slot.set(None)
        try:
            optimizer.apply_update()
        finally:
            recorder_slot.reset(token)
        # Replayed as `optimizer.update()` itself, so that a subclass's own update (Adam counts its steps) runs.
        self.ops.append(Op("call", optimizer, [], [], signature=(type(optimizer), tuple(map(id, params)))))
        for p in params:
            self.updated.add(id(p))
            self._expect_data(p)
            if id(p) in self.expected_grad or p.grad is not None:  # hooks may scale or drop gradients: replayed
                self._expect_grad(p)

    def attribute_assigned(self, layer: Any, name: str, value: Any) -> None:
        """Note `layer.name = value` during the step: a Variable (an RNN's hidden state) or None is set again by
        the replay; a parameter or layer put in place of another is refused (the replay would use the old one)."""
        if isinstance(value, Parameter | Layer):
            self.refuse(
                f"{type(layer).__name__}.{name} was given a new {type(value).__name__} during the step: a replay "
                "would go on with the one it recorded; build layers and parameters before the step"
            )
        elif isinstance(value, Variable):
            source = self.source(value._data)
            self.ops.append(Op("set_attr", layer, [source], [], signature=("set_attr", name, id(layer))))
        elif value is None:
            self.ops.append(Op("set_attr", layer, [], [], signature=("set_attr", name, id(layer))))

    def collective(self, run: Callable[[], str | None], variables: Sequence[Variable]) -> str | None:
        """Run `run()`, a collective over all processes that gives `variables` new gradients (the multi-node
        optimizer's all-reduce), as one op: a replay runs it again, on that call's gradients, as every process
        does whether it replays or runs eagerly. The gradients it leaves take slots, for the ops after it. Returns
        what `run` did: why the call cannot be replayed, or None."""
        for v in variables:
            self.watch(v)
        self.reconcile_grads()  # the gradients it reads are those the recorded ops (or the step) left
        self.check_data(variables, "before the multi-node optimizer's exchange")
        data = [v._data for v in variables]
        token = recorder_slot.set(None)
        try:
            why_not = run()
        finally:
            recorder_slot.reset(token)
        if why_not is not None:
            self.refuse(why_not)
        outputs = []
        for v in variables:
            if v.grad is None:  # no process had one: still a slot, which a replay fills with what it finds
                outputs.append(self.n_slots)
                self.n_slots += 1
            else:
                outputs.append(self.new_slot(v.grad._data))
            self._expect_grad(v)
        for v, before in zip(variables, data):
            if v._data is not before:  # a first exchange gives parameters created by the step rank 0's values
                self._expect_data(v)
        target = Collective(run, list(variables))
        self.ops.append(Op("collective", target, [], outputs, signature=("collective", run, tuple(map(id, variables)))))
        return why_not

    # --- slots and sources --------------------------------------------------------------------------
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

    # --- what the replay would miss -----------------------------------------------------------------
    def watch(self, v: Variable) -> None:
        """Note a Variable from before the step, and what its data is when the step first meets it."""
        if id(v) in self.external:
            return
        self.external[id(v)] = v
        if id(v) in self.known and not still_holds(self.known[id(v)], v._data):
            self.refuse(
                f"the data of {variable_name(v)} changed during the step before the step's first operation on it "
                "(an in-place write such as np.clip(p.data, -c, c, out=p.data)): a replay would not repeat it; "
                "compute it with xdezero's functions, or do it outside the step"
            )
        self._expect_data(v)

    def _expect_data(self, v: Variable) -> None:
        self.expected_data[id(v)] = (v._data, host_copy(v._data))

    def _expect_grad(self, v: Variable) -> None:
        grad = None if v.grad is None else v.grad._data
        self.expected_grad[id(v)] = (grad, None if grad is None else host_copy(grad))

    def check_data(self, variables: Sequence[Variable], when: str) -> None:
        """Refuse when one of `variables` holds other data than the recorded ops left (changed in place)."""
        for v in variables:
            data, host = self.expected_data.get(id(v), (v._data, None))
            if v._data is not data or not still_holds(host, v._data):
                self.refuse(
                    f"the data of {variable_name(v)} was changed in place {when}, outside xdezero's functions and "
                    "optimizers (an in-place write such as np.clip(p.data, -c, c, out=p.data) or p.data[...] = v): "
                    "a replay would not repeat it; change parameters with xdezero's functions or an Optimizer, "
                    "or call the step uncaptured"
                )
                self._expect_data(v)

    def reconcile_grads(self) -> None:
        """Record the gradients the step assigned since the ops last set them (`p.grad = p.grad * 0.5`,
        `p.grad = None`); refuse a gradient changed in place or replaced with an array no op computed."""
        for v in self.external.values():
            if id(v) not in self.expected_grad and (v.grad is None or id(v.grad._data) not in self.slot_of):
                continue  # a gradient from before the step, untouched: the replay finds whatever is there
            expected, host = self.expected_grad.get(id(v), (_UNKNOWN, None))
            grad = None if v.grad is None else v.grad._data
            if grad is expected:
                if host is not None and not still_holds(host, grad):
                    self.refuse(
                        f"the gradient of {variable_name(v)} was changed in place (p.grad.data *= c, or "
                        "p.grad.data[...] = v): a replay would not repeat it; assign a new one instead "
                        "(p.grad = p.grad * c)"
                    )
                continue
            if grad is None:
                self.ops.append(Op("clear_grad", self.target(v), [], [], signature="clear_grad"))
            elif id(grad) in self.slot_of:
                self.ops.append(
                    Op("set_grad", self.target(v), [("slot", self.slot_of[id(grad)])], [], signature="set_grad")
                )
            else:
                self.refuse(
                    f"the gradient of {variable_name(v)} was replaced with an array not computed by xdezero's "
                    "functions (a communicator's allreduce_grad, or an assignment): a replay would miss it; compute "
                    "it with xdezero's functions, or call the step uncaptured"
                )
            self._expect_grad(v)

    def check_arguments(self) -> None:
        """Refuse when an array argument was changed in place (`x -= x.mean(0)`): a replay reads each call's own."""
        for k, (array, host) in enumerate(self.argument_values):
            if not still_holds(host, array):
                self.refuse(
                    f"array argument {k} of the step was changed in place during the step (x -= x.mean(0)): a "
                    "replay would not repeat it; compute with xdezero's functions (x = x - F.mean(x, axis=0)), or "
                    "change the array before calling the step"
                )

    def finish(self) -> None:
        """The checks at the end of the step: what the Variables from before it and its arguments hold must be
        what the recorded ops leave."""
        self.reconcile_grads()
        self.check_data(list(self.external.values()), "during the step")
        self.check_arguments()

    def refuse(self, why: str, line: str | None = None) -> None:
        """Note why the step cannot be replayed (the first reason is kept); the step runs on eagerly."""
        if self.refusal is None:
            self.refusal = f"capture: {why}{_at(user_line() if line is None else line)}"


_UNKNOWN = object()
# What the engine sets on a Function at each call: not what the op was built with.
_PER_CALL = frozenset(
    ("xp", "needs_grad", "generation", "inputs", "outputs", "_input_refs", "_sources", "_weak_inputs", "_severed")
)


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


def record(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    arrays: Sequence[Any],
    variables: Sequence[Variable | None] | None,
    known: Sequence[Variable] = (),
) -> tuple[Recorder, Any]:
    """Run fn(*args, **kwargs) eagerly with a recorder in the engine's seam; `arrays`, the array arguments' data,
    take the first slots; `known`, the Variables an earlier recording met. Raises CaptureError (after the call
    ran to its end; its result in `result`) when the step did something a replay would miss."""
    if recorder_slot.get() is not None:
        raise CaptureError(
            "capture: a captured step called inside another one while it records (captured steps do not nest)"
        )
    recorder = Recorder(known)
    for a in arrays:
        recorder.new_slot(a)
        recorder.argument_values.append((a, host_copy(a)))
    for k, v in enumerate(variables or ()):
        if v is not None:  # its data is argument k; the gradient the step leaves on it goes to each call's own
            recorder.arguments[id(v)] = k
            recorder.watch(v)
    token = recorder_slot.set(recorder)
    try:
        result = fn(*args, **kwargs)
        recorder.finish()
    finally:
        recorder_slot.reset(token)
    if recorder.refusal is not None:
        error = CaptureError(f"{recorder.refusal}. {COMPLETE}")
        error.result = result
        raise error
    return recorder, result


def variable_name(v: Variable) -> str:
    """`v` as error messages name it: its name, or its shape."""
    return repr(v.name) if v.name else f"a Variable of shape {v.shape}"
