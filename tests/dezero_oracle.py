"""DeZero 0.0.13 (the book's library, `pip install dezero==0.0.13`) as a test oracle.

DeZero names `np.int`, which NumPy 2 removed (in `transforms` at import, in `get_spiral` and CIFAR-10 when
called): the alias exists only while DeZero is imported, and inside `with numpy_int_alias():` around code that
runs DeZero. A test that needs DeZero calls `dezero_module()` and is skipped when it is not installed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import pytest

# DeZero's modules, each also in xdezero under the same name (core_simple: the book's step-by-step core).
SUBMODULES = (
    "core",
    "core_simple",
    "functions",
    "functions_conv",
    "layers",
    "models",
    "optimizers",
    "utils",
    "cuda",
    "datasets",
    "dataloaders",
    "transforms",
)


@contextlib.contextmanager
def numpy_int_alias() -> Iterator[None]:
    """`np.int` (= int) inside the block, for DeZero's code; removed again on exit."""
    added = "int" not in np.__dict__
    if added:
        np.int = int
    try:
        yield
    finally:
        if added:
            del np.int


def dezero_module(name: str = "") -> ModuleType:
    """`dezero` or `dezero.<name>`, imported with its submodules; skips the test when DeZero is not installed."""
    if importlib.util.find_spec("dezero") is None:
        pytest.skip("DeZero is not installed (pip install dezero==0.0.13)")
    with numpy_int_alias():
        for sub in SUBMODULES:
            importlib.import_module(f"dezero.{sub}")
    return importlib.import_module(f"dezero.{name}" if name else "dezero")
