"""A captured step replayed as one CUDA graph (CuPy, torch on CUDA): one launch per step instead of one per kernel.

`xdezero.capture` replays a step's recorded ops from Python; on a GPU each op still launches its kernels one by
one, and a small model's step is bound by those launches. On CuPy and CUDA torch the replay itself is captured
once into a CUDA graph (on the second replay; the first runs plainly and warms up the capture stream) and later
calls launch the graph. A graph's kernels read and write fixed memory, so:

- the step's arguments are copied into buffers of the graph before each launch, and its results copied out;
- every array the step rebinds in state that outlives it (parameters' data and gradients it reads back,
  optimizers' per-parameter state) is given, at capture, a buffer of the graph's own, and the captured step
  ends by copying the new values into those buffers: a parameter's `data` is the same array after each step,
  updated in place (eager steps rebind it to a new array), and nothing outside the step is written into;
- the ids a step checks (labels, embedding ids) are checked before each launch, on the arguments they come from.

A step that cannot be a graph is replayed plainly, as on other libraries; `CapturedStep.graph_notes` says why.
It cannot when it draws random numbers (dropout: a graph would repeat the first mask), reads a value on the host
(a `float()`, a branch), checks ids it computed itself, or changes Python numbers that its kernels take (Adam's
step count): a graph would repeat the captured value. A step is captured again when its optimizer's settings
change between calls (a new learning rate, an added hook), or its parameters, the gradients it reads or the
optimizer's state are given new arrays (a loaded checkpoint). The gradients a step leaves are the graph's arrays
too, set again after each launch and overwritten by the next.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable, Collection, MutableMapping, Sequence
from typing import Any

from xdezero.backends import GraphKit, check_index_arrays, deferring_checks, is_array, random_draws
from xdezero.core import Variable
from xdezero.tapes.record import Op

__all__ = ["GraphReplay", "GraphedStep", "NoGraph", "capture_graph", "frozen_setting", "same_setting", "state_refs"]

MAX_CAPTURES = 16  # captures of one step before it stays plain (its numbers change on every call)


class NoGraph(Exception):
    """Why a step cannot run as a CUDA graph (the step then replays plainly)."""


# (owner, name, table, [(key, array)], size): an attribute holding per-parameter arrays, as it was at capture
_Table = tuple[Any, str, MutableMapping[Any, Any], list[tuple[Any, Any]], int]


class _State:
    """The state outside the step that its ops read or rebind: Variables' data and gradients, and the optimizers'
    and their hooks' attributes (per-parameter tables of arrays, and settings such as numbers its kernels take)."""

    owned: list[tuple[Variable, Any, Variable | None]]  # (Variable, data, gradient) in the graph's buffers
    owned_tables: list[_Table]  # the tables, holding the graph's buffers
    grads_after: list[tuple[Variable, Variable | None]]  # the gradients each launch leaves

    def __init__(self, variables: list[Variable], grads_read: set[int], owners: list[Any]) -> None:
        # for `restore`, until a capture succeeds
        self.before: list[tuple[Variable, Any, Variable | None]] = [(v, v._data, v.grad) for v in variables]
        self.grads_read = grads_read  # ids of Variables whose gradient from before the step the step reads
        tables, settings = owner_state(owners)
        self.settings: list[tuple[Any, str, Any]] = settings  # (owner, name, value): every other attribute
        self.tables: list[_Table] = [
            (owner, name, table, [(k, a) for k, a in table.items() if is_array(a)], len(table))
            for owner, name, table in tables
        ]

    def own_buffers(self, kit: GraphKit) -> None:
        """Give every array of the state a copy of its own, which the graph will read and write."""
        for v, data, grad in self.before:
            if data is not None:
                v._data = kit.copy(data)
            if grad is not None and id(v) in self.grads_read:
                v.grad = Variable(kit.copy(grad._data), requires_grad=False)
        for _, _, table, entries, _ in self.tables:
            for key, a in entries:
                table[key] = kit.copy(a)
        self.owned = [(v, v._data, v.grad) for v, _, _ in self.before]
        self.owned_tables = [(o, n, t, [(k, t[k]) for k, _ in e], size) for o, n, t, e, size in self.tables]

    def write_back(self, kit: GraphKit) -> None:
        """At the end of the captured step: copy what it rebound into the buffers it read, and point the state
        back at them. Raises NoGraph where that cannot be done."""
        for v, data, grad in self.owned:
            if v._data is not data and data is not None:
                v._data = _copied_back(kit, data, v._data, f"the data of {v.name or 'a Variable'}")
            if grad is not None and self._grad_rebound(v, grad):
                new = None if v.grad is None else v.grad._data
                v.grad = Variable(_copied_back(kit, grad._data, new, "a gradient"), requires_grad=False)
        for owner, name, table, entries, size in self.owned_tables:
            if len(table) != size:
                raise NoGraph(
                    f"{type(owner).__name__}.{name} gained entries during the step (state made on a first update)"
                )
            for key, old in entries:
                if table.get(key) is not old:
                    table[key] = _copied_back(kit, old, table.get(key), f"{type(owner).__name__}.{name}")
        changed = self._changed_setting()
        if changed is not None:
            owner, name, value, now = changed
            raise NoGraph(
                f"{type(owner).__name__}.{name} changed during the step ({_shown(value)} to {_shown(now)}): its "
                "kernels would repeat the captured value"
            )
        # what every launch leaves in the gradients (eager steps set them, so a launch sets them again)
        self.grads_after = [(v, v.grad) for v, _, _ in self.owned]

    def restore(self) -> None:
        """Everything back as it was before the capture began."""
        for v, data, grad in self.before:
            v._data, v.grad = data, grad
        for _, _, table, entries, _ in self.tables:
            known = {id(key) for key, _ in entries}
            for key in [k for k in table if id(k) not in known]:
                del table[key]
            for key, a in entries:
                table[key] = a
        for owner, name, value in self.settings:
            if isinstance(value, numbers.Number) and not same_setting(getattr(owner, name, None), value):
                setattr(owner, name, value)  # Adam's step count, advanced by the refused capture

    def captured(self) -> None:
        """The capture succeeded: the arrays from before it are no longer needed."""
        self.before, self.tables = [], []

    def current(self) -> bool:
        """Whether the state still holds the graph's buffers and settings: nobody gave a parameter, a gradient
        the step reads or an optimizer's table new arrays, or changed a setting (a learning rate, a hook)."""
        for v, data, grad in self.owned:
            if v._data is not data or (grad is not None and self._grad_rebound(v, grad)):
                return False
        for owner, name, table, entries, size in self.owned_tables:
            if vars(owner).get(name) is not table or len(table) != size:
                return False
            if any(table.get(key) is not buffer for key, buffer in entries):
                return False
        return self._changed_setting() is None

    def _grad_rebound(self, v: Variable, grad: Variable) -> bool:
        """Whether `v`, whose gradient `grad` from before the step the step reads, holds another one now."""
        return id(v) in self.grads_read and (v.grad is None or v.grad._data is not grad._data)

    def _changed_setting(self) -> tuple[Any, str, Any, Any] | None:
        """The first setting that is no longer what it was: (owner, name, then, now); None when none is."""
        for owner, name, value in self.settings:
            now = getattr(owner, name, None)
            if not same_setting(frozen_setting(now), value):
                return owner, name, value, now
        return None

    def after_launch(self) -> None:
        """Give the Variables the gradients the step leaves (eager steps set them; so does each launch)."""
        for v, grad in self.grads_after:
            v.grad = grad


