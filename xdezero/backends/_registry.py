"""One row per array library: what xdezero knows about it beyond its ops, read by the moves, the command, the
tests and nox.

A row says how to tell its arrays (by the top-level module of their type, so that nothing is imported to ask),
which module is its array namespace, which devices it has here, how many CPU threads it uses (`--threads`),
which GPUs it sees, and how NumPy data goes onto one of its devices. A row imports its library only when that
library is asked about by name (`import torch` costs seconds). A new library is one module of its own kernels
(a `Backend` subclass, if it has any) plus one row in `_LIBRARIES` naming it, with its device functions beside it.

One device grammar for every library, the same in `to_library`, `to_device` and `xdezero train --device`:

- "cpu", "cpu:N": its N-th host device (JAX may have several; the others have one, "cpu" = "cpu:0");
- "gpu", "gpu:N", and their synonyms "cuda", "cuda:N": its N-th GPU (torch `cuda:N`, JAX
  `jax.devices("gpu")[N]`, CuPy `cupy.cuda.Device(N)`); without N, its current one (GPU 0 unless the program
  chose another: `torch.cuda.set_device`, `cupy.cuda.Device(n).use()`);
- a device object of the library itself (`torch.device("cuda:1")`, `array_api_strict.Device("device1")`);
- the library's own device names where it has some (torch "mps"). array-api-strict's simulated devices
  ("device1", "device2") are names in text only (the command, XDEZERO_BACKENDS): Python code passes
  `array_api_strict.Device("device1")`.

A device that does not exist is a ValueError naming it and the devices that do.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

GRAMMAR = ("cpu", "cpu:N", "gpu", "gpu:N", "cuda", "cuda:N")
_SPEC = re.compile(r"(cpu|gpu|cuda)(?::(0|[1-9][0-9]*))?")


class BackendUnavailable(RuntimeError):
    """An array library that cannot be used here; the message says why."""


def parse_device(text: str) -> tuple[str, int | None] | None:
    """('cpu' or 'gpu', its index or None) for a device string of the grammar ('cuda' is 'gpu'); None otherwise."""
    found = _SPEC.fullmatch(text)
    if found is None:
        return None
    return ("gpu" if found[1] == "cuda" else found[1]), (None if found[2] is None else int(found[2]))


class Gpus(NamedTuple):
    """The GPUs a library sees: their device objects, the index of its current one, and what it sees, as a
    phrase following the library's name ("sees 2 CUDA GPUs", "is not installed")."""

    devices: list[Any]
    current: int | None
    says: str


class Placement(NamedTuple):
    """A device found for a request: its name in the grammar ('cpu', 'gpu:1', 'device1'), the library's device
    object, and its GPU index (None off the GPU)."""

    name: str
    device: Any
    gpu: int | None


@dataclass(frozen=True)
class Threads:
    """How a library's CPU threads are limited for one run (`xdezero train --threads`)."""

    what: str  # for the help text: "torch's intra-op threads"
    # Limit to n threads; returns what restores the old count. BackendUnavailable saying why when it cannot.
    limit: Callable[[int], Callable[[], None]]
    unit: str = "thread"  # what the command's first line counts: "2 threads", "1 BLAS thread"
    current: Callable[[], int] | None = None  # the count in use, where the library says (else only --threads')


