"""The engine's and the core ops' annotations: they resolve at runtime, every public callable has a docstring,
and the types users see on Variable and Function are the declared ones.

Annotations are strings here (`from __future__ import annotations`): a name that stops resolving goes unnoticed
until a type checker or `typing.get_type_hints` reads it, so this test reads them all.
"""

from __future__ import annotations

import importlib
import inspect
import typing
import weakref
from typing import Any

import pytest

import xdezero.functions  # noqa: F401  (installs Variable's operators)
from xdezero.core import Function, Variable

MODULES = [
    "xdezero.core",
    "xdezero.core_simple",
    "xdezero._config",
    "xdezero.functions.arithmetic",
    "xdezero.functions.math",
    "xdezero.functions.reduce",
]


def _public(module_name: str) -> list[tuple[str, Any]]:
    module = importlib.import_module(module_name)
    found = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isfunction(obj):
            found.append((name, obj))
        elif inspect.isclass(obj):
            found.append((name, obj))
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in ("__init__", "__call__"):
                    continue
                function = member.fget if isinstance(member, property) else member
                if inspect.isfunction(function):
                    found.append((f"{name}.{attr}", function))
    return found


CASES = [(module, qualname, obj) for module in MODULES for qualname, obj in _public(module)]


@pytest.mark.parametrize(("module", "qualname", "obj"), CASES, ids=[f"{m}:{q}" for m, q, _ in CASES])
def test_annotations_resolve_and_docstrings_exist(module: str, qualname: str, obj: Any) -> None:
    typing.get_type_hints(obj)  # raises NameError for an annotation that no longer resolves
    if not qualname.endswith(("__init__", "__call__")) or qualname.endswith("using_config.__call__"):
        assert inspect.getdoc(obj), f"{module}.{qualname} has no docstring"


def test_the_types_users_see() -> None:
    hints = typing.get_type_hints
    assert hints(Variable.shape.fget)["return"] == tuple[int, ...]
    for name in ("__add__", "__mul__", "__matmul__", "__getitem__", "reshape", "transpose", "sum", "to_cpu"):
        assert hints(getattr(Variable, name))["return"] is Variable, name
    assert hints(Variable.T.fget)["return"] is Variable
    declared = hints(Function)
    assert declared["inputs"] == list[Variable]
    assert declared["outputs"] == list[weakref.ref[Variable]]
    assert declared["needs_grad"] == tuple[bool, ...]
    assert declared["inputs_read"] == tuple[tuple[int, ...], ...] | None
    # Declared only: a Function gets these attributes from its call, not from its class.
    assert not hasattr(Function, "inputs") and not hasattr(Function, "xp")