def owner_state(
    owners: Sequence[Any], skip: Collection[tuple[int, str]] = ()
) -> tuple[list[tuple[Any, str, Any]], list[tuple[Any, str, Any]]]:
    """The attributes of `owners` (optimizers and their hooks) as ([(owner, name, per-parameter table)],
    [(owner, name, frozen value)] for every other attribute), leaving out `skip` ((id(owner), name) pairs)."""
    tables: list[tuple[Any, str, Any]] = []
    settings: list[tuple[Any, str, Any]] = []
    for owner in owners:
        for name, value in vars(owner).items():
            if isinstance(value, dict | weakref.WeakKeyDictionary):
                tables.append((owner, name, value))
            elif (id(owner), name) not in skip:
                settings.append((owner, name, frozen_setting(value)))
    return tables, settings


def frozen_setting(value: Any) -> Any:
    """A list as a tuple of its items (a hook added to `hooks` changes it); anything else itself."""
    return tuple(value) if isinstance(value, list) else value


def same_setting(a: Any, b: Any) -> bool:
    """The same setting: the same object, or equal numbers (a learning rate set to an equal value), or tuples
    of the same objects."""
    if a is b:
        return True
    if isinstance(a, numbers.Number) and isinstance(b, numbers.Number) and not (is_array(a) or is_array(b)):
        return bool(a == b)
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))
    return False


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, numbers.Number) else type(value).__name__


