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

import importlib
import sys
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from xdezero.backends._namespace import array_namespace, as_array_data, describe, library_name

# The namespace that builds arrays of each library, imported only when that library is asked for by name.
_NAMESPACE_MODULES = {
    "numpy": "array_api_compat.numpy",
    "array_api_strict": "array_api_strict",
    "torch": "array_api_compat.torch",
    "jax": "jax.numpy",
    "cupy": "array_api_compat.cupy",
    "dask": "array_api_compat.dask.array",
}
# The library of a device object, by the top-level module of its type.
_LIBRARY_OF_DEVICE_MODULE = {
    "torch": "torch",
    "jaxlib": "jax",
    "jax": "jax",
    "cupy": "cupy",
    "array_api_strict": "array_api_strict",
}


def is_cupy_available() -> bool:
    """True when CuPy imports and sees a usable CUDA device (importing CuPy alone proves nothing)."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def _require_cupy() -> ModuleType:
    try:
        import cupy
    except ImportError:
        raise RuntimeError(
            "CuPy is not installed, so arrays cannot be moved to a GPU; "
            "install the CuPy build for your CUDA version (e.g. pip install cupy-cuda12x)"
        ) from None
    if not is_cupy_available():
        raise RuntimeError("CuPy is installed but sees no usable CUDA GPU (cupy.cuda.is_available() is False)")
    return cupy


def _host_device(x: Any) -> Any:
    """The host device of a library without a GPU of its own here: its default device (array-api-strict's
    CPU_DEVICE, Dask's 'cpu')."""
    info = getattr(array_namespace(x), "__array_namespace_info__", None)
    return None if info is None else info().default_device()


def to_cpu(x: Any) -> Any:
    """Move an array to the host: CuPy arrays become NumPy arrays, other libraries stay themselves on their
    host device (torch 'cpu', JAX's CPU device, array-api-strict's CPU_DEVICE)."""
    if x is None or isinstance(x, np.ndarray):
        return x
    if isinstance(x, np.generic):
        return np.asarray(x)
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.cpu()
    if array_api_compat.is_jax_array(x):
        jax = sys.modules["jax"]
        return jax.device_put(x, jax.devices("cpu")[0])
    x = as_array_data(x, what="to_cpu argument")
    host = _host_device(x)
    if host is None or array_api_compat.device(x) == host:
        return x
    return array_api_compat.to_device(x, host)


def to_numpy(x: Any) -> np.ndarray:
    """Any array (or Python/NumPy scalar or list) as a NumPy array, copied to the host when it lives elsewhere."""
    if isinstance(x, np.ndarray):
        return x
    if x is None or isinstance(x, np.generic | int | float | complex | bool | list | tuple):
        return np.asarray(x)
    x = to_cpu(x)
    if array_api_compat.is_torch_array(x):
        return x.detach().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):  # array-api-strict offers only DLPack
        return np.from_dlpack(x)


def to_gpu(x: Any) -> Any:
    """Move an array to the GPU: NumPy arrays become CuPy arrays; torch and JAX arrays move to their GPU device."""
    if x is None:
        return x
    if array_api_compat.is_torch_array(x):
        torch = sys.modules["torch"]
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA GPU (torch.cuda.is_available() is False)")
        return x.cuda()
    if array_api_compat.is_jax_array(x):
        jax = sys.modules["jax"]
        try:
            gpu = jax.devices("gpu")[0]
        except RuntimeError:
            raise RuntimeError("JAX sees no GPU; install jax[cuda] on a machine with an NVIDIA GPU") from None
        return jax.device_put(x, gpu)
    if array_api_compat.is_cupy_array(x):
        return x
    x = as_array_data(x, what="to_gpu argument")
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"to_gpu moves NumPy, torch and JAX arrays; got {describe(x)} (use to_device with a device of "
            "its library, or to_library)"
        )
    return _require_cupy().asarray(x)


def to_device(x: Any, device: Any) -> Any:
    """Move an array to `device` within its own library (array-API `to_device`); 'cpu' and 'gpu' are shorthands."""
    if x is None:
        return x
    if isinstance(device, str) and device == "cpu":
        return to_cpu(x)
    if isinstance(device, str) and device in ("gpu", "cuda"):
        return to_gpu(x)
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
    top = type(device).__module__.partition(".")[0]
    try:
        return _LIBRARY_OF_DEVICE_MODULE[top]
    except KeyError:
        raise TypeError(
            f"unknown kind of device {device!r} (type {type(device).__module__}.{type(device).__qualname__}); "
            f"known: devices of {', '.join(sorted(set(_LIBRARY_OF_DEVICE_MODULE.values())))}, 'cpu' and 'gpu'"
        ) from None


def library_namespace(name: str) -> ModuleType:
    """The array namespace of library `name` (one of `_NAMESPACE_MODULES`), imported now if it was not yet."""
    try:
        module = _NAMESPACE_MODULES[name]
    except KeyError:
        raise ValueError(f"unknown array library {name!r}; known: {', '.join(_NAMESPACE_MODULES)}") from None
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeError(f"the array library {name!r} is not usable here: importing {module} failed ({e})") from e


def _resolve_device(name: str, device: Any) -> Any:
    """`device` as library `name` takes it: 'cpu'/'gpu' shorthands become that library's device objects."""
    if not isinstance(device, str):
        return device
    if name == "jax":
        jax = sys.modules["jax"]
        platform = "gpu" if device in ("gpu", "cuda") else device.partition(":")[0]
        try:
            return jax.devices(platform)[0]
        except RuntimeError:
            raise RuntimeError(f"to_library: JAX has no {platform!r} device here") from None
    if name == "torch":
        return "cuda" if device == "gpu" else device
    if name == "cupy":
        if device not in ("gpu", "cuda"):
            raise ValueError(
                f"to_library: CuPy arrays live on the GPU; device must be 'gpu' or a cupy.cuda.Device, got {device!r}"
            )
        return None
    if device == "cpu":
        if name in ("numpy", "dask"):
            return None
        return library_namespace(name).__array_namespace_info__().default_device()
    raise ValueError(f"to_library: library {name!r} has no device {device!r}; pass one of its device objects")


def to_library(x: Any, name: str, device: Any = None) -> Any:
    """`x` as a new array of library `name` ('numpy', 'torch', 'jax', 'cupy', 'array_api_strict', 'dask') on
    `device` (that library's default device when None; 'cpu' and 'gpu' are shorthands), same dtype and values.

    One explicit move: an array of another library crosses the host once; one of the same library moves with
    `to_device` (None keeps its device). The result never shares memory with `x`. JAX without `jax_enable_x64`
    narrows 64-bit dtypes to 32 bits, as it does for every array it makes.
    """
    if x is None:
        return x
    x = as_array_data(x, what="to_library argument")
    xp = library_namespace(name)
    if name == "cupy" and not is_cupy_available():
        raise RuntimeError("to_library: CuPy sees no usable CUDA GPU (cupy.cuda.is_available() is False)")
    target = _resolve_device(name, device)
    if library_name(x) == name:
        moved = x if target is None else to_device(x, target)
        return xp.asarray(moved, copy=True) if moved is x else moved
    host = to_numpy(x)
    if name == "cupy" and target is not None:
        with target:
            return xp.asarray(host)
    return xp.asarray(host, copy=True) if target is None else xp.asarray(host, device=target, copy=True)
