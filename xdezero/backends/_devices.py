"""Moves between the host, devices and libraries, and the list of every host transfer xdezero makes.

A GPU array (CuPy, torch on CUDA, JAX on a GPU, array-api-strict on its simulated `Device("device1")`) reaches
the host only through the functions here, one explicit call per array; no op converts implicitly.

Deliberate transfers, each one call per operation at most (never per element); D→H is device to host:

- label checks (`check_ids`, `check_index_arrays`: class labels, embedding ids, gather indices): D→H of the
  ids' minima and maxima, stacked in one array, once per call of a function taking ids;
- the backward of indexing with a tuple holding integer arrays, on torch and the portable path (`scatter_add`
  through `flat_positions`): D→H of the index arrays and H→D of the flat positions, once per backward;
- random numbers (`uniform`) for libraries without a generator here (array-api-strict, ...): H→D of the
  samples drawn with NumPy, once per call; seeding itself moves nothing;
- initial parameters of `xdezero.layers` (drawn on the host with NumPy's global generator, as DeZero does):
  H→D once per parameter, at the layer's first input;
- `Layer.save_weights`: D→H once per parameter; `Layer.load_weights`: H→D once per parameter;
- `DataLoader` / `SeqDataLoader` after `to_gpu()` or `to_device(...)`: H→D of each batch (x and t);
- `xdezero.distributed`: the MPI communicator all-reduces host buffers (D→H and H→D of one packed buffer per
  dtype per all-reduce); the NCCL one sends an array that is not CuPy on the current GPU through the host; the
  distributed optimizer compares newly created lazy parameters after their broadcast (once per parameter);
- the `xdezero` command: one scalar each for the batch loss and accuracy it prints, once per batch;
- on request only: `to_cpu`, `to_numpy`, `to_library`, `utils.gradient_check` and `xdezero.testing` (one
  scalar per directional derivative or per perturbed element), `utils.array_equal`/`array_allclose`.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import array_api_compat
import numpy as np

from xdezero.backends._backends import backend_named, backend_of
from xdezero.backends._namespace import as_array_data, describe, is_array
from xdezero.backends._registry import cupy_usable, libraries, library, library_of_type, parse_device

if TYPE_CHECKING:
    from xdezero.backends._portable import Backend


def is_cupy_available() -> bool:
    """True when CuPy imports and sees a usable CUDA device (importing CuPy alone proves nothing)."""
    return cupy_usable()


def _backend(x: Any, what: str) -> Backend:
    """The backend of array `x`; TypeError naming `what` and what is accepted when `x` is no array."""
    if isinstance(x, np.ndarray | np.generic):
        return backend_named("numpy")  # NumPy's own subclasses too, whatever module defines them
    if not is_array(x):
        as_array_data(x, what=what)  # raises: not an array
    return backend_of(x)


def to_cpu(x: Any) -> Any:
    """Move an array to the host: CuPy arrays become NumPy arrays, other libraries stay themselves on their
    host device (torch 'cpu', JAX's CPU device, array-api-strict's CPU_DEVICE)."""
    if x is None or isinstance(x, np.ndarray):
        return x
    if isinstance(x, np.generic):
        return np.asarray(x)
    return _backend(x, "to_cpu argument").to_cpu(x)


def to_numpy(x: Any) -> np.ndarray:
    """Any array (or Python/NumPy scalar or list) as a NumPy array, copied to the host when it lives elsewhere."""
    if isinstance(x, np.ndarray):
        return x
    if x is None or isinstance(x, np.generic | int | float | complex | bool | list | tuple):
        return np.asarray(x)
    return _backend(x, "to_numpy argument").to_numpy(x)


def to_gpu(x: Any) -> Any:
    """Move an array to the GPU: NumPy arrays become CuPy arrays; torch and JAX arrays move to their GPU device."""
    if x is None:
        return x
    return _backend(x, "to_gpu argument").to_gpu(x)


def to_device(x: Any, device: Any) -> Any:
    """Move an array to `device` within its own library (array-API `to_device`): one of its device objects or a
    device string (see `xdezero.backends._registry`: 'cpu', 'cpu:N', 'gpu', 'gpu:N', 'cuda:N', ...).

    DeZero's meanings hold: 'cpu' moves a CuPy array to NumPy and 'gpu' a NumPy array to CuPy (`to_cpu`,
    `to_gpu`); so do 'cpu:0' of a CuPy array and 'gpu:N' of a NumPy array.
    """
    if x is None:
        return x
    if isinstance(device, str):
        if device == "cpu":
            return to_cpu(x)
        if device in ("gpu", "cuda"):
            return to_gpu(x)
        x = as_array_data(x, what="to_device argument")
        row = library_of_type(type(x))  # None: a library xdezero does not know takes the string itself
        if row is not None:
            spec = parse_device(device)
            partner = spec and (row.gpu_library if spec[0] == "gpu" else row.host_library)
            if partner:  # DeZero's pair: NumPy's GPUs are CuPy's, CuPy's host is NumPy's
                where = f"to_device of a {row.label} array"
                found = library(partner).find(device, where=where)
                return _to_library(x, partner, found.device, where)
            device = row.find(device, where="to_device").device
    x = as_array_data(x, what="to_device argument")
    try:
        return array_api_compat.to_device(x, device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise type(e)(f"to_device: cannot move a {describe(x)} to {device!r}: {e}") from e


def library_of_device(device: Any) -> str:
    """The library a device object belongs to ('torch', 'jax', 'cupy', 'array_api_strict'); 'numpy' for 'cpu'."""
    if isinstance(device, str):
        if device == "cpu":
            return "numpy"
        if device in ("gpu", "cuda"):
            return "cupy"  # DeZero's meaning of the GPU
        raise ValueError(
            f"the device {device!r} does not say which library it belongs to; pass a device object "
            "(torch.device('cuda:0'), jax.devices('gpu')[0], cupy.cuda.Device(0), array_api_strict.Device(...)), "
            "'cpu' or 'gpu', or name the library too"
        )
    row = library_of_type(type(device))
    if row is None:
        raise TypeError(
            f"unknown kind of device {device!r} (type {type(device).__module__}.{type(device).__qualname__}); "
            f"known: devices of {', '.join(sorted(r.name for r in libraries()))}, 'cpu' and 'gpu'"
        )
    return row.name


def library_namespace(name: str) -> ModuleType:
    """The array namespace of library `name` (see `libraries()`), imported now if it was not yet; ValueError for
    an unknown name, BackendUnavailable (a RuntimeError) saying why for one that cannot be imported."""
    return library(name).load()


def to_library(x: Any, name: str, device: Any = None) -> Any:
    """`x` as a new array of library `name` ('numpy', 'torch', 'jax', 'cupy', 'array_api_strict', 'dask') on
    `device` (that library's default device when None; a device string or one of its device objects), same dtype
    and values.

    One explicit move: an array of another library crosses the host once; one of the same library moves with
    `to_device` (None keeps its device). The result never shares memory with `x`. JAX without `jax_enable_x64`
    narrows 64-bit dtypes to 32 bits, as it does for every array it makes.
    """
    return _to_library(x, name, device, "to_library")


def _to_library(x: Any, name: str, device: Any, where: str) -> Any:
    if x is None:
        return x
    x = as_array_data(x, what=f"{where} argument")
    row = library(name)
    xp = row.load()
    if device is None:
        if row.needs_gpu and not row.gpu_probe().devices:
            raise RuntimeError(f"{where}: {row.label} {row.gpu_probe().says}")
        target = None
    else:
        target = row.find(device, where=where).device
    if library_of_type(type(x)) is row:
        moved = x if target is None else array_api_compat.to_device(x, target)
        return xp.asarray(moved, copy=True) if moved is x else moved
    return row.put(to_numpy(x), target, copy=True)