def _copied_back(kit: GraphKit, old: Any, new: Any, what: str) -> Any:
    if new is None or tuple(new.shape) != tuple(old.shape) or new.dtype != old.dtype:
        raise NoGraph(f"{what} changed shape or dtype, or was removed, during the step")
    kit.copy_into(old, new)
    return old


# (positions of the arguments it reads, [(low, high, what)], where, error): an id check run before each call
ArgumentCheck = tuple[list[int], list[tuple[int, int, str]], str, type[Exception]]


class GraphedStep:
    """A step captured as a CUDA graph: `launch(arrays)` runs one call."""

    kit: GraphKit
    graph: Any  # the library's graph object
    state: _State
    inputs: list[Any]  # the buffers the arguments are copied into
    checks: list[ArgumentCheck]  # the id checks run before each launch

    def __init__(
        self,
        kit: GraphKit,
        graph: Any,
        state: _State,
        inputs: list[Any],
        checks: list[ArgumentCheck],
        values: list[Any],
    ) -> None:
        self.kit, self.graph, self.state, self.inputs, self.checks = kit, graph, state, inputs, checks
        self.values = values  # the capture's slot values: those of the results are what the graph writes

    def current(self) -> bool:
        """Whether the graph still does what the step would (see `_State.current`)."""
        return self.state.current()

    def launch(self, arrays: Sequence[Any], result_slots: list[int]) -> dict[int, Any]:
        """Run the step on `arrays`: the result slots and fresh copies of their arrays (the next launch writes
        over the graph's own)."""
        kit = self.kit
        for buffer, a in zip(self.inputs, arrays):  # first: queued before the checks' wait for the device
            kit.copy_into(buffer, a)
        for positions, ranges, where, error in self.checks:  # a refused call has updated nothing
            check_index_arrays([arrays[k] for k in positions], ranges, where, error)
        kit.launch(self.graph)
        self.state.after_launch()
        return {slot: kit.copy(self.values[slot]) for slot in result_slots}


def capture_graph(
    kit: GraphKit,
    run: Callable[[list[Any]], None],
    arrays: Sequence[Any],
    n_slots: int,
    variables: list[Variable],
    grads_read: set[int],
    owners: list[Any],
) -> GraphedStep:
    """Capture `run` (the replay of a step's ops on a list of slot values, the arguments first) as a graph.
    Nothing of the step runs here; raises NoGraph (with the state as it was) when the step cannot be a graph."""
    values: list[Any] = [None] * n_slots
    deferred: list[Any] = []
    draws = random_draws()
    state: _State | None = None

    def step() -> None:
        values[: len(inputs)] = inputs  # the replay frees each slot after its last use
        with deferring_checks(deferred):
            run(values)
        state.write_back(kit)

    random = "the step draws random numbers (dropout), which a graph would repeat at every launch"
    try:
        state = _State(variables, grads_read, owners)
        inputs = [kit.copy(a) for a in arrays]
        state.own_buffers(kit)
        graph = kit.capture(step)
        if random_draws() != draws:
            raise NoGraph(random)
        checks = argument_checks(deferred, inputs, kit.same_memory, NoGraph, "a graph can check only its arguments")
    except NoGraph:
        state.restore()
        raise
    except Exception as error:  # the library refused an operation while capturing (a host read, a draw)
        if state is not None:
            state.restore()
        if random_draws() != draws:
            raise NoGraph(random) from error
        raise NoGraph(f"{kit.name} refused the capture: {failure(error)}") from error
    state.captured()
    return GraphedStep(kit, graph, state, inputs, checks, values)


