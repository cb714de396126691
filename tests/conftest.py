"""The `xp` fixture: every backend test runs once per selected array library.

XDEZERO_BACKENDS (comma-separated: numpy, array_api_strict, torch, jax, cupy) picks the backends; by default,
every one installed here (cupy only with a usable GPU). A backend asked for explicitly but unusable is an error.
"""

from __future__ import annotations

import importlib
import os

import pytest

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "cupy")


def _load(name: str):
    """The array namespace for `name`, or raise ImportError/RuntimeError saying why it is unusable."""
    if name == "numpy":
        import array_api_compat.numpy as xp
    elif name == "array_api_strict":
        xp = importlib.import_module("array_api_strict")
    elif name == "torch":
        importlib.import_module("torch")
        import array_api_compat.torch as xp
    elif name == "jax":
        jax = importlib.import_module("jax")
        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_platforms", "cpu")
        import jax.numpy as xp
    elif name == "cupy":
        cupy = importlib.import_module("cupy")
        if not cupy.cuda.is_available():
            raise RuntimeError("cupy is installed but cupy.cuda.is_available() is False")
        import array_api_compat.cupy as xp
    else:
        raise ValueError(f"unknown backend {name!r}; known backends are {', '.join(ALL_BACKENDS)}")
    return xp


def _selected() -> dict:
    requested = os.environ.get("XDEZERO_BACKENDS", "").strip()
    if requested:
        backends = {}
        for name in (n.strip() for n in requested.split(",") if n.strip()):
            try:
                backends[name] = _load(name)
            except (ImportError, RuntimeError) as e:
                raise pytest.UsageError(f"XDEZERO_BACKENDS asks for {name!r}, which is not usable here: {e}") from e
            except ValueError as e:
                raise pytest.UsageError(str(e)) from e
        return backends
    backends = {}
    for name in ALL_BACKENDS:
        try:
            backends[name] = _load(name)
        except (ImportError, RuntimeError):
            pass
    return backends


BACKENDS = _selected()


def pytest_report_header(config):
    return "xdezero backends: " + ", ".join(BACKENDS)


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def xp(request):
    """The array namespace of one backend (tests.helpers.library(xp) gives its library name)."""
    return BACKENDS[request.param]
