"""NumPy 1.x: results whose dtype its promotion rules widen where NumPy 2's (NEP 50) keep the inputs' dtype.

Under NumPy 1.x, an expression of scalars alone (a float32 reduction divided by a Python number: a loss, a mean)
is computed in float64, so a float32 model would report float64 losses. Ops produce such scalars only at the end
of a reduction, so the engine narrows them back to the widest floating dtype of the op's inputs. Under NumPy 2
`LEGACY_NUMPY` is False and nothing here runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LEGACY_NUMPY = np.lib.NumpyVersion(np.__version__) < "2.0.0"


def keep_input_precision(value: np.float64, inputs: Sequence[Any]) -> Any:
    """`value`, a float64 NumPy scalar an op computed from `inputs` (their data), as the widest floating dtype of
    the NumPy inputs when that is narrower than float64; unchanged when no input is floating (integer means)."""
    widest = None
    for x in inputs:
        dtype = getattr(x, "dtype", None)
        if isinstance(x, np.ndarray | np.generic) and dtype.kind == "f":
            widest = dtype if widest is None or dtype.itemsize > widest.itemsize else widest
    if widest is None or widest.itemsize >= 8:
        return value
    return value.astype(widest)