def argument_checks(
    deferred: list[Any],
    inputs: Sequence[Any],
    same: Callable[[Any, Any], bool],
    refusal: type[Exception],
    only: str,
) -> list[ArgumentCheck]:
    """The id checks deferred while the step ran (`deferring_checks`), as the positions in `inputs` of the arrays
    each reads (`same(array, input)` finds them). A check that reads an array the step computes itself can run only
    in a plain replay: `refusal` is raised, naming the check and saying what can (`only`)."""
    checks = []
    for arrays, ranges, where, error in deferred:
        positions = [next((k for k, put in enumerate(inputs) if same(a, put)), None) for a in arrays]
        if None in positions:
            raise refusal(f"{where} checks ids that the step computes itself; {only}")
        checks.append((positions, ranges, where, error))
    return checks


def failure(error: Exception) -> str:
    """`error` in one line for a note: its type and the first line of its message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


class GraphReplay:
    """The CUDA-graph side of one recorded tape: the first replay warms the capture stream up, the second
    captures, later ones launch; `note` says why the tape replays plainly instead (then `replay` gives None)."""

    kit: GraphKit | None  # None once the tape replays plainly
    tape: Any  # a tape_replay.Tape (that module imports this one)

    def __init__(self, kit: GraphKit, tape: Any) -> None:
        self.kit, self.tape = kit, tape
        self.graphed: GraphedStep | None = None
        self.note: str | None = None
        self.warmed: bool = False
        self.captures: int = 0

    def replay(self, arrays: Sequence[Any]) -> dict[int, Any] | None:
        """One call on `arrays`: its result slots and their arrays, or None: replay plainly."""
        kit, tape, graphed = self.kit, self.tape, self.graphed
        if kit is None:
            return None
        if graphed is not None and not graphed.current():  # new settings or new arrays in the state: capture again
            graphed = self.graphed = None
            kit.release()
        if graphed is None:
            if not self.warmed:
                self.warmed = True
                values = kit.warm(lambda: tape.run_on(arrays))
                return {slot: values[slot] for slot in tape.result_slots}
            if self.captures == MAX_CAPTURES:
                return self.plain(f"captured {MAX_CAPTURES} times: the numbers its kernels take change every call")
            self.captures += 1
            try:
                graphed = self.graphed = capture_graph(kit, tape.run, arrays, tape.n_slots, *state_refs(tape.ops))
            except NoGraph as why:
                return self.plain(str(why))
        return graphed.launch(arrays, tape.result_slots)

    def plain(self, why: str) -> None:
        """From now on: replay plainly, for the reason `why` (in `note`)."""
        self.note, self.kit, self.graphed = why, None, None


def state_refs(ops: Sequence[Op]) -> tuple[list[Variable], set[int], list[Any]]:
    """What a tape's ops read or rebind outside the step: the Variables from before it, the ids of those whose
    gradient from before it is read, and the optimizers and their hooks."""
    variables: dict[int, Variable] = {}
    owners: list[Any] = []
    grads_read: set[int] = set()
    written: set[int] = set()
    for op in ops:
        touched = [v for kind, v in op.inputs if kind == "data"]
        if op.kind in ("set_grad", "set_data", "clear_grad", "read_grad"):
            touched.append(op.target)
        if op.kind == "call":
            params = list(op.target.target.params())
            touched += params
            grads_read |= {id(p) for p in params if id(p) not in written}
            owners += [op.target, *op.target.hooks]
        elif op.kind == "read_grad" and id(op.target) not in written:
            grads_read.add(id(op.target))
        elif op.kind in ("set_grad", "clear_grad"):
            written.add(id(op.target))
        for v in touched:
            variables.setdefault(id(v), v)
    return list(variables.values()), grads_read, list({id(o): o for o in owners}.values())
