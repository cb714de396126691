"""`xdezero.capture`: record a training step, then replay it without rebuilding the graph.

    step = xdezero.capture(train_step)     # train_step(x, t): forward, cleargrads, backward, update; returns loss
    for x, t in loader:
        loss = step(x, t)

A define-by-run step pays for Python on every op: Variables, the graph, the backward heap. A training step runs
the same ops on the same shapes every time, so `capture` records what the step computes, at the level of
arrays, and replays that list:

- every Function call: its `forward` on the arrays it received, and the arrays it declares it keeps for later
  ops (`saved`: a ReLU's mask, the probabilities of softmax cross-entropy);
- the backward pass's own array operations (the first gradient, sums where gradients meet, copies), the
  gradients it stores in Variables that outlive the step (the parameters'), `cleargrad` calls, gradients and
  data the step assigns, a layer's Variable attributes it sets (a recurrent layer's hidden state);
- `Optimizer.update()` calls, which replay as calls (their state stays the optimizer's own).

The engine reports all of these through one seam (`xdezero._config.recorder_slot`, see record.py), and what
changes state without passing it (an array written in place) is found by comparing, and refused. Replay runs the
recorded `forward` methods of copies of the Function objects, in order, on the new inputs, reading the
parameters' current data, and frees each intermediate after its last use. The results are those of eager
execution, bit for bit on NumPy: the same code runs on the same arrays in the same order.

The first two calls with a new signature (the shapes, dtypes and devices of the array arguments, the other
arguments, `Config.train` and `Config.enable_backprop`) run eagerly and record; the second confirms the first:
the same ops, built with the same settings, and the same values wherever an op took an array from outside (a
constant). A step whose ops or constants differ between those calls depends on its inputs in a way a replay
cannot repeat (Python control flow on array values, an array computed from the inputs outside xdezero's
functions): `CaptureError` says which op, and where in the step. Two recordings on the same argument values
could not show that: such a tape replays only on those values until a call on others has recorded and matched.
From the third call on, the step replays (on CuPy and CUDA torch as one CUDA graph from the fourth: see
`xdezero.tapes.graphs`; on JAX as one `jax.jit` function: see `xdezero.tapes.compile`). Its Python side effects
(printing, appending to lists) happen only while it records, as with `torch.jit.trace`: return what you need (the
loss, metrics as Variables).

Limits: the step's arguments are arrays (or Variables holding them: the gradient a step leaves on such an
argument goes to each call's own Variable, and the step then replays without a CUDA graph) and hashable values;
it returns a Variable, an array, or a tuple/list/dict of them. A Variable whose gradient the step reads or leaves
behind must exist before the step (parameters do). An op built with an array of the step (`embed_id`'s ids,
`x[ids]`, the index a GetItemGrad scatters to) reads it from this call's values at replay; other arrays an op is
built with are constants, and must be equal in the two recordings.

This file holds the signature of a call and the wrapper that picks, records and replays tapes; record.py the
recorder, replay.py a recording as a replay program (and the comparison of two recordings), values.py how
values compare across calls and recordings, graphs.py and compile.py the replay as one CUDA graph or one compiled
function.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

import numpy as np

from xdezero._config import Config
from xdezero.backends import array_namespace, backend_of_namespace, device_of, graph_kit, is_array
from xdezero.core import Variable
from xdezero.tapes.compile import CompiledReplay
from xdezero.tapes.graphs import GraphReplay
from xdezero.tapes.record import COMPLETE, CaptureError, record
from xdezero.tapes.replay import Tape, same_tapes
from xdezero.tapes.values import same_values

__all__ = ["capture", "CaptureError", "CapturedStep"]


MAX_SIGNATURES = 16  # signatures kept per captured step (and of first recordings awaiting their confirmation)
RECENT = 2 * MAX_SIGNATURES  # calls: a tape replayed (or recorded) within as many calls is not evicted for another
MAX_VARIANTS = 4  # tapes kept per signature, for steps that start from different states (see CapturedStep)

P = ParamSpec("P")  # the step's parameters, which its captured version keeps
R = TypeVar("R")  # what the step returns


# --- the user-facing wrapper ---------------------------------------------------------------------------


def _arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    return [*args, *(kwargs[k] for k in sorted(kwargs))]


_BOOL_DTYPES: dict[tuple[type, Any], bool] = {}  # (array type, dtype) -> whether the dtype is a boolean one


def _signature(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], list[Any], list[Variable | None] | None]:
    """What a tape is recorded for (the arrays' kinds, shapes, dtypes and devices, whether each came in a
    Variable, which arguments are the same array, the other arguments' values, and the configuration); the array
    arguments' data in order; and the Variables among them (None when there are none), from one pass."""
    parts: list[Any] = [tuple(sorted(kwargs))] if kwargs else []
    arrays: list[Any] = []
    variables: list[Any] | None = None  # Variables, None for plain arrays
    for value in _arguments(args, kwargs) if kwargs else args:
        in_variable = isinstance(value, Variable)
        data = value._data if in_variable else value
        if type(data) is np.ndarray:  # the common case, kept cheap: NumPy arrays live on the host
            parts.append((np.ndarray, data.shape, data.dtype, in_variable))
            if data.dtype == np.bool_:  # a mask: what it selects has as many rows as it has True values
                parts.append(("true values", int(np.count_nonzero(data))))
        elif is_array(data):
            dtype = data.dtype  # the object: its name costs microseconds (NumPy's dtypes, which JAX uses)
            parts.append((type(data), tuple(data.shape), dtype, str(device_of(data)), in_variable))
            kind = (type(data), dtype)  # dtypes of two libraries are never compared (array-api-strict warns)
            is_bool = _BOOL_DTYPES.get(kind)
            if is_bool is None:
                is_bool = _BOOL_DTYPES[kind] = str(dtype).endswith("bool")  # bool, torch.bool
            if is_bool:
                parts.append(("true values", int(array_namespace(data).count_nonzero(data))))
        else:
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"capture: the step's arguments must be arrays, Variables or hashable values, got "
                    f"{type(value).__name__}"
                ) from None
            parts.append(("value", type(value), repr(value) if isinstance(value, float | complex) else value))
            continue
        if in_variable and variables is None:
            variables = [None] * len(arrays)
        if variables is not None:
            variables.append(value if in_variable else None)
        arrays.append(data)
    if len(arrays) > 1:
        ids = [id(a) for a in arrays]
        if len(set(ids)) < len(ids):  # the same array twice: the tape reads it from one slot
            parts.append(("same arrays", tuple(ids.index(i) for i in ids)))
    return (*parts, bool(Config.train), bool(Config.enable_backprop)), arrays, variables


