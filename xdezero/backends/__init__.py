"""The only code that knows array libraries: namespace lookup, device moves, and what the standard lacks."""

from xdezero.backends._allocator import allocator_info, apply_allocator_setting, tune_allocator
from xdezero.backends._backends import backend_named, backend_of_namespace
from xdezero.backends._checks import check_ids, check_index_arrays, deferring_checks
from xdezero.backends._devices import (
    is_cupy_available,
    library_namespace,
    library_of_device,
    to_cpu,
    to_device,
    to_gpu,
    to_library,
    to_numpy,
)
from xdezero.backends._fused import fused
from xdezero.backends._graphs import GraphKit, graph_kit, graph_safe_matmul, graph_safe_stack
from xdezero.backends._host import Bits, dtype_name, place, to_host
from xdezero.backends._im2col import (
    add_windows,
    col2im,
    col2im_matrix,
    column_plan,
    im2col,
    im2col_matrix,
    pad_images,
    windows,
)
from xdezero.backends._legacy_numpy import LEGACY_NUMPY, keep_input_precision
from xdezero.backends._libraries import BackendUnavailable, cuda_devices, describe_library, library_converter
from xdezero.backends._namespace import (
    NAMESPACES,
    array_namespace,
    as_array_data,
    describe,
    device_of,
    get_array_module,
    is_array,
    library_name,
    memory_key,
)
from xdezero.backends._packing import pack, unpack
from xdezero.backends._portable import Backend
from xdezero.backends._random import draws as random_draws
from xdezero.backends._random import random_state, restore_streams, seed, set_random_state, streams, uniform
from xdezero.backends._registry import Library, libraries, library, library_of, parse_device
from xdezero.backends._scatter import flat_positions, scatter_add, segment_sum
from xdezero.backends._scratch import clear as clear_buffer_pool

__all__ = [
    "Library",
    "libraries",
    "library",
    "library_of",
    "parse_device",
    "Backend",
    "backend_named",
    "backend_of_namespace",
    "Bits",
    "dtype_name",
    "place",
    "to_host",
    "random_state",
    "restore_streams",
    "streams",
    "set_random_state",
    "allocator_info",
    "apply_allocator_setting",
    "tune_allocator",
    "BackendUnavailable",
    "LEGACY_NUMPY",
    "keep_input_precision",
    "cuda_devices",
    "describe_library",
    "library_converter",
    "NAMESPACES",
    "add_windows",
    "column_plan",
    "array_namespace",
    "as_array_data",
    "check_ids",
    "clear_buffer_pool",
    "check_index_arrays",
    "deferring_checks",
    "GraphKit",
    "graph_kit",
    "graph_safe_matmul",
    "graph_safe_stack",
    "random_draws",
    "col2im",
    "col2im_matrix",
    "describe",
    "device_of",
    "flat_positions",
    "fused",
    "get_array_module",
    "im2col",
    "im2col_matrix",
    "is_array",
    "is_cupy_available",
    "library_name",
    "library_namespace",
    "library_of_device",
    "memory_key",
    "pack",
    "pad_images",
    "scatter_add",
    "segment_sum",
    "seed",
    "to_cpu",
    "to_device",
    "to_gpu",
    "to_library",
    "to_numpy",
    "uniform",
    "unpack",
    "windows",
]
