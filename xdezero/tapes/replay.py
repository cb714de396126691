"""The replay half of `xdezero.capture` (see xdezero/tapes/step.py): a recorded call becomes a `Tape`, a flat program
of closures over slot values that frees each intermediate after its last use, and `same_tapes` compares the two
recordings of a signature.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xdezero._config import Config
from xdezero.backends import LEGACY_NUMPY, array_namespace, backend_of_namespace, is_array, keep_input_precision
from xdezero.core import Function, Variable
from xdezero.tapes.compile import CompiledReplay
from xdezero.tapes.graphs import GraphReplay
from xdezero.tapes.record import CaptureError, Op, Recorder
from xdezero.tapes.values import BOUND, fill, fingerprint, host_values, same_values

__all__ = ["Tape", "same_tapes"]


# --- the tape ------------------------------------------------------------------------------------------


class Tape:
    """The ops of one recorded call, with the slots of the arguments and the result's structure."""

    def __init__(self, recorder: Recorder, n_args: int, result: Any) -> None:
        self.ops: list[Op] = recorder.ops
        _own_ops(self.ops)
        self.external: list[Variable] = list(recorder.external.values())  # the Variables from before the step
        # Host copies of the array arguments it was recorded on, until a call on other values confirms it
        # (CapturedStep drops them then).
        self.seen_arguments: list[Any] | None = [host for _, host in recorder.argument_values]
        # the arguments themselves, where their library's arrays never change (the same object: the same values)
        self.seen_immutable: list[Any] = [
            a if backend_of_namespace(array_namespace(a)).immutable_arrays else None
            for a, _ in recorder.argument_values
        ]
        self.n_slots: int = recorder.n_slots
        self.n_args: int = n_args
        self.result: Any = _result_spec(recorder, result)  # the result's structure, with the slots of its values
        # A step that returns a Variable with a graph and leaves the backward to its caller: the recording calls
        # keep their graphs, and a replay's results refuse backward (a replay builds no graph).
        self.graphless: bool = not recorder.backward_ran and bool(Config.enable_backprop) and _needs_grad(result)
        self.result_slots: list[int] = _result_slots(self.result)
        self._plan_frees()
        self.stashed: list[tuple[Any, str]] = [
            (op.target, name) for op in self.ops if op.kind == "forward" for name, _ in [*op.attrs, *op.bound]
        ]
        # the Variables passed as array arguments (None for plain arrays), during a replay that has them
        self.arguments: list[Variable | None] = []
        self.on_arguments: bool = any(isinstance(op.target, tuple) for op in self.ops if op.kind != "forward")
        # Why only a plain replay, which runs the tape's Python, can replay it (or None).
        self.plain_only: str | None = _plain_only(self.ops)
        self.program: list[Callable[[list[Any]], None]] = [_compile(op, self.arguments) for op in self.ops]
        self.expected: list[tuple[Any, bool | None, bool | None]] = _expected_state(self.ops, recorder)
        # The optimizers the step updates, and the ids of the parameters each found (another set: record again).
        self.optimizers: list[tuple[Any, tuple[int, ...]]] = [
            (op.target, op.signature[1]) for op in self.ops if op.kind == "call"
        ]
        # The variant of the step (see CapturedStep): which gradients it found present when it first touched them.
        self.state: tuple[bool, ...] = tuple(has_grad for _, _, has_grad in self.expected if has_grad is not None)
        # Set where the arguments' library can run the replay as one CUDA graph (graphs.py) or one compiled function
        # (compile.py): both give `replay(arrays)`, `note`, `graphed` and `plain(why)`.
        self.graph: GraphReplay | CompiledReplay | None = None

    def _plan_frees(self) -> None:
        last_use: dict[int, int] = {}
        for k, op in enumerate(self.ops):
            for kind, value in op.inputs:
                if kind == "slot":
                    last_use[value] = k
        kept = set(self.result_slots)
        for slot, k in last_use.items():
            if slot not in kept:
                self.ops[k].frees.append(slot)

    def run(self, values: list[Any]) -> None:
        """The recorded ops on `values` (the arguments in the first slots)."""
        for run in self.program:
            run(values)
        for f, name in self.stashed:  # what forwards left for later ops is not held between steps
            setattr(f, name, None)

    def run_on(self, arrays: Sequence[Any]) -> list[Any]:
        """The slot values after running the recorded ops on `arrays` (the step's array arguments)."""
        values: list[Any] = [None] * self.n_slots
        values[: self.n_args] = arrays
        self.run(values)
        return values

    def replay(self, arrays: Sequence[Any], variables: list[Variable | None] | None) -> Any:
        """One call of the step on `arrays` (its array arguments' data; `variables`, the Variables among the
        arguments or None), as a CUDA graph where the tape has one: the step's result."""
        if self.on_arguments:
            self.arguments[:] = variables
            try:
                return _build_result(self.result, self.run_on(arrays), self.graphless)
            finally:
                self.arguments.clear()  # the caller's Variables are not held between calls
        values = self.graph.replay(arrays) if self.graph is not None else None
        return _build_result(self.result, self.run_on(arrays) if values is None else values, self.graphless)

    def same_arguments(self, arrays: Sequence[Any]) -> bool:
        """Whether `arrays` hold the values the tape was recorded on."""
        if all(a is seen for a, seen in zip(arrays, self.seen_immutable)):
            return True
        return same_values(self.seen_arguments, [host_values(a) for a in arrays])

    def fits(self, variables: Sequence[Variable | None] | None) -> bool:
        """Whether the Variables the tape acts on are as they were when it was recorded: the same
        `requires_grad`, and a gradient where the recording read one, none where it set the first; and whether
        the optimizers update the same parameters (none replaced, no layer added)."""
        for optimizer, ids in self.optimizers:
            if tuple(map(id, optimizer.target.params())) != ids:
                return False
        for target, requires_grad, has_grad in self.expected:
            v = variables[target[1]] if isinstance(target, tuple) else target
            if requires_grad is not None and v.requires_grad != requires_grad:
                return False
            if has_grad is not None and (v.grad is not None) is not has_grad:
                return False
        return True


