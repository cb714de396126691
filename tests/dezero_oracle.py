"""DeZero 0.0.13 (the book's library, `pip install dezero==0.0.13`) as a test oracle.

Its `transforms` module names `np.int` in a default argument, which NumPy 2 removed: the alias exists only while
DeZero is imported. A test that needs DeZero calls `dezero_module()` and is skipped when it is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import numpy as np
import pytest

SUBMODULES = (
    "core",
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


def dezero_module(name: str = "") -> ModuleType:
    """`dezero` or `dezero.<name>`, imported with its submodules; skips the test when DeZero is not installed."""
    if importlib.util.find_spec("dezero") is None:
        pytest.skip("DeZero is not installed (pip install dezero==0.0.13)")
    added = "int" not in np.__dict__
    if added:
        np.int = int  # the name DeZero's transforms module reads at import
    try:
        for sub in SUBMODULES:
            importlib.import_module(f"dezero.{sub}")
    finally:
        if added:
            del np.int
    return importlib.import_module(f"dezero.{name}" if name else "dezero")
