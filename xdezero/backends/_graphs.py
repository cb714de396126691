"""CUDA graphs: record the kernels of one Python call once, then launch them all with one call.

What a captured training step needs from a library, for the two libraries that have CUDA graphs (CuPy and
torch on CUDA): capture a function's kernels on a stream of their own, with the memory it allocates taken from a
pool of its own (kernels in a graph write to fixed addresses: nothing outside the graph may be given that memory
while the graph lives); launch the graph on the current stream; copy into a fixed buffer; tell whether two arrays
are the same memory. `graph_kit(arrays)` gives these for the arrays' library, or None (no CUDA graphs there).

The capture runs the function's Python once, but none of its kernels: they run at each launch. A function that
reads an array's values on the host while it is captured (a `float()`, a transfer) fails the capture with the
library's error; the caller falls back to running the function.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import array_api_compat

from xdezero.backends._cublas import cupy_gemm, prepare

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


def _capture(begin: Callable[[], None], fn: Callable[[], None], end: Callable[[], Any]) -> Any:
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


# A CuPy pool must outlive the arrays allocated from it (they hold it weakly), and some of a graph's arrays are
# handed out (a parameter's gradient): so every pool stays here, with its kit, while the kit lives or any of its
# memory is in use.
_cupy_pools: list = []  # (weak reference to the kit, pool)


class CupyGraphs:
    """CUDA graphs through `cupy.cuda.Stream.begin_capture`, with a `cupy.cuda.MemoryPool` per capturer."""

    name: str = "CuPy"

    def __init__(self, device: Any) -> None:
        cupy = sys.modules["cupy"]
        self._cupy, self._device = cupy, device
        with device:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        self._pool = cupy.cuda.MemoryPool()
        _cupy_pools[:] = [(kit, pool) for kit, pool in _cupy_pools if kit() is not None or pool.used_bytes()]
        _cupy_pools.append((weakref.ref(self), self._pool))

    def __del__(self) -> None:
        try:
            self._pool.free_all_blocks()  # the unused memory; what arrays still hold stays theirs
        except Exception:  # at interpreter exit CuPy may be gone already
            pass

    def capture(self, fn: Callable[[], None]) -> Any:
        """The graph of `fn`'s kernels (none of which runs now); an error in `fn` ends the capture and is raised."""
        cupy = self._cupy
        prepare(self._device.id)  # cuBLAS's handle and workspace, made outside the capture and its pool

        def captured() -> None:
            with capturing_cupy():  # CuPy's products and stacks refuse a capture: ours instead
                fn()

        with self._device, cupy.cuda.using_allocator(self._pool.malloc), self._stream:
            return _capture(self._stream.begin_capture, captured, self._stream.end_capture)

    def warm(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the capture stream, in order with the current stream's work (what it first meets on that
        stream, such as a library handle's workspace, is then made outside a capture)."""
        current = self._cupy.cuda.get_current_stream()
        self._stream.wait_event(current.record())
        try:
            with self._device, self._stream:
                return fn()
        finally:
            current.wait_event(self._stream.record())

    def launch(self, graph: Any) -> None:
        """Run the graph's kernels once."""
        graph.launch()  # on the current stream

    def copy_into(self, target: Any, source: Any) -> None:
        """Copy `source` into the fixed buffer `target` (a kernel, which a graph can hold)."""
        self._cupy.copyto(target, source)

    def copy(self, a: Any) -> Any:
        """A fresh copy of `a`."""
        return a.copy()

    @staticmethod
    def same_memory(a: Any, b: Any) -> bool:
        """Whether `a` and `b` are the same memory, of the same size and dtype."""
        return a.data.ptr == b.data.ptr and a.size == b.size and a.dtype == b.dtype

    def release(self) -> None:
        """Give the pool's unused memory back (call once no graph captured with it will launch again)."""
        self._pool.free_all_blocks()


class TorchGraphs:
    """CUDA graphs through `torch.cuda.CUDAGraph`, whose private memory pool torch keeps with the graph."""

    name: str = "torch"

    def __init__(self, device: Any) -> None:
        torch = self._torch = sys.modules["torch"]
        self._device = device
        self._stream = torch.cuda.Stream(device)

    def warm(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the capture stream, in order with the current stream's work (torch makes a cuBLAS
        workspace per stream: made here, outside a capture)."""
        torch = self._torch
        current = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(current)
        try:
            with torch.cuda.stream(self._stream):
                return fn()
        finally:
            current.wait_stream(self._stream)

    def capture(self, fn: Callable[[], None]) -> Any:
        """The graph of `fn`'s kernels (none of which runs now); an error in `fn` ends the capture and is raised."""
        torch = self._torch
        graph = torch.cuda.CUDAGraph()
        self._stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(self._stream):
            _capture(lambda: graph.capture_begin(capture_error_mode="relaxed"), fn, graph.capture_end)
        return graph

    def launch(self, graph: Any) -> None:
        """Run the graph's kernels once."""
        graph.replay()

    @staticmethod
    def copy_into(target: Any, source: Any) -> None:
        """Copy `source` into the fixed buffer `target` (a kernel, which a graph can hold)."""
        target.copy_(source)

    @staticmethod
    def copy(a: Any) -> Any:
        """A fresh copy of `a`."""
        return a.clone()

    @staticmethod
    def same_memory(a: Any, b: Any) -> bool:
        """Whether `a` and `b` are the same memory, of the same size and dtype."""
        return a.data_ptr() == b.data_ptr() and a.numel() == b.numel() and a.dtype == b.dtype

    def release(self) -> None:
        """Nothing to give back: torch frees a graph's pool with the graph and its tensors."""


GraphKit = CupyGraphs | TorchGraphs  # what `graph_kit` gives: the CUDA-graph operations of one library


def graph_kit(arrays: Sequence[Any]) -> GraphKit | None:
    """The CUDA-graph operations for `arrays` (a step's arguments), or None where there are none: no arrays,
    arrays on the host, of JAX or another library, or of more than one library or device."""
    if not arrays:
        return None
    first = arrays[0]
    if array_api_compat.is_cupy_array(first):
        if all(array_api_compat.is_cupy_array(a) and a.device == first.device for a in arrays):
            return CupyGraphs(first.device)
    elif array_api_compat.is_torch_array(first) and first.is_cuda:
        if all(array_api_compat.is_torch_array(a) and a.device == first.device for a in arrays):
            return TorchGraphs(first.device)
    return None
