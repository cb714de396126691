"""Which array libraries are installed and usable here, and how to move NumPy data into one of them, read from
the registry (`_registry`).

Probing imports a library only when asked about it by name (the `xdezero` command's `--backend` and `info`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from xdezero.backends._registry import BackendUnavailable, library

__all__ = ["BackendUnavailable", "cuda_devices", "describe_library", "library_converter"]


def library_converter(name: str) -> Callable[[np.ndarray], Any]:
    """A function moving NumPy arrays to library `name` (see `libraries()`), on its current GPU where it sees one
    (else its host device); BackendUnavailable saying why when the library cannot be used."""
    row = library(name)
    row.load(f"backend {name!r}")
    if row.needs_gpu and not row.gpu_probe().devices:
        raise BackendUnavailable(f"backend {name!r} is not usable: {row.label} {row.gpu_probe().says}")
    device = row.preferred_device()
    return lambda a: row.put(a, device)


def describe_library(name: str) -> str:
    """One line saying whether library `name` is installed and usable (and on which devices); never raises."""
    row = library(name)
    if not row.installed():
        return "not installed"
    try:
        row.load()
        version = row.version()
        gpus = row.gpu_probe()
        if row.needs_gpu and not gpus.devices:
            return f"{version}, installed but unusable ({row.label} {gpus.says})"
        row.load().sum(row.put(np.ones(1), row.preferred_device()))
        names = [n for n, _ in row.devices(text=True)]
        seen = ([] if names == ["cpu"] else [f"devices: {', '.join(names)}"]) + (
            [f"{row.label} {gpus.says}"] if row.gpus else []
        )
        return f"{version}, usable" + (f" ({'; '.join(seen)})" if seen else "")
    except Exception as e:
        return f"installed but unusable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def cuda_devices() -> str:
    """The CUDA GPUs CuPy sees, e.g. '0: NVIDIA H100 80GB HBM3', or 'none (why)'; never raises."""
    if not library("cupy").installed():
        return "none (CuPy is not installed)"
    try:
        cupy = importlib.import_module("cupy")
        names = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
            names.append(f"{i}: {name.decode() if isinstance(name, bytes) else name}")
        return "; ".join(names) if names else "none"
    except Exception as e:
        return f"none ({type(e).__name__})"