def _plain_only(ops: list[Op]) -> str | None:
    kinds = {op.kind for op in ops}
    if "set_attr" in kinds:
        return "the step sets layer attributes (a recurrent layer's hidden state), which only a plain replay sets"
    if "collective" in kinds:
        return (
            "the step exchanges gradients with the other processes (a multi-node optimizer), which runs between "
            "the ops of a plain replay"
        )
    return None


def _needs_grad(result: Any) -> bool:
    if isinstance(result, tuple | list):
        return any(_needs_grad(r) for r in result)
    if isinstance(result, dict):
        return any(_needs_grad(r) for r in result.values())
    return isinstance(result, Variable) and result.creator is not None and result.requires_grad


def _expected_state(ops: list[Op], recorder: Recorder) -> list[tuple[Any, bool | None, bool | None]]:
    """(target, requires_grad or None, has a gradient or None) to check before each replay: the flags of the
    Variables from before the step, and whether each Variable whose gradient the tape touches before clearing it
    had one (a read means it had, a first set means it had none)."""
    expected: list[tuple[Any, bool | None, bool | None]] = [
        (recorder.target(v), v.requires_grad, None) for v in recorder.external.values()
    ]
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
    return 1 if template is BOUND else sum(v is BOUND for v in template)


def _binding_reader(read: Callable, target: Function, bound: list, n_inputs: int) -> Callable[[list], list]:
    """`read` (of `n_inputs` values), which also sets the op's bound attributes from the values after its
    forward's own inputs."""
    counts = [_count_bound(b) for b in bound]
    n_forward = n_inputs - sum(counts)

    def read_and_bind(values: list) -> list:
        inputs = read(values)
        start = n_forward
        for (name, template), n in zip(bound, counts):
            setattr(target, name, fill(template, inputs[start : start + n]))
            start += n
        return inputs[:n_forward]

    return read_and_bind


def _compile(op: Op, arguments: list) -> Callable[[list], None]:
    """The op as one function of the slot values (the replay loop calls nothing else); `arguments` holds the
    Variables passed as array arguments while a replay runs, for ops on ("argument", k)."""
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

    elif op.kind == "call":  # an optimizer's update

        def run(values: list) -> None:
            target.update()

    elif op.kind == "collective":  # the same exchange on every process, whether it replays or not
        exchange, variables = target.run, target.variables

        def run(values: list) -> None:
            exchange()
            for slot, v in zip(outputs, variables):
                values[slot] = None if v.grad is None else v.grad._data

    elif op.kind == "set_attr":  # a layer's attribute: a Variable without a graph (a hidden state), or None
        name, read_value = op.signature[1], _reader(op.inputs) if op.inputs else None

        def run(values: list) -> None:
            setattr(target, name, None if read_value is None else Variable(read_value(values)[0], requires_grad=False))
            for slot in frees:
                values[slot] = None

    else:  # an op on the gradient or data of a Variable: one from before the step, or argument k's
        variable = (lambda: arguments[target[1]]) if isinstance(target, tuple) else (lambda: target)
        if op.kind == "set_grad":
            source = op.inputs[0][1]

            def run(values: list) -> None:
                variable().grad = Variable(values[source], requires_grad=False)
                for slot in frees:
                    values[slot] = None

        elif op.kind == "set_data":
            source = op.inputs[0][1]

            def run(values: list) -> None:
                variable().data = values[source]
                for slot in frees:
                    values[slot] = None

        elif op.kind == "clear_grad":

            def run(values: list) -> None:
                variable().grad = None

        else:  # "read_grad"

            def run(values: list) -> None:
                values[outputs[0]] = variable().grad._data

    return run


