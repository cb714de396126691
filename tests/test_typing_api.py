"""The public API's annotations: they resolve at runtime, and the types users rely on are the ones declared.

Annotations are strings here (`from __future__ import annotations`), so a name that no longer resolves goes
unnoticed until a type checker or `typing.get_type_hints` reads it: this test reads them all.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from typing import Any

import pytest

from xdezero.core import Variable
from xdezero.dataloaders import DataLoader
from xdezero.layers import Conv2d, Layer, Linear
from xdezero.models import MLP, ResNet, Sequential
from xdezero.optimizers import Optimizer

MODULES = [
    "xdezero.layers",
    "xdezero.models",
    "xdezero.optimizers",
    "xdezero.dataloaders",
    "xdezero.datasets",
    "xdezero.transforms",
    "xdezero.utils",
    "xdezero.cuda",
    "xdezero.visualize",
    "xdezero.testing",
    "xdezero.checkpoint",
]


def _public_callables(module_name: str) -> list[tuple[str, Any]]:
    """(qualified name, object) for the module's own public functions, classes and their public methods."""
    module = importlib.import_module(module_name)
    found = []
    for name in module.__all__:
        obj = getattr(module, name)
        if getattr(obj, "__module__", None) != module_name:
            continue  # a re-export: checked in its own module
        if inspect.isfunction(obj):
            found.append((name, obj))
        elif inspect.isclass(obj):
            found.append((name, obj))
            for attr, member in vars(obj).items():
                if isinstance(member, staticmethod | classmethod):
                    member = member.__func__
                if inspect.isfunction(member) and (not attr.startswith("_") or attr in ("__init__", "__call__")):
                    found.append((f"{name}.{attr}", member))
    return found


CALLABLES = [(m, q, obj) for m in MODULES for q, obj in _public_callables(m)]


@pytest.mark.parametrize(("module", "qualname", "obj"), CALLABLES, ids=[f"{m}.{q}" for m, q, _ in CALLABLES])
def test_annotations_resolve_and_docstrings_exist(module: str, qualname: str, obj: Any) -> None:
    hints = typing.get_type_hints(obj)  # raises NameError for an annotation naming nothing
    if inspect.isfunction(obj) and not qualname.endswith("__init__"):
        assert "return" in hints, f"{module}.{qualname} has no return annotation"
        assert obj.__doc__, f"{module}.{qualname} has no docstring"
    elif inspect.isclass(obj):
        assert obj.__doc__, f"{module}.{qualname} has no docstring"


def test_the_types_users_rely_on() -> None:
    assert typing.get_type_hints(Layer.__call__)["return"] is Variable
    assert typing.get_type_hints(Optimizer.setup)["return"] is typing.Self
    assert typing.get_type_hints(DataLoader.__iter__)["return"] is typing.Self
    assert typing.get_type_hints(DataLoader.__next__)["return"] == tuple[Any, Any]
    assert typing.get_type_hints(DataLoader.__len__)["return"] is int
    assert typing.get_type_hints(Optimizer)["hyper_parameters"] == tuple[str, ...]
    for cls in (Linear, Conv2d, MLP, Sequential, ResNet):
        assert typing.get_type_hints(cls.forward)["return"] is Variable, cls.__name__
