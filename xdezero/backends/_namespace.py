"""Array namespace lookup (cached per array type), array validation and description; moves live in _devices.

This module and its siblings are the only places that import array-api-compat. What differs per library (how
its views share memory, DeZero's module of its arrays) its backend says (backends/_portable.py and the module of
each library); NumPy's arrays, the hot case, are answered here directly.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from xdezero.backends._backends import backend_of
from xdezero.backends._registry import library_of_type

# Namespace per array type; the engine reads it directly on its hot path.
NAMESPACES: dict[type, ModuleType] = {}
_ARRAY_TYPES: set[type] = {np.ndarray}
# Per array type, what makes an array of it fit to be held by a Variable (a torch tensor that requires grad is
# detached), or None: arrays are taken as they come.
_ADOPT: dict[type, Callable[[Any], Any] | None] = {np.ndarray: None}


def library_name(x: Any) -> str:
    """The user-facing name of the library an array belongs to: 'numpy', 'torch', 'jax', 'cupy', ... (the
    registry's name; the top-level module of its type for a library the registry does not know)."""
    row = library_of_type(type(x))
    return row.name if row is not None else type(x).__module__.partition(".")[0]


def describe(x: Any) -> str:
    """A short description for error messages, e.g. 'numpy float32 array of shape (2, 3)'."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{library_name(x)} {x.dtype} array of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r:.40}"


def is_array(x: Any) -> bool:
    """True for any array-API array (NumPy, CuPy, torch, JAX, Dask, array-api-strict, ...)."""
    t = type(x)
    if t in _ARRAY_TYPES:
        return True
    if isinstance(x, np.generic) or not array_api_compat.is_array_api_obj(x):
        return False
    _ADOPT[t] = backend_of(x).adopt
    _ARRAY_TYPES.add(t)
    return True


def as_array_data(x: Any, *, what: str = "Variable data") -> Any:
    """Validate `x` as array data: numeric arrays pass, NumPy scalars become 0-d arrays, None passes."""
    if isinstance(x, np.ndarray | np.generic):
        if x.dtype.kind not in "fiubc":
            raise TypeError(
                f"{what} must hold numbers (bool, integer, floating or complex), not NumPy dtype {x.dtype} "
                f"(e.g. {x.reshape(-1)[:1]!r:.40}); convert it with .astype(np.float64) or similar first"
            )
        return np.asarray(x) if isinstance(x, np.generic) else x
    if x is None:
        return x
    if type(x) in _ARRAY_TYPES or is_array(x):
        adopt = _ADOPT.get(type(x))
        return x if adopt is None else adopt(x)
    raise TypeError(
        f"{what} must be an array-API array (numpy, cupy, torch, jax, dask, array-api-strict, ...) "
        f"or None, not {type(x).__module__}.{type(x).__qualname__}; "
        "wrap Python numbers and lists in the array library of your choice, e.g. np.array(1.0)"
    )


def array_namespace(*arrays: Any) -> ModuleType:
    """The array-API namespace for `arrays`, resolved once per array type."""
    t = type(arrays[0])
    for a in arrays[1:]:
        if type(a) is not t:
            return _mixed_namespace(arrays)
    try:
        return NAMESPACES[t]
    except KeyError:
        xp = NAMESPACES[t] = backend_of(arrays[0]).namespace or array_api_compat.array_namespace(arrays[0])
        return xp


def _mixed_namespace(arrays) -> ModuleType:
    libraries = sorted({library_name(a) for a in arrays})
    if len(libraries) > 1:
        raise TypeError(
            "cannot combine arrays from different libraries in one operation: "
            + " and ".join(libraries)
            + "; move them to one library first: xdezero.backends.to_library(x, 'numpy') (or 'torch', 'jax', ...), "
            "or Variable.to_library / Layer.to_library"
        )
    return array_api_compat.array_namespace(*arrays)


def device_of(x: Any) -> Any:
    """The device an array lives on."""
    return array_api_compat.device(x)


def memory_key(x: Any) -> Any:
    """A key that two arrays share when they may be views of one buffer (NumPy/CuPy `.base`, torch storage).
    Immutable arrays (JAX, Dask) have nothing to protect: each gets its own key. A library whose views cannot be
    seen gets one key for all its arrays, so that every gradient after the first is copied."""
    if isinstance(x, np.ndarray):  # the engine's hot case (every gradient added in a backward), without a call
        while isinstance(x.base, np.ndarray):  # the owner may be another object (a torch tensor's .numpy())
            x = x.base
        return id(x.base if x.base is not None else x)
    return backend_of(x).memory_key(x)


def get_array_module(x: Any) -> ModuleType:
    """DeZero's helper: `cupy` for CuPy arrays, `numpy` for NumPy arrays and everything else that is not an
    array; the array-API namespace for other libraries."""
    if not is_array(x) and hasattr(x, "data"):  # a Variable (backends sit below core and do not import it)
        x = x.data
    if x is None or isinstance(x, np.ndarray | np.generic) or not is_array(x):
        return np
    return backend_of(x).array_module(x)