@dataclass(frozen=True)
class Library:
    """One array library. Functions are called only when the library is asked about by name."""

    name: str  # as the user names it: 'torch', 'array_api_strict'
    label: str  # as prose names it: 'torch', 'array-api-strict', 'NumPy'
    module: str  # what `import` imports, and what tells whether it is installed
    array_modules: tuple[str, ...]  # top-level modules of its array and device types ('jaxlib' for JAX)
    namespace: str  # the module of its array namespace
    host_devices: Callable[[], list[Any]]  # its host devices, "cpu:0" first
    no_gpu: str = "runs on the CPU only"  # what it says of GPUs, where `gpus` is None
    gpus: Callable[[], Gpus] | None = None  # its GPU probe, for a library that can have GPUs
    use_gpu: Callable[[int], None] | None = None  # make GPU N current for this process (per-rank GPUs)
    needs_gpu: bool = False  # unusable without one (CuPy)
    own_devices: Callable[[], dict[str, Any]] | None = None  # device names beyond the grammar
    own_names_in_text_only: bool = False  # those names only where devices are text (the command)
    threads: Threads | None = None
    no_threads: str = ""  # why it takes no --threads, where `threads` is None
    # NumPy data onto `device` (None: its default device): (namespace, array, device, copy); None: xp.asarray.
    from_numpy: Callable[[ModuleType, np.ndarray, Any, bool | None], Any] | None = None
    # Its kernels: "module:Class" of its `Backend` (backends/_portable.py's when it has none of its own).
    backend: str = "xdezero.backends._portable:Backend"
    # DeZero's pair: a NumPy array's GPUs are CuPy's, a CuPy array's host is NumPy's (to_device crosses).
    gpu_library: str | None = None
    host_library: str | None = None

    # --- the library itself ---------------------------------------------------------------------------------
    def installed(self) -> bool:
        """True when its module can be imported (checked without importing it)."""
        return importlib.util.find_spec(self.module) is not None

    def load(self, subject: str = "") -> ModuleType:
        """Its array namespace, imported now if it was not yet; BackendUnavailable saying why when it cannot be.
        `subject` opens the message ("backend 'torch'"; default "the array library 'torch'")."""
        subject = subject or f"the array library {self.name!r}"
        if not self.installed():
            raise BackendUnavailable(f"{subject} is not usable: {self.module} is not installed")
        try:
            return importlib.import_module(self.namespace)
        except Exception as e:
            raise BackendUnavailable(f"{subject} is not usable: importing {self.namespace} failed ({e})") from None

    def version(self) -> str:
        """Its `__version__` (the library is imported)."""
        return str(getattr(importlib.import_module(self.module), "__version__", "?"))

    def gpu_probe(self) -> Gpus:
        """The GPUs it sees here (none where it is not installed); never raises."""
        if self.gpus is None:
            return Gpus([], None, self.no_gpu)
        if not self.installed():
            return Gpus([], None, "is not installed")
        try:
            return self.gpus()
        except Exception as e:
            return Gpus([], None, f"failed to list its GPUs ({type(e).__name__}: {e})")

    def put(self, a: np.ndarray, device: Any = None, copy: bool | None = None) -> Any:
        """NumPy data `a` as an array of this library on `device` (its default device when None)."""
        xp = self.load()
        if self.from_numpy is not None:
            return self.from_numpy(xp, a, device, copy)
        return xp.asarray(a, copy=copy) if device is None else xp.asarray(a, device=device, copy=copy)

    def preferred_device(self) -> Any:
        """Its current GPU where it sees one, else its first host device (what the command takes by default)."""
        gpus = self.gpu_probe()
        if gpus.devices:
            return gpus.devices[gpus.current or 0]
        hosts = self.host_devices()
        return hosts[0] if hosts else None

    # --- devices ------------------------------------------------------------------------------------------
    def devices(self, text: bool = False) -> list[tuple[str, Any]]:
        """(name, device object) of each device it has here: host devices, GPUs, its own names (those meant
        for text only when `text`). Empty where it is not installed."""
        if not self.installed():
            return []
        hosts = self.host_devices()
        found = [("cpu" if len(hosts) == 1 else f"cpu:{i}", d) for i, d in enumerate(hosts)]
        found += [(f"gpu:{i}", d) for i, d in enumerate(self.gpu_probe().devices)]
        if self.own_devices is not None:
            found += [(n if text or not self.own_names_in_text_only else repr(d), d) for n, d in self._own(True)]
        return found

    def _own(self, text: bool) -> list[tuple[str, Any]]:
        if self.own_devices is None or (self.own_names_in_text_only and not text):
            return []
        return list(self.own_devices().items())

    def find(self, device: Any, *, where: str, subject: str = "", text: bool = False) -> Placement:
        """The device `device` names (a string of the grammar, one of its own names, or one of its device
        objects); ValueError naming it and the devices there are when it has none such. `where` opens the
        message ("to_library"), `subject` names the library in it (default "library 'torch'"); `text`: the
        device came as text (the command), where own names stand for device objects."""
        if not isinstance(device, str):
            return self._find_object(device, where)
        spec = parse_device(device)
        if spec is not None and self.installed():
            kind, index = spec
            if kind == "cpu":
                hosts = self.host_devices()
                i = 0 if index is None else index
                if i < len(hosts):
                    return Placement("cpu" if len(hosts) == 1 else f"cpu:{i}", hosts[i], None)
            else:
                gpus = self.gpu_probe()
                gpu = gpus.current if index is None else index
                if gpu is not None and gpu < len(gpus.devices):
                    return Placement(f"gpu:{gpu}", gpus.devices[gpu], gpu)
        elif spec is None:
            for name, obj in self._own(text) if self.installed() else []:
                if name == device:
                    return Placement(name, obj, None)
        raise ValueError(self._no_such_device(device, spec, where, subject, text))

    def _find_object(self, device: Any, where: str) -> Placement:
        owner = library_of_type(type(device))
        if owner is not None and owner is not self:
            raise ValueError(
                f"{where}: {device!r} is a device of {owner.label}, not of {self.label}; pass one of its devices "
                f"or a device string ({_and(list(GRAMMAR))})"
            )
        for name, obj in self.devices(text=True):
            if type(obj) is type(device) and obj == device:
                gpu = int(name[4:]) if name.startswith("gpu:") else None
                return Placement(name, device, gpu)
        return Placement(str(device), device, None)

    def _no_such_device(self, device: str, spec: Any, where: str, subject: str, text: bool) -> str:
        message = f"{where}: {subject or f'library {self.name!r}'} has no device {device!r}"
        if spec is None:
            own = [name for name, _ in self._own(text)] if self.installed() else []
            article = "an" if self.label[0].lower() in "aeiou" else "a"
            strings = _and([*GRAMMAR, *own])
            message += f": not {article} {self.label} device (the device strings are {strings}, or its device objects)"
        names = [name for name, _ in self.devices(text)]
        message += f"; {self.label}'s devices are {_and(names)}" if names else f"; {self.label} has no device here"
        if (spec is not None and spec[0] == "gpu") or not names:
            message += f" ({subject or self.label} {self.gpu_probe().says})"
        return message


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# --- each library's devices, GPUs and threads (imported only when asked) ------------------------------------


