"""Which backend runs an op: one `Backend` per array library (the registry row names its class), found from the
op's namespace or an array's type and cached.

A library's backend module is imported the first time one of its arrays reaches xdezero (its library is
imported by then), by the name in its registry row, so that this module sits below every backend and every
module of backends/ may ask it. An array or namespace of no known library gets the portable `Backend`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from xdezero.backends._registry import libraries, library, library_of_type

if TYPE_CHECKING:
    from xdezero.backends._portable import Backend

PORTABLE = "xdezero.backends._portable:Backend"
# The library of each array namespace, by the namespace module's name (the rows' namespaces).
_LIBRARY_OF_NAMESPACE = {row.namespace: row.name for row in libraries()}

_BY_LIBRARY: dict[str, Backend] = {}
_BY_NAMESPACE: dict[int, tuple[ModuleType, Backend]] = {}  # id(namespace) -> (namespace, kept alive; backend)
_BY_TYPE: dict[type, Backend] = {}


def backend_named(name: str) -> Backend:
    """The backend of array library `name` ('numpy', 'torch', 'jax', ...): the portable one when it has none."""
    try:
        return _BY_LIBRARY[name]
    except KeyError:
        pass
    try:
        spec = library(name).backend
    except ValueError:
        spec = PORTABLE
    module, _, cls = spec.partition(":")
    backend = _BY_LIBRARY[name] = getattr(importlib.import_module(module), cls)()
    return backend


def backend_of(x: Any) -> Backend:
    """The backend of array `x`'s library, resolved once per array type."""
    try:
        return _BY_TYPE[type(x)]
    except KeyError:
        row = library_of_type(type(x))
        backend = _BY_TYPE[type(x)] = backend_named(row.name if row is not None else "portable")
        return backend


def backend_of_namespace(xp: ModuleType) -> Backend:
    """The backend of the arrays of namespace `xp` (an op's `self.xp`), resolved once per namespace."""
    try:
        return _BY_NAMESPACE[id(xp)][1]
    except KeyError:
        pass
    name = getattr(xp, "__xdezero_library__", None) or _LIBRARY_OF_NAMESPACE.get(getattr(xp, "__name__", ""))
    backend = backend_named(name or "portable")
    _BY_NAMESPACE[id(xp)] = (xp, backend)
    return backend
