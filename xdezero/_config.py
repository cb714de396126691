"""Configuration flags, one ContextVar each: correct per thread and per asyncio task."""

from __future__ import annotations

import functools
import inspect
from contextvars import ContextVar

__all__ = ["Config", "using_config", "no_grad", "test_mode"]

_FLAGS: dict[str, ContextVar[bool]] = {
    "enable_backprop": ContextVar("enable_backprop", default=True),
    "train": ContextVar("train", default=True),
}

# Read directly by the engine's hot path.
enable_backprop_flag = _FLAGS["enable_backprop"]


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


Config = _Config()


class using_config:
    """Set a config flag inside a `with` block or a decorated function; restored on exit, even on error."""

    def __init__(self, name: str, value: bool) -> None:
        self._name = name
        self._var = _flag(name)
        self._value = value
        self._tokens: list = []

    def __enter__(self) -> using_config:
        self._tokens.append(self._var.set(self._value))
        return self

    def __exit__(self, *exc_info) -> None:
        self._var.reset(self._tokens.pop())

    def __call__(self, func):
        name, value = self._name, self._value
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args, **kwargs):
                with using_config(name, value):
                    return await func(*args, **kwargs)

            return async_wrapper

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with using_config(name, value):
                return func(*args, **kwargs)

        return wrapper


def no_grad() -> using_config:
    """Do not record the graph: `with no_grad(): ...` or `@no_grad()`."""
    return using_config("enable_backprop", False)


def test_mode() -> using_config:
    """Evaluation behaviour (dropout off, batch_norm uses running stats)."""
    return using_config("train", False)


test_mode.__test__ = False  # not a pytest test, even when imported into a test module