class CapturedStep(Generic[P, R]):
    """`fn` recorded per signature of its arguments and replayed (see the module's docstring)."""

    def __init__(self, fn: Callable[P, R], cuda_graphs: bool = True, compiled: bool = True) -> None:
        if not callable(fn):
            raise TypeError(f"capture: expected a function, got {type(fn).__name__}")
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"capture: cuda_graphs must be True or False, got {cuda_graphs!r}")
        if not isinstance(compiled, bool):
            raise TypeError(f"capture: compiled must be True or False, got {compiled!r}")
        self.fn: Callable[P, R] = fn
        self.cuda_graphs: bool = cuda_graphs
        self.compiled: bool = compiled
        self.tapes: dict[tuple[Any, ...], list[Tape]] = {}  # signature -> its tapes (variants, see __call__)
        self._first: dict[tuple[Any, ...], list[Tape]] = {}  # first recordings awaiting their confirmation
        self._used: dict[tuple[Any, ...], int] = {}  # signature -> the call that last replayed or recorded it
        self._calls = 0
        self._warned = False
        self.__name__: str = getattr(fn, "__name__", type(fn).__name__)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key, arrays, variables = _signature(args, kwargs)
        self._calls += 1
        variants = self.tapes.get(key)
        if variants is not None:
            for tape in variants:
                if tape.fits(variables):
                    if tape.seen_arguments is not None and not tape.same_arguments(arrays):
                        # Confirmed on the same batch twice: constants taken from the batch outside xdezero's
                        # functions could not show. Record this call and compare it with the tape, once.
                        variants.remove(tape)
                        self._first.setdefault(key, []).append(tape)
                        break
                    self._used[key] = self._calls
                    return tape.replay(arrays, variables)
        # New arguments, or the state the step starts from differs from every recording's (a gradient left from
        # an earlier call, a changed requires_grad, other parameters): record; each such variant gets its own tape.
        pending = self._first.get(key, [])
        known = [v for tape in pending for v in tape.external]
        recorder, result = record(self.fn, args, kwargs, arrays, variables, known)
        try:
            new = Tape(recorder, len(arrays), result)
        except CaptureError as error:
            error.args = (f"{error}. {COMPLETE}",)
            error.result = result
            raise
        first = next((tape for tape in pending if tape.state == new.state), None)
        if first is None:
            self._keep(self._first, key, new)
            return result
        pending.remove(first)
        if not pending:
            del self._first[key]
        difference = same_tapes(first, new)
        if difference is not None:
            error = CaptureError(
                f"capture: the step cannot be replayed: {difference}. Its Python code must run the same "
                "operations on every call (no branches on array values) and compute every array from its inputs "
                f"with xdezero's functions; call the step uncaptured otherwise. {COMPLETE}"
            )
            error.result = result
            raise error
        if not same_values(first.seen_arguments, new.seen_arguments):
            new.seen_arguments = None  # confirmed on two batches: constants from the batch would have differed
        if arrays and not new.on_arguments:
            kit = graph_kit(arrays) if self.cuda_graphs else None
            backend = backend_of_namespace(array_namespace(*arrays))
            if kit is not None:
                new.graph = GraphReplay(kit, new)
            elif self.compiled and backend.compiles_steps:
                new.graph = CompiledReplay(backend.compile_step, new)
            if new.graph is not None and new.plain_only:
                new.graph.plain(new.plain_only)
        self._keep(self.tapes, key, new)
        return result

    def _keep(self, tapes: dict[tuple[Any, ...], list[Tape]], key: tuple[Any, ...], tape: Tape) -> None:
        """Add `tape` to the variants of `key` in `tapes` (the confirmed ones, or the first recordings), forgetting
        the oldest variant beyond MAX_VARIANTS. A new signature beyond MAX_SIGNATURES takes the place of the one
        least recently used only when that one was not used in the last RECENT calls; else it is not kept (with a
        warning, once): signatures that keep replaying are never given up for new ones."""
        if key not in tapes and len(tapes) >= MAX_SIGNATURES:
            oldest = min(tapes, key=lambda k: self._used.get(k, 0))
            if self._calls - self._used.get(oldest, 0) <= RECENT:
                self._warn_full()
                return
            del tapes[oldest]
        variants = tapes.setdefault(key, [])
        variants.append(tape)
        del variants[:-MAX_VARIANTS]
        self._used[key] = self._calls

    def _warn_full(self) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"capture: {self.__name__!r} was called with more than {MAX_SIGNATURES} signatures (shapes, dtypes, "
                f"or values of its other arguments) within {RECENT} calls; the {MAX_SIGNATURES} first confirmed ones "
                "that keep replaying are kept, and calls with the others run eagerly (recording each time). A number "
                "argument that changes on every call (a learning rate, a step count) makes every call record: set it "
                "on the optimizer, or pass it as an array; pad batches to fewer shapes",
                RuntimeWarning,
                stacklevel=4,
            )

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        """As a method (`@capture` on a method of a class): bound to `instance`, which the step receives first."""
        return self if instance is None else types.MethodType(self, instance)

    @property
    def recorded(self) -> int:
        """How many signatures have a tape (replay from their third call on)."""
        return sum(map(len, self.tapes.values()))

    @property
    def graphs(self) -> int:
        """How many signatures replay as a CUDA graph (from their fourth call on; CuPy and torch on CUDA) or as one
        compiled function (from their third; JAX)."""
        return sum(tape.graph is not None and tape.graph.graphed is not None for tape in self._all())

    @property
    def graph_notes(self) -> list[str]:
        """Why signatures replay plainly where their library has CUDA graphs or compiles (empty when none does)."""
        return [tape.graph.note for tape in self._all() if tape.graph is not None and tape.graph.note]

    def _all(self) -> list[Tape]:
        return [tape for variants in self.tapes.values() for tape in variants]


