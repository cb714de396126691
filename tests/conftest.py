"""The `xp` fixture: every backend test runs once per selected array library and device.

XDEZERO_BACKENDS (comma-separated) picks the backends; by default, every one usable here, silently leaving out
those that are not (the GPU ones without a GPU). A backend asked for explicitly but unusable is an error.

- numpy, array_api_strict, torch, jax: the libraries on the host (jax on its CPU device).
- array_api_strict_device: array-api-strict arrays on its simulated second device, `Device("device1")`. They
  refuse implicit conversion to NumPy and refuse to meet host arrays in one operation, as GPU arrays do, and
  (through the DLPack guard below) refuse DLPack export to the host, as CUDA arrays do.
- cupy, torch_cuda, jax_gpu: the GPU (CuPy's current device, torch's "cuda", JAX's first GPU).

The fixture gives the library's namespace; for a backend with a device, a `DeviceNamespace` whose creation
functions default to that device, so that a test's `xp.asarray(...)` lands there. Host-only tests (see
HOST_ONLY) are skipped on the device backends.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

from xdezero.backends import library, parse_device

# JAX would otherwise take 75% of the GPU's memory at its first allocation, leaving little to CuPy and torch.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# The test backends: the library of xdezero's registry each runs, and its device as text (the one device grammar
# of xdezero.backends), None for the library's default. noxfile.py has one session per backend (checked in
# tests/test_device_grammar.py).
BACKEND_DEVICES: dict[str, tuple[str, str | None]] = {
    "numpy": ("numpy", None),
    "array_api_strict": ("array_api_strict", None),
    "array_api_strict_device": ("array_api_strict", "device1"),
    "torch": ("torch", None),
    "jax": ("jax", "cpu"),
    "cupy": ("cupy", None),
    "torch_cuda": ("torch", "gpu"),
    "jax_gpu": ("jax", "gpu"),
}
ALL_BACKENDS = tuple(BACKEND_DEVICES)
# Arrays of these backends do not live on the host: a test that needs the host arrays cannot run there.
DEVICE_BACKENDS = ("array_api_strict_device", "cupy", "torch_cuda", "jax_gpu")

# Tests that are host-only by nature: (test node id prefix, why). Skipped on DEVICE_BACKENDS.
HOST_ONLY: tuple[tuple[str, str], ...] = (
    (
        "tests/test_properties_graphs.py::test_random_graphs_gradients_share_no_memory",
        "asks NumPy whether two .grad buffers overlap through zero-copy views, which only host memory gives",
    ),
    (
        "tests/test_properties_graphs.py::test_view_gradients_share_no_memory",
        "asks NumPy whether two .grad buffers overlap through zero-copy views, which only host memory gives",
    ),
)


class DeviceNamespace:
    """An array namespace whose creation functions put arrays on `device` unless told otherwise.

    Everything else is the wrapped namespace's own (`xp.sin`, `xp.float32`, ...); functions taking an array
    already keep its device.
    """

    CREATION = ("arange", "asarray", "empty", "eye", "full", "linspace", "ones", "zeros")

    def __init__(self, namespace: Any, device: Any) -> None:
        # Names no array namespace uses, so that every name of the namespace itself passes through.
        self.wrapped_namespace = namespace
        self.default_device = device
        for name in self.CREATION:
            if hasattr(namespace, name):
                setattr(self, name, self._on_device(getattr(namespace, name)))

    def _on_device(self, create):
        def create_on_device(*args, device=None, **kwargs):
            return create(*args, device=self.default_device if device is None else device, **kwargs)

        create_on_device.__name__ = create.__name__
        return create_on_device

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped_namespace, name)

    def __repr__(self) -> str:
        namespace = self.wrapped_namespace
        return f"<{getattr(namespace, '__name__', namespace)} on {self.default_device}>"


def _no_gpu(why: str) -> RuntimeError:
    return RuntimeError(f"no GPU here: {why}")


def _configure_jax() -> None:
    jax = importlib.import_module("jax")
    jax.config.update("jax_enable_x64", True)
    # On a GPU, JAX's default float32 matmul precision is TF32 (10-bit mantissa): too coarse for the float32
    # tolerances of the tests, which the other libraries meet with full float32 products.
    jax.config.update("jax_default_matmul_precision", "highest")


# What the tests set in a library before using it.
_CONFIGURE = {"jax": _configure_jax}


def _load(name: str):
    """The array namespace for `name`, or raise ImportError/RuntimeError saying why it is unusable."""
    try:
        library_name, device = BACKEND_DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known backends are {', '.join(ALL_BACKENDS)}") from None
    row = library(library_name)
    xp = row.load()  # BackendUnavailable, a RuntimeError, saying why it cannot be imported
    if library_name in _CONFIGURE:
        _CONFIGURE[library_name]()
    if row.needs_gpu and not row.gpu_probe().devices:
        raise _no_gpu(f"{row.label} {row.gpu_probe().says}")
    if device is None:
        return xp
    try:
        found = row.find(device, where=f"XDEZERO_BACKENDS={name}", text=True)
    except ValueError as e:
        gpu = (parse_device(device) or ("named",))[0] == "gpu"
        raise (_no_gpu(str(e)) if gpu else RuntimeError(str(e))) from None
    return DeviceNamespace(xp, found.device)


def _guard_dlpack_of_devices(strict: Any) -> None:
    """Make array-api-strict arrays off the CPU device refuse DLPack export to the host, as CUDA arrays do
    (array-api-strict itself exports them: NumPy's `from_dlpack` would hide a host round trip)."""
    array = type(strict.asarray(0))
    if getattr(array.__dlpack__, "guards_devices", False):
        return
    export = array.__dlpack__

    def __dlpack__(self, /, **kwargs):
        if self.device != strict.Device("CPU_DEVICE"):
            raise BufferError(
                f"DLPack export of an array on {self.device} to the host is refused (as for a CUDA array): "
                "move it with x.to_device(CPU_DEVICE) first"
            )
        return export(self, **kwargs)

    __dlpack__.guards_devices = True
    array.__dlpack__ = __dlpack__


try:  # on for the whole run: device arrays made outside the fixture (tests/test_devices.py) are guarded too
    _guard_dlpack_of_devices(importlib.import_module("array_api_strict"))
except ImportError:
    pass


def _selected() -> dict:
    requested = os.environ.get("XDEZERO_BACKENDS", "").strip()
    if requested:
        backends = {}
        for name in (n.strip() for n in requested.split(",") if n.strip()):
            try:
                backends[name] = _load(name)
            except (ImportError, RuntimeError) as e:
                raise pytest.UsageError(f"XDEZERO_BACKENDS asks for {name!r}, which is not usable here: {e}") from e
            except ValueError as e:
                raise pytest.UsageError(str(e)) from e
        return backends
    backends = {}
    for name in ALL_BACKENDS:
        try:
            backends[name] = _load(name)
        except (ImportError, RuntimeError):
            pass
    return backends


BACKENDS = _selected()


def pytest_report_header(config):
    return "xdezero backends: " + ", ".join(BACKENDS)


@pytest.fixture(params=list(BACKENDS), ids=list(BACKENDS))
def xp(request):
    """The array namespace of one backend (tests.helpers.library(xp) gives its library name); on a device
    backend its creation functions default to the device."""
    if request.param in DEVICE_BACKENDS:
        for prefix, why in HOST_ONLY:
            if request.node.nodeid.startswith(prefix):
                pytest.skip(f"host-only: {why}")
    return BACKENDS[request.param]


@pytest.fixture
def torch():
    """PyTorch (the CPU build), for tests that use it as an oracle: only those tests are skipped without it."""
    return pytest.importorskip("torch", reason="PyTorch CPU is this test's oracle (pip install torch==2.13.0)")
