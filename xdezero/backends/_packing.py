"""Many arrays of one library, dtype and device packed into one fresh flat array, for collectives."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from xdezero.backends._namespace import array_namespace


def pack(arrays: Sequence[Any], scale: float = 1.0) -> Any:
    """One fresh 1-d array holding `arrays` one after another (same library, dtype and device), each multiplied
    by `scale` when it is not 1. On NumPy the scaling rides along with the one copy (a single pass, e.g. the
    1/size of a gradient mean); elsewhere it is one more pass over the packed array."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        out = np.empty(sum(a.size for a in arrays), dtype=np.result_type(*arrays))
        offset = 0
        for a in arrays:
            part = out[offset : offset + a.size]
            if scale == 1.0:
                part[...] = a.reshape(-1)
            else:
                np.multiply(a.reshape(-1), scale, out=part)
            offset += a.size
        return out
    xp = array_namespace(arrays[0])
    flat = xp.concat([xp.reshape(a, (-1,)) for a in arrays])
    return flat if scale == 1.0 else flat * scale


def unpack(flat: Any, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
    """Disjoint views of `flat` with the given shapes (the inverse of `pack`)."""
    xp = array_namespace(flat)
    out, offset = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(xp.reshape(flat[offset : offset + n], shape))
        offset += n
    return out