@overload
def capture(fn: Callable[P, R], *, cuda_graphs: bool = True, compiled: bool = True) -> CapturedStep[P, R]:
    """`fn` captured, with its signature."""


@overload
def capture(
    fn: None = None, *, cuda_graphs: bool = True, compiled: bool = True
) -> Callable[[Callable[P, R]], CapturedStep[P, R]]:
    """A decorator that captures the function it is given (`@capture(cuda_graphs=False, compiled=False)`)."""


def capture(
    fn: Callable[P, R] | None = None, *, cuda_graphs: bool = True, compiled: bool = True
) -> CapturedStep[P, R] | Callable[[Callable[P, R]], CapturedStep[P, R]]:
    """Record `fn` (a training step) and replay it on later calls with arrays of the same shapes: see
    `xdezero.capture`'s module documentation. Usable as a decorator, with or without arguments. On CuPy and
    torch CUDA arrays the replay runs as one CUDA graph where it can (`cuda_graphs=False`: never; see
    `xdezero.tapes.graphs`); on JAX arrays as one function compiled by `jax.jit` (`compiled=False`: never; see
    `xdezero.tapes.compile`)."""
    if fn is None:
        return functools.partial(CapturedStep, cuda_graphs=cuda_graphs, compiled=compiled)
    return CapturedStep(fn, cuda_graphs=cuda_graphs, compiled=compiled)
