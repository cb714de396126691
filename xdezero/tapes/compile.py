"""A captured step compiled by its library into one function (JAX: `jax.jit`): one dispatch per step.

JAX dispatches every operation from Python, and a small model's step is bound by that. Where the arguments'
backend can compile a function of arrays (`Backend.compile_step`), the replay becomes one: a pure function of
the step's arguments and of the state it reads (its parameters' data, the gradients from before the step it reads,
the optimizers' per-parameter tables), giving the step's results and the new state. It is traced by running the
tape's replay once on the library's placeholders, with the state swapped in and put back afterwards; later calls
run the compiled function and bind the state to what it returns. The state's arrays are donated: a parameter's
array from before a step is consumed by the step (eager steps leave it alive).

What is baked into the compiled function: the numbers the optimizers and their hooks hold (a learning rate;
changed between calls, the step is traced again, at most MAX_TRACES times). A number the step itself changes
(Adam's step count) is passed in and out as state instead, and read back to the host after each call. A step that
cannot be traced replays plainly and `CapturedStep.graph_notes` says why: it draws random numbers (dropout), or
reads a value on the host (a `float()`, a branch on an array).
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any

from xdezero.backends import check_index_arrays, deferring_checks, is_array, random_draws, restore_streams, streams
from xdezero.core import Variable
from xdezero.tapes.graphs import (
    ArgumentCheck,
    argument_checks,
    failure,
    frozen_setting,
    owner_state,
    same_setting,
    state_refs,
)

__all__ = ["CompiledReplay", "NoCompile"]

MAX_TRACES = 8  # traces of one tape before it stays plain (the numbers it bakes change on every call)


class NoCompile(Exception):
    """Why a step cannot be compiled (the step then replays plainly)."""


_RANDOM = "the step draws random numbers (dropout), which a compiled step would repeat"


class _Counting(Exception):
    """The trace found a number the step changes (now counted as state): trace again."""


class _Locations:
    """Where a replay reads and leaves arrays outside its slots: Variables' data, the gradients from before the
    step that it reads, and the optimizers' per-parameter tables; and the numbers it bakes in."""

    def __init__(self, variables: list[Variable], grads_read: set[int], owners: list[Any]) -> None:
        self.variables: list[Variable] = variables
        self.grads_read: list[Variable] = [v for v in variables if id(v) in grads_read]
        self.owners: list[Any] = owners
        self.tables: list[tuple[Any, str, Any, list[Any]]] = []  # (owner, name, table, its keys)
        self.settings: list[tuple[Any, str, Any]] = []  # (owner, name, value): every other attribute
        self.counters: list[tuple[Any, str, type]] = []  # (owner, name, int or float): numbers the step changes
        self.look()

    def look(self) -> None:
        """Note the tables and settings as they are now (before a trace)."""
        counted = {(id(owner), name) for owner, name, _ in self.counters}
        tables, self.settings = owner_state(self.owners, skip=counted)
        self.tables = [(o, name, table, [k for k, a in table.items() if is_array(a)]) for o, name, table in tables]

    def inputs(self) -> list[Any]:
        """The arrays the step reads, now: [data, gradients read, tables' entries]."""
        data = [v._data for v in self.variables]
        if any(d is None for d in data):
            raise NoCompile("a parameter has no data yet")
        grads = [v.grad._data if v.grad is not None else None for v in self.grads_read]
        return [data, grads, self._entries(), [getattr(owner, name) for owner, name, _ in self.counters]]

    def _entries(self) -> list[list[Any]]:
        return [[table[k] for k in keys] for _, _, table, keys in self.tables]

    def bind(self, state: list[Any], grads_of: list[Variable], host: bool = False) -> None:
        """Put `state` ([data, gradients of `grads_of`, tables' entries, counters]) where the step reads and leaves
        it; `host`: the counters as Python numbers."""
        data, grads, tables, counters = state
        for v, d in zip(self.variables, data):
            v._data = d
        for v, g in zip(grads_of, grads):
            v.grad = None if g is None else Variable(g, requires_grad=False)
        for (_, _, table, keys), arrays in zip(self.tables, tables):
            for k, a in zip(keys, arrays):
                table[k] = a
        for (owner, name, kind), value in zip(self.counters, counters):
            setattr(owner, name, kind(value) if host else value)

    def outputs(self) -> list[Any]:
        """What the step left: [every Variable's data, its gradient, the tables' entries]."""
        for owner, name, table, keys in self.tables:
            if len(keys) != sum(is_array(a) for a in table.values()):
                raise NoCompile(f"{type(owner).__name__}.{name} gained entries during the step (state made now)")
        data = [v._data for v in self.variables]
        grads = [v.grad._data if v.grad is not None else None for v in self.variables]
        return [data, grads, self._entries(), [getattr(owner, name) for owner, name, _ in self.counters]]

    def changed(self) -> bool:
        """Whether a setting changed, or a table was replaced or resized (a loaded checkpoint), since `look`."""
        for owner, name, table, keys in self.tables:
            if vars(owner).get(name) is not table or len(keys) != sum(is_array(a) for a in table.values()):
                return True
        return self.changed_setting() is not None

    def changed_setting(self) -> tuple[Any, str, Any] | None:
        """The first setting that is not what it was when traced: (owner, name, then), or None."""
        for owner, name, value in self.settings:
            if not same_setting(frozen_setting(getattr(owner, name, None)), value):
                return owner, name, value
        return None

    def count(self, owner: Any, name: str, value: Any) -> None:
        """Pass the number `owner.name` (now `value`) in and out as state from now on."""
        self.settings.remove((owner, name, value))
        self.counters.append((owner, name, type(value)))
        setattr(owner, name, value)  # as before the trace that changed it

    def restore_settings(self) -> None:
        """Put back the numbers a trace changed (Adam's step count)."""
        for owner, name, value in self.settings:
            if isinstance(value, numbers.Number) and not same_setting(getattr(owner, name, None), value):
                setattr(owner, name, value)  # Adam's step count, advanced by the trace