def _own_ops(ops: list[Op]) -> None:
    """Give the tape copies of the recorded Functions, without their graph or what their forward kept: the
    recording call's graph stays the user's (a hidden state carried into the next call goes on through it) and is
    freed with it. An op that refers to another (the gradient of softmax cross-entropy reads its forward's
    probabilities) refers to the other's copy."""
    copies: dict[int, Function] = {}
    for op in ops:
        if op.kind != "forward":
            continue
        f = copy.copy(op.target)
        for name, value in vars(f).items():
            if name in _GRAPH or name in type(f).saved:
                setattr(f, name, None)
            elif isinstance(value, Function) and id(value) in copies:
                setattr(f, name, copies[id(value)])
        copies[id(op.target)] = op.target = f


_GRAPH = ("inputs", "outputs", "_input_refs", "_sources")


def _result_spec(recorder: Recorder, result: Any) -> Any:
    if isinstance(result, tuple | list):
        return _rebuildable((type(result), [_result_spec(recorder, r) for r in result]))
    if isinstance(result, dict):
        return _rebuildable((type(result), {k: _result_spec(recorder, v) for k, v in result.items()}))
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


def _result_slots(spec: Any) -> list[int]:
    if spec is None:
        return []
    kind, value = spec
    if kind in ("variable", "array"):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [s for item in items for s in _result_slots(item)]


def _build_result(spec: Any, values: list[Any] | dict[int, Any], graphless: bool = False) -> Any:
    if spec is None:
        return None
    kind, value = spec
    if kind == "variable":
        return (_GraphlessResult if graphless else Variable)(values[value], requires_grad=False)
    if kind == "array":
        return values[value]
    if issubclass(kind, dict):
        return kind((k, _build_result(v, values, graphless)) for k, v in value.items())
    parts = [_build_result(v, values, graphless) for v in value]
    return kind._make(parts) if hasattr(kind, "_make") else kind(parts)  # a namedtuple takes its fields apart


class _AnySlot(dict):
    """Values for a trial rebuild of a result: None in every slot."""

    def __missing__(self, slot: int) -> None:
        return None


def _rebuildable(spec: Any) -> Any:
    """`spec` after checking, while recording, that a replay can rebuild its container (a tuple or dict type whose
    constructor takes other arguments could not, and would fail only after a replay had updated the parameters)."""
    try:
        _build_result(spec, _AnySlot())
    except TypeError as e:
        raise CaptureError(
            f"capture: the step returns a {spec[0].__name__}, which a replay cannot rebuild from its items ({e}); "
            "return a tuple, list, dict or namedtuple"
        ) from None
    return spec


class _GraphlessResult(Variable):
    """A replayed result of a step that ran no backward: its value, without the graph a backward would need."""

    def backward(self, *args: Any, **kwargs: Any) -> None:
        raise CaptureError(
            "capture: backward on a result of a replayed step: a replay builds no graph, so the gradient cannot be "
            "computed outside the step; call backward (and the optimizer's update) inside the captured step"
        )


def _constants_differing(a: Op, b: Op) -> str:
    names, first, second = a.signature[1], a.signature[2], b.signature[2]
    if len(first) == len(names) == len(second):  # one value per name: say which
        return ", ".join(  # a number's repr, or only the name of an array
            f"{n} {x[:60]} then {y[:60]}" if isinstance(x, str) else n
            for n, x, y in zip(names, first, second)
            if x != y
        )
    return ", ".join(names)


def same_tapes(first: Tape, second: Tape) -> str | None:
    """None when the two recordings did the same thing, else what differed (for CaptureError)."""
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
            if sa[0] == "const" and fingerprint([sa[1]]) != fingerprint([sb[1]]):
                return (
                    f"input {i} of operation {k} ({what}) is an array that changed between the calls: it was "
                    "computed from the inputs outside xdezero's functions, or drawn at random outside an op"
                )
    return None


def _describe(op: Op) -> str:
    if op.kind == "forward":
        return type(op.target).__name__
    if op.kind == "array":
        return f"the backward pass's {op.target.__name__.strip('_')}"
    return op.kind.replace("_", " ")
