"""Arrays on their way to and from files: what NumPy can write, for every library and dtype.

A file holds NumPy arrays. Most dtypes of every library have a NumPy twin; bfloat16 (torch, JAX) has none in
NumPy itself, so it travels as its 16-bit pattern (`Bits`) with its dtype's name, and comes back as bfloat16 of
the library it is placed in. Every host transfer here is deliberate: saving and loading copy through the host.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, NamedTuple

import array_api_compat
import numpy as np

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
    unsigned = BIT_PATTERNS[name]
    if array_api_compat.is_torch_array(x):
        torch = sys.modules["torch"]
        signed = {np.uint16: torch.int16}[unsigned]  # torch views bfloat16 as int16; NumPy re-reads it unsigned
        return Bits(x.detach().cpu().view(signed).numpy().view(unsigned), name)
    return Bits(np.asarray(to_numpy(x)).view(unsigned), name)  # JAX: an ml_dtypes array on the host


def place(host: np.ndarray | Bits, like: Any = None) -> Any:
    """A host array (or `Bits`) as an array of `like`'s library and device; NumPy when `like` is None or NumPy."""
    if not isinstance(host, Bits):
        if like is None or isinstance(like, np.ndarray):
            return host
        return array_namespace(like).asarray(host, device=device_of(like))
    if array_api_compat.is_torch_array(like):
        torch = sys.modules["torch"]
        signed = torch.from_numpy(host.bits.view(np.int16).copy())
        return signed.view(getattr(torch, host.dtype)).to(like.device)
    if array_api_compat.is_jax_array(like):
        jax = sys.modules["jax"]
        return jax.device_put(host.bits.view(getattr(jax.numpy, host.dtype)), device_of(like))
    if like is None or isinstance(like, np.ndarray):
        try:
            ml_dtypes = importlib.import_module("ml_dtypes")
        except ImportError:
            raise TypeError(
                f"a {host.dtype} array cannot become a NumPy array without the ml_dtypes package (pip install "
                "ml_dtypes), or place it in a torch or JAX model"
            ) from None
        return host.bits.view(getattr(ml_dtypes, host.dtype))
    raise TypeError(f"{array_namespace(like).__name__} has no {host.dtype} dtype to place this array in")
