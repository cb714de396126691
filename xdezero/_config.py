"""Configuration flags, one ContextVar each: correct per thread and per asyncio task."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from contextvars import ContextVar, Token
from typing import Any, Protocol, TypeVar, cast

__all__ = ["Config", "using_config", "no_grad", "test_mode", "StepRecorder", "recorder_slot"]

_FLAGS: dict[str, ContextVar[bool]] = {
    "enable_backprop": ContextVar("enable_backprop", default=True),
    "train": ContextVar("train", default=True),
}

# Read directly by the engine's hot path.
enable_backprop_flag: ContextVar[bool] = _FLAGS["enable_backprop"]

_F = TypeVar("_F", bound=Callable[..., Any])


class StepRecorder(Protocol):
    """What the engine reports to while a step is captured (`xdezero.tapes.record.Recorder` implements it).

    The engine's one recording seam: every array operation of a step passes through one of these methods, read
    from `recorder_slot` where the engine already reads its configuration (core's Function, Variable and backward
    pass, Layer's attribute assignment, Optimizer.update, the multi-node optimizer's exchange). `function_call`,
    `backward`, `optimizer_update` and `collective` run the operation themselves; the others are told after the
    fact.
    """

    def function_call(self, f: Any, inputs: tuple[Any, ...]) -> Any:
        """Run `f(*inputs)` (a Function's call) and note it."""

    def backward(self, v: Any, retain_grad: bool, create_graph: bool) -> None:
        """Run the backward pass from `v` and note what it computes and stores."""

    def array_op(self, fn: Callable[..., Any], arrays: tuple[Any, ...], result: Any) -> None:
        """Note `result = fn(*arrays)`, an array operation of the backward pass itself."""

    def variable_created(self, v: Any) -> None:
        """Note a Variable made during the step."""

    def data_assigned(self, v: Any, previous: Any) -> None:
        """Note `v.data = ...` (the array it held before was `previous`)."""

    def grad_cleared(self, v: Any) -> None:
        """Note `v.cleargrad()`."""

    def optimizer_update(self, optimizer: Any) -> None:
        """Run `optimizer.update()` and note it."""

    def attribute_assigned(self, layer: Any, name: str, value: Any) -> None:
        """Note `layer.name = value` (a recurrent layer's hidden state, a replaced parameter)."""

    def collective(self, run: Callable[[], str | None], variables: Sequence[Any]) -> str | None:
        """Run `run()`, a collective over all processes that gives `variables` new gradients (a multi-node
        optimizer's all-reduce), and note it: a replay runs it again. `run` returns why the call cannot be replayed
        (it did what later calls will not), or None; so does this."""


# The recorder of the step being captured in this context, or None (nearly always). Nothing records inside an
# operation a recorder runs itself: it clears the slot meanwhile.
recorder_slot: ContextVar[StepRecorder | None] = ContextVar("recorder", default=None)


def _flag(name: str) -> ContextVar[bool]:
    try:
        return _FLAGS[name]
    except KeyError:
        known = ", ".join(repr(k) for k in _FLAGS)
        raise ValueError(f"unknown config name {name!r}; known names are {known}") from None


class _Config:
    """`Config.enable_backprop` and `Config.train` read (and set) the current context's values."""

    __slots__ = ()

    def __getattr__(self, name: str) -> bool:
        try:
            return _FLAGS[name].get()
        except KeyError:
            raise AttributeError(f"Config has no flag {name!r}; known flags are {', '.join(_FLAGS)}") from None

    def __setattr__(self, name: str, value: bool) -> None:
        _flag(name).set(value)

    def __repr__(self) -> str:
        return "Config(" + ", ".join(f"{k}={v.get()}" for k, v in _FLAGS.items()) + ")"


Config: _Config = _Config()


class using_config:
    """Set a config flag inside a `with` block or a decorated function; restored on exit, even on error.

    One object may be entered by several threads or asyncio tasks at once, and left in any order: what each
    entry saved lives in the context that entered it. As a decorator it also covers generator functions and
    async generators, whose bodies run with the flag set at every resumption, never leaking it to the caller.
    """

    def __init__(self, name: str, value: bool) -> None:
        self._name = name
        self._var = _flag(name)
        self._value = value

    def __enter__(self) -> using_config:
        token = self._var.set(self._value)
        _entered.set((*_entered.get(), (self, token)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        entered = _entered.get()
        for i in range(len(entered) - 1, -1, -1):
            if entered[i][0] is self:
                _entered.set(entered[:i] + entered[i + 1 :])
                self._var.reset(entered[i][1])
                return
        raise RuntimeError(f"using_config({self._name!r}, {self._value!r}) was left without being entered here")

    def __call__(self, func: _F) -> _F:
        """Decorate `func` (a function, coroutine function, generator or async generator function)."""
        # Each wrapper takes and returns what `func` does (functools.wraps): the casts say so to type checkers.
        name, value = self._name, self._value
        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            def async_generator_wrapper(*args, **kwargs):
                return _async_generator_under(name, value, func(*args, **kwargs))

            return cast(_F, async_generator_wrapper)
        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def generator_wrapper(*args, **kwargs):
                return _generator_under(name, value, func(*args, **kwargs))

            return cast(_F, generator_wrapper)
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args, **kwargs):
                with using_config(name, value):
                    return await func(*args, **kwargs)

            return cast(_F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with using_config(name, value):
                return func(*args, **kwargs)

        return cast(_F, wrapper)


# (config object, token) for every `with` block open in the current context, innermost last. A tuple, so that
# each thread and asyncio task sees (and edits) only its own entries.
_entered: ContextVar[tuple[tuple[using_config, Token[bool]], ...]] = ContextVar("xdezero_entered_configs", default=())


def _generator_under(name: str, value: bool, gen):
    """Run the generator `gen` with the flag set while its body runs, not while it is paused."""
    resume, sent = gen.send, None
    while True:
        try:
            with using_config(name, value):
                item = resume(sent)
        except StopIteration as stop:
            return stop.value
        try:
            sent, resume = (yield item), gen.send
        except GeneratorExit:
            with using_config(name, value):
                gen.close()
            raise
        except BaseException as error:  # thrown in by the caller: deliver it inside the flag
            sent, resume = error, gen.throw


async def _async_generator_under(name: str, value: bool, gen):
    """The async-generator counterpart of `_generator_under`."""
    resume, sent = gen.asend, None
    while True:
        try:
            with using_config(name, value):
                item = await resume(sent)
        except StopAsyncIteration:
            return
        try:
            sent, resume = (yield item), gen.asend
        except GeneratorExit:
            with using_config(name, value):
                await gen.aclose()
            raise
        except BaseException as error:
            sent, resume = error, gen.athrow


def no_grad() -> using_config:
    """Do not record the graph: `with no_grad(): ...` or `@no_grad()`."""
    return using_config("enable_backprop", False)


def test_mode() -> using_config:
    """Evaluation behaviour (dropout off, batch_norm uses running stats)."""
    return using_config("train", False)


# Not a pytest test, even when imported into a test module.
test_mode.__test__ = False  # pyright: ignore[reportFunctionMemberAccess]
