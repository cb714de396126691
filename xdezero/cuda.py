"""DeZero's `dezero.cuda` helpers, over `xdezero.backends`.

`gpu_enable` is computed on first access (importing this module never imports CuPy): True when CuPy is
installed and sees a usable CUDA device.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from xdezero import backends
from xdezero.core import Variable

# gpu_enable is a lazy module attribute (see __getattr__), invisible to static analysis.
__all__ = ["gpu_enable", "get_array_module", "as_numpy", "as_cupy", "Variable"]  # noqa: F822

_gpu_enable: bool | None = None


def __getattr__(name: str) -> Any:
    # Module attributes computed lazily (PEP 562), so that `import xdezero.cuda` stays free of CuPy.
    global _gpu_enable
    if name == "gpu_enable":
        if _gpu_enable is None:
            _gpu_enable = backends.is_cupy_available()
        return _gpu_enable
    if name == "cupy":
        import cupy

        return cupy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Variable) else x


def get_array_module(x: Any) -> ModuleType:
    """`cupy` for CuPy arrays (and Variables holding them), `numpy` for NumPy arrays and non-arrays, and the
    array-API namespace for arrays of other libraries."""
    return backends.get_array_module(_data(x))


def as_numpy(x: Any) -> np.ndarray:
    """`x` (a Variable, array of any library, or scalar) as a NumPy array, copied to the host if needed."""
    return backends.to_numpy(_data(x))


def as_cupy(x: Any) -> Any:
    """`x` (a Variable, array of any library, or scalar) as a CuPy array on the current GPU.

    Raises RuntimeError saying what is missing when CuPy is not installed or sees no GPU.
    """
    x = _data(x)
    if backends.library_name(x) != "cupy":
        x = as_numpy(x)  # torch/JAX arrays go through the host: to_gpu would keep them in their own library
    return backends.to_gpu(x)