def _cpu() -> list[Any]:
    return ["cpu"]


def _blas_threads(n: int) -> Callable[[], None]:
    if importlib.util.find_spec("threadpoolctl") is None:
        raise BackendUnavailable("NumPy's BLAS threads are limited through threadpoolctl: pip install threadpoolctl")
    threadpoolctl = importlib.import_module("threadpoolctl")
    return threadpoolctl.threadpool_limits(limits=n, user_api="blas").restore_original_limits


def _strict_host() -> list[Any]:
    return [importlib.import_module("array_api_strict").Device("CPU_DEVICE")]


def _strict_own() -> dict[str, Any]:
    strict = importlib.import_module("array_api_strict")
    devices = strict.__array_namespace_info__().devices()
    # The simulated GPUs; its other devices ('no_float64', ...) simulate missing dtypes, not a second device.
    return {name: strict.Device(name) for name in ("device1", "device2") if strict.Device(name) in devices}


def _torch() -> Any:
    return importlib.import_module("torch")


def _torch_gpus() -> Gpus:
    torch = _torch()
    if not torch.cuda.is_available():
        return Gpus([], None, "sees no CUDA GPU")
    n = torch.cuda.device_count()
    gpus = [torch.device("cuda", i) for i in range(n)]
    return Gpus(gpus, torch.cuda.current_device(), f"sees {n} CUDA GPU{'s' * (n > 1)}")


def _torch_own() -> dict[str, Any]:
    torch = _torch()
    return {"mps": torch.device("mps")} if torch.backends.mps.is_available() else {}


def _torch_threads(n: int) -> Callable[[], None]:
    torch = _torch()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return lambda: torch.set_num_threads(before)


def _jax_host() -> list[Any]:
    return list(importlib.import_module("jax").devices("cpu"))


def _jax_gpus() -> Gpus:
    jax = importlib.import_module("jax")
    try:
        gpus = list(jax.devices("gpu"))
    except RuntimeError:  # "Unknown backend: 'gpu' requested" or "Backend 'gpu' failed to initialize"
        gpus = []
    n = len(gpus)
    return Gpus(gpus, 0 if gpus else None, f"sees {n} GPU{'s' * (n > 1)}" if gpus else "sees no GPU")


def _cupy() -> Any:
    return importlib.import_module("cupy")


