"""CUDA graphs: record the kernels of one Python call once, then launch them all with one call.

What a captured training step needs from a library, for the two libraries that have CUDA graphs (CuPy and
torch on CUDA): capture a function's kernels on a stream of their own, with the memory it allocates taken from a
pool of its own (kernels in a graph write to fixed addresses: nothing outside the graph may be given that memory
while the graph lives); launch the graph on the current stream; copy into a fixed buffer; tell whether two arrays
are the same memory. Each library's kit lives in its own module (`CupyGraphs` in backends/_cupy.py,
`TorchGraphs` in backends/_torch.py) and its backend's `graph_kit(device)` gives it; `graph_kit(arrays)` here
asks the arrays' backend, and gives None where there are no CUDA graphs.

What stays here is what the portable code calls (backends/_im2col.py, backends/_portable.py, the ops): the flag
that says this thread is capturing a CuPy graph, and the product and stack that take another path meanwhile.

The capture runs the function's Python once, but none of its kernels: they run at each launch. A function that
reads an array's values on the host while it is captured (a `float()`, a transfer) fails the capture with the
library's error; the caller falls back to running the function.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from xdezero.backends._backends import backend_of
from xdezero.backends._cublas import cupy_gemm
from xdezero.backends._namespace import device_of

_capturing = threading.local()  # set on the thread that is capturing a CuPy graph


def cupy_capturing() -> bool:
    """Whether this thread is capturing a CuPy graph."""
    return getattr(_capturing, "cupy", False)


@contextmanager
def capturing_cupy() -> Iterator[None]:
    """Inside: this thread captures a CuPy graph (whose device's cuBLAS handle was prepared first)."""
    _capturing.cupy = True
    try:
        yield
    finally:
        _capturing.cupy = False


def graph_safe_matmul(xp: Any, a: Any, b: Any) -> Any:
    """a @ b (xp.matmul); while a CuPy graph is captured, cuBLAS's GEMM called directly (CuPy refuses its own)."""
    if not cupy_capturing():
        return xp.matmul(a, b)
    if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype and a.dtype.kind == "f" and a.dtype.itemsize in (4, 8):
        return cupy_gemm(a, b)
    raise NotImplementedError(
        f"a captured CuPy graph holds 2-D float32/float64 products only, got {a.shape} {a.dtype} @ {b.shape} {b.dtype}"
    )


def graph_safe_stack(xp: Any, arrays: Sequence[Any], axis: int) -> Any:
    """xp.stack(arrays, axis); while a CuPy graph is captured, each part copied into its slot (CuPy's
    concatenation sends its table of pointers from the host, which a capture refuses)."""
    if not cupy_capturing():
        return xp.stack(arrays, axis=axis)
    first = arrays[0]
    if any(tuple(a.shape) != tuple(first.shape) for a in arrays):
        raise ValueError(f"stack: all arrays must have the same shape, got {[tuple(a.shape) for a in arrays]}")
    axis = axis % (first.ndim + 1)
    out = xp.empty((*first.shape[:axis], len(arrays), *first.shape[axis:]), dtype=xp.result_type(*arrays))
    for k, part in enumerate(arrays):
        out[(slice(None),) * axis + (k,)] = part
    return out


def run_capture(begin: Callable[[], None], fn: Callable[[], None], end: Callable[[], Any]) -> Any:
    """`end()`'s result after `begin()` and `fn()`; when `fn` raises, the capture is ended and the error raised."""
    begin()
    try:
        fn()
    except BaseException:
        try:
            end()
        except Exception:  # an invalidated capture ends with an error of its own
            pass
        raise
    return end()


class GraphKit(Protocol):
    """The CUDA-graph operations of one library on one device: `CupyGraphs` (backends/_cupy.py) and
    `TorchGraphs` (backends/_torch.py), which their backends' `graph_kit` give."""

    name: str  # the library, as messages name it

    def capture(self, fn: Callable[[], None]) -> Any:
        """The graph of `fn`'s kernels (none of which runs now); an error in `fn` ends the capture and is raised."""
        ...

    def warm(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the capture stream, in order with the current stream's work."""
        ...

    def launch(self, graph: Any) -> None:
        """Run the graph's kernels once."""
        ...

    def copy_into(self, target: Any, source: Any) -> None:
        """Copy `source` into the fixed buffer `target` (a kernel, which a graph can hold)."""
        ...

    def copy(self, a: Any) -> Any:
        """A fresh copy of `a`."""
        ...

    def same_memory(self, a: Any, b: Any) -> bool:
        """Whether `a` and `b` are the same memory, of the same size and dtype."""
        ...

    def release(self) -> None:
        """Give what the kit holds back once no graph it captured will launch again."""
        ...


def graph_kit(arrays: Sequence[Any]) -> GraphKit | None:
    """The CUDA-graph operations for `arrays` (a step's arguments), or None where there are none: no arrays,
    arrays on the host, of JAX or another library, or of more than one library or device."""
    if not arrays:
        return None
    backend, device = backend_of(arrays[0]), device_of(arrays[0])
    if any(backend_of(a) is not backend or device_of(a) != device for a in arrays[1:]):
        return None
    return backend.graph_kit(device)
