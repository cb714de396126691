"""Which array libraries are installed and usable here, and how to move NumPy data into one of them.

Probing imports a library only when asked about it by name (the `xdezero` command's `--backend` and `info`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from xdezero.backends._devices import is_cupy_available, to_gpu


class BackendUnavailable(RuntimeError):
    """An array library that cannot be used here; the message says why."""


def _import(name: str) -> Any:
    if importlib.util.find_spec(name) is None:
        raise BackendUnavailable(f"backend {name!r} is not usable: {name} is not installed")
    try:
        return importlib.import_module(name)
    except Exception as e:
        raise BackendUnavailable(f"backend {name!r} is not usable: importing {name} failed ({e})") from None


def library_converter(name: str) -> Callable[[np.ndarray], Any]:
    """A function moving NumPy arrays to library `name` (numpy, cupy, torch, jax, array_api_strict), on its GPU
    where it has one; BackendUnavailable saying why when the library cannot be used."""
    if name == "numpy":
        return lambda a: a
    module = _import(name)
    if name == "cupy":
        if not is_cupy_available():
            raise BackendUnavailable("backend 'cupy' is not usable: CuPy sees no CUDA GPU")
        return to_gpu
    if name == "torch":
        device = "cuda" if module.cuda.is_available() else "cpu"
        return lambda a: module.asarray(a, device=device)
    if name == "jax":
        return importlib.import_module("jax.numpy").asarray
    return module.asarray


def describe_library(name: str) -> str:
    """One line saying whether library `name` is installed and usable (and on which devices); never raises."""
    if importlib.util.find_spec(name) is None:
        return "not installed"
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", "?")
        if name == "cupy":
            if not module.cuda.is_available():
                return f"{version}, installed but unusable (no CUDA GPU)"
            module.zeros(1).sum()
            return f"{version}, usable"
        if name == "torch":
            module.zeros(1).sum()
            return f"{version}, usable ({'with CUDA' if module.cuda.is_available() else 'CPU only'})"
        if name == "jax":
            importlib.import_module("jax.numpy").zeros(1).sum()
            return f"{version}, usable (devices: {', '.join(sorted({d.platform for d in module.devices()}))})"
        module.asarray([1.0])
        return f"{version}, usable"
    except Exception as e:
        return f"installed but unusable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def cuda_devices() -> str:
    """The CUDA GPUs CuPy sees, e.g. '0: NVIDIA H100 80GB HBM3', or 'none (why)'; never raises."""
    if importlib.util.find_spec("cupy") is None:
        return "none (CuPy is not installed)"
    try:
        import cupy

        names = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
            names.append(f"{i}: {name.decode() if isinstance(name, bytes) else name}")
        return "; ".join(names) if names else "none"
    except Exception as e:
        return f"none ({type(e).__name__})"
