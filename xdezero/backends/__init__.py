"""The only code that knows array libraries: namespace lookup, device moves, and what the standard lacks."""

from xdezero.backends._namespace import (
    array_namespace,
    as_array_data,
    describe,
    device_of,
    get_array_module,
    is_array,
    is_cupy_available,
    library_name,
    to_cpu,
    to_device,
    to_gpu,
)
from xdezero.backends._scatter import flat_positions, scatter_add

__all__ = [
    "array_namespace",
    "as_array_data",
    "describe",
    "device_of",
    "flat_positions",
    "get_array_module",
    "is_array",
    "is_cupy_available",
    "library_name",
    "scatter_add",
    "to_cpu",
    "to_device",
    "to_gpu",
]
