"""Arrays on their way to and from files: what NumPy can write, for every library and dtype.

A file holds NumPy arrays. Most dtypes of every library have a NumPy twin; bfloat16 (torch, JAX) has none in
NumPy itself, so it travels as its 16-bit pattern (`Bits`) with its dtype's name, and comes back as bfloat16 of
the library it is placed in; its backend reads and writes those bits (`Backend.host_bits`, `Backend.place_bits`).
Every host transfer here is deliberate: saving and loading copy through the host.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from xdezero.backends._backends import backend_named, backend_of
from xdezero.backends._devices import to_numpy
from xdezero.backends._namespace import array_namespace, device_of

# Dtypes that NumPy lacks, written as unsigned integers of their width.
BIT_PATTERNS = {"bfloat16": np.uint16}


class Bits(NamedTuple):
    """An array of a dtype NumPy lacks, as its bit pattern on the host: `bits` (unsigned integers of the dtype's
    width) and the dtype's name."""

    bits: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self.bits.shape


def dtype_name(x: Any) -> str:
    """The name of `x`'s dtype ('float32', 'bfloat16', 'int64', ...), the same for every library."""
    if isinstance(x, Bits):
        return x.dtype
    dtype = x.dtype
    if isinstance(dtype, np.dtype):  # NumPy, CuPy, and JAX's ml_dtypes (bfloat16 is a NumPy dtype there)
        return dtype.name
    return str(dtype).rpartition(".")[2]  # torch.bfloat16, array_api_strict.float32


def to_host(x: Any) -> np.ndarray | Bits:
    """`x` (any library, any device) copied to the host: a NumPy array, or `Bits` for a dtype NumPy lacks."""
    if isinstance(x, np.ndarray | Bits):
        return x
    name = dtype_name(x)
    if name not in BIT_PATTERNS:
        return to_numpy(x)
    return Bits(backend_of(x).host_bits(x, BIT_PATTERNS[name]), name)


def place(host: np.ndarray | Bits, like: Any = None) -> Any:
    """A host array (or `Bits`) as an array of `like`'s library and device; NumPy when `like` is None or NumPy."""
    if not isinstance(host, Bits):
        if like is None or isinstance(like, np.ndarray):
            return host
        return array_namespace(like).asarray(host, device=device_of(like))
    backend = backend_named("numpy") if like is None or isinstance(like, np.ndarray) else backend_of(like)
    return backend.place_bits(host.bits, host.dtype, like)