class CompiledReplay:
    """The compiled side of one recorded tape: the first replay traces and compiles it, later ones call it;
    `note` says why the tape replays plainly instead (then `replay` gives None)."""

    def __init__(self, compile_step: Callable[[Callable[..., Any]], Callable[..., Any]], tape: Any) -> None:
        self.compile_step: Callable[[Callable[..., Any]], Callable[..., Any]] | None = compile_step
        self.tape: Any = tape  # a replay.Tape (that module imports this one)
        self.compiled: Callable[..., Any] | None = None
        self.locations: _Locations = _Locations(*state_refs(tape.ops))
        self.checks: list[ArgumentCheck] = []
        self.note: str | None = None
        self.traces: int = 0

    @property
    def graphed(self) -> Any:
        """The compiled function, or None (read as CUDA graphs are, by `CapturedStep.graphs`)."""
        return self.compiled

    def replay(self, arrays: Sequence[Any]) -> dict[int, Any] | None:
        """One call on `arrays`: its result slots and their arrays, or None: replay plainly."""
        if self.compile_step is None:
            return None
        if self.compiled is not None and self.locations.changed():
            self.compiled = None  # a new learning rate, a hook added, a loaded optimizer state: trace again
        if self.compiled is None:
            if self.traces == MAX_TRACES:
                return self.plain(f"traced {MAX_TRACES} times: the numbers it bakes in change every call")
            self.traces += 1
            self.locations.look()
            self.compiled = self.compile_step(self._pure)
        for positions, ranges, where, error in self.checks:  # a refused call has updated nothing
            check_index_arrays([arrays[k] for k in positions], ranges, where, error)
        try:
            state = self.locations.inputs()
            leaves = [a for part in state[:2] for a in part if a is not None] + [a for t in state[2] for a in t]
            if len(set(map(id, leaves))) != len(leaves):
                raise NoCompile("two parameters, gradients or optimizer states share one array, which it would consume")
            results, new_state = self.compiled(list(arrays), state)
        except _Counting:  # a number the step changes: trace again with it passed in and out
            self.compiled = None
            return self.replay(arrays)
        except NoCompile as why:
            return self.plain(str(why))
        self.locations.bind(new_state, self.locations.variables, host=True)
        return dict(zip(self.tape.result_slots, results))

    def _pure(self, arrays: list[Any], state: list[Any]) -> tuple[list[Any], list[Any]]:
        """The step as a function of its arguments and state (run once per trace, on placeholders)."""
        tape, locations = self.tape, self.locations
        before, draws, generators = locations.inputs(), random_draws(), streams()
        grads_before = [v.grad for v in locations.variables]
        deferred: list[Any] = []
        try:
            locations.bind(state, locations.grads_read)
            values: list[Any] = [None] * tape.n_slots
            values[: tape.n_args] = arrays
            with deferring_checks(deferred):
                tape.run(values)
            if random_draws() != draws:
                raise NoCompile(_RANDOM)
            changed = locations.changed_setting()
            if changed is not None:
                owner, name, value = changed
                if not isinstance(value, int | float) or isinstance(value, bool):
                    raise NoCompile(f"{type(owner).__name__}.{name} changes while the step runs")
                locations.count(owner, name, value)
                raise _Counting
            results, new_state = [values[slot] for slot in tape.result_slots], locations.outputs()
            only = "a compiled step checks only arguments"
            self.checks = argument_checks(deferred, arrays, operator.is_, NoCompile, only)
        except (NoCompile, _Counting):
            raise
        except Exception as error:  # the library refused an operation while tracing (a host read)
            if random_draws() != draws:
                raise NoCompile(_RANDOM) from error
            raise NoCompile(f"the trace failed: {failure(error)}") from error
        finally:
            locations.bind(before, locations.grads_read)
            for v, grad in zip(locations.variables, grads_before):
                v.grad = grad
            locations.restore_settings()
            if random_draws() != draws:
                restore_streams(generators)
        return results, new_state

    def plain(self, why: str) -> None:
        """From now on: replay plainly, for the reason `why` (in `note`)."""
        self.note, self.compile_step, self.compiled = why, None, None