def cupy_usable() -> bool:
    """True when CuPy imports and sees a usable CUDA device (CuPy imports without one and fails at first use)."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        return bool(_cupy().cuda.is_available())
    except Exception:
        return False


def _cupy_gpus() -> Gpus:
    if not cupy_usable():
        return Gpus([], None, "sees no usable CUDA GPU (cupy.cuda.is_available() is False)")
    cuda = _cupy().cuda
    n = cuda.runtime.getDeviceCount()
    return Gpus([cuda.Device(i) for i in range(n)], cuda.Device().id, f"sees {n} CUDA GPU{'s' * (n > 1)}")


def _cupy_use(i: int) -> None:
    _cupy().cuda.Device(i).use()


def _cupy_from_numpy(xp: ModuleType, a: np.ndarray, device: Any, copy: bool | None) -> Any:
    if device is None:
        return xp.asarray(a)  # a host array always copies to the GPU
    with device:
        return xp.asarray(a)


_LIBRARIES = (
    Library(
        name="numpy",
        backend="xdezero.backends._numpy:NumpyBackend",
        label="NumPy",
        module="numpy",
        array_modules=("numpy",),
        namespace="array_api_compat.numpy",
        host_devices=_cpu,
        no_gpu="runs on the CPU only; its GPU counterpart is CuPy",
        threads=Threads("NumPy's BLAS (through threadpoolctl)", _blas_threads, unit="BLAS thread"),
        gpu_library="cupy",
    ),
    Library(
        name="array_api_strict",
        label="array-api-strict",
        module="array_api_strict",
        array_modules=("array_api_strict",),
        namespace="array_api_strict",
        host_devices=_strict_host,
        no_gpu="has no GPU; its device1 and device2 are simulated on the CPU",
        own_devices=_strict_own,
        own_names_in_text_only=True,
        no_threads="it computes with NumPy underneath, and NumPy's BLAS sets the threads",
    ),
    Library(
        name="torch",
        backend="xdezero.backends._torch:TorchBackend",
        label="torch",
        module="torch",
        array_modules=("torch",),
        namespace="array_api_compat.torch",
        host_devices=lambda: [_torch().device("cpu")],
        gpus=_torch_gpus,
        use_gpu=lambda i: _torch().cuda.set_device(i),
        own_devices=_torch_own,
        threads=Threads("torch's intra-op threads", _torch_threads, current=lambda: _torch().get_num_threads()),
    ),
    Library(
        name="jax",
        backend="xdezero.backends._jax:JaxBackend",
        label="JAX",
        module="jax",
        array_modules=("jaxlib", "jax"),
        namespace="jax.numpy",
        host_devices=_jax_host,
        gpus=_jax_gpus,
        no_threads="JAX sizes its thread pool when imported: set XLA_FLAGS before starting",
    ),
    Library(
        name="cupy",
        backend="xdezero.backends._cupy:CupyBackend",
        label="CuPy",
        module="cupy",
        array_modules=("cupy",),
        namespace="array_api_compat.cupy",
        host_devices=list,
        gpus=_cupy_gpus,
        use_gpu=_cupy_use,
        needs_gpu=True,
        no_threads="it runs on the GPU",
        from_numpy=_cupy_from_numpy,
        host_library="numpy",
    ),
    Library(
        name="dask",
        backend="xdezero.backends._dask:DaskBackend",
        label="Dask",
        module="dask",
        array_modules=("dask",),
        namespace="array_api_compat.dask.array",
        host_devices=_cpu,
        no_threads="its scheduler sizes its own pool: dask.config.set(num_workers=N)",
    ),
)
_BY_NAME = {row.name: row for row in _LIBRARIES}
_BY_MODULE = {module: row for row in _LIBRARIES for module in row.array_modules}


def libraries() -> tuple[Library, ...]:
    """Every array library xdezero knows, NumPy first."""
    return _LIBRARIES


def library(name: str) -> Library:
    """The row of library `name`; ValueError naming the known ones when there is none."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown array library {name!r}; known: {', '.join(_BY_NAME)}") from None


def library_of_type(t: type) -> Library | None:
    """The row of the library that defines type `t` (an array's or a device's), or None; imports nothing."""
    return _BY_MODULE.get(t.__module__.partition(".")[0])


def library_of(array: Any) -> Library:
    """The row of the library `array` belongs to, told from its type without importing anything; TypeError for
    an object of no known library."""
    row = library_of_type(type(array))
    if row is None:
        t = type(array)
        raise TypeError(
            f"library_of: {t.__module__}.{t.__qualname__} is not an array of a known library ({', '.join(_BY_NAME)})"
        )
    return row
