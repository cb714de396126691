"""cuBLAS's GEMM called directly, through ctypes: the products of a CuPy graph capture.

CuPy refuses every cuBLAS call while a stream captures ("calling cuBLAS API during stream capture is currently
unsupported"), although cuBLAS itself supports capture when its workspace is set beforehand. So while a CuPy graph
is captured (`CupyGraphs`, backends/_cupy.py), 2-D float products run here, on a cuBLAS handle of xdezero's own whose
workspace is allocated once, outside any capture, and set again after each change of stream (setting the stream
resets it). Called for every product of eager steps too, the GEMM made a batch-100 MLP step slower against
PyTorch on an H200, not faster: ctypes and its checks cost about what CuPy's own call does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Any

_OP_N, _OP_T = 0, 1
_TF32_TENSOR_OP_MATH = 3
_WORKSPACE_BYTES = 32 * 2**20
_handles: dict[int, tuple] = {}  # device id -> (handle, workspace array)
_library: list = []
_lock = threading.Lock()  # one handle per device: setting its stream, workspace and running the GEMM go together


def _cublas() -> ctypes.CDLL:
    """The cuBLAS library CuPy loaded (found among this process's mapped files), else the system's."""
    if not _library:
        path = None
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    name = line.rsplit(None, 1)[-1]
                    if "/libcublas.so" in name:
                        path = name
                        break
        except OSError:
            pass
        path = path or ctypes.util.find_library("cublas")
        if path is None:
            raise NotImplementedError("cuBLAS's library was not found among the loaded ones")
        lib = ctypes.CDLL(path)
        for fn in ("cublasSgemm_v2", "cublasDgemm_v2"):
            getattr(lib, fn).argtypes = (
                [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
                + [ctypes.c_int] * 3
                + [
                    ctypes.c_void_p,
                    ctypes.c_void_p,
                    ctypes.c_int,
                    ctypes.c_void_p,
                    ctypes.c_int,
                    ctypes.c_void_p,
                    ctypes.c_void_p,
                    ctypes.c_int,
                ]
            )
        lib.cublasSetStream_v2.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.cublasSetWorkspace_v2.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        lib.cublasSetMathMode.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _library.append(lib)
    return _library[0]


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"cuBLAS {what} failed with status {status}")


def prepare(device_id: int) -> None:
    """Create this device's handle and workspace now (before a capture: neither may be made during one)."""
    with _lock:
        if device_id not in _handles:
            _prepare(device_id)


def _prepare(device_id: int) -> None:
    cupy = sys.modules["cupy"]
    lib = _cublas()
    handle = ctypes.c_void_p()
    with cupy.cuda.Device(device_id):
        _check(lib.cublasCreate_v2(ctypes.byref(handle)), "cublasCreate")
        workspace = cupy.empty(_WORKSPACE_BYTES, dtype=cupy.uint8)
        _check(lib.cublasSetWorkspace_v2(handle, workspace.data.ptr, _WORKSPACE_BYTES), "cublasSetWorkspace")
        if os.environ.get("CUPY_TF32", "0") != "0":  # as CuPy's own products
            _check(lib.cublasSetMathMode(handle, _TF32_TENSOR_OP_MATH), "cublasSetMathMode")
    _handles[device_id] = (handle, workspace)


def _operand(cupy: Any, x: Any) -> tuple[int, int, Any]:
    """How cuBLAS, which reads matrices column by column, gets xᵀ for a row-major x (r, c): (op, leading
    dimension, array). A C-ordered x already lies as xᵀ; an F-ordered one lies as x and is transposed by the op."""
    if x.flags.c_contiguous:  # column-major (c, r) with ld c: xᵀ as it lies
        return _OP_N, max(1, x.shape[1]), x
    if x.flags.f_contiguous:  # column-major (r, c) with ld r: x, transposed by the op
        return _OP_T, max(1, x.shape[0]), x
    x = cupy.ascontiguousarray(x)
    return _OP_N, max(1, x.shape[1]), x


def cupy_gemm(a: Any, b: Any) -> Any:
    """a @ b for 2-D CuPy arrays of one dtype, float32 or float64, by one GEMM: (a b)ᵀ = bᵀ aᵀ, in cuBLAS's
    column-major terms."""
    cupy = sys.modules["cupy"]
    (m, k), n = a.shape, b.shape[1]
    if k != b.shape[0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align")
    out = cupy.empty((m, n), dtype=a.dtype)
    if m == 0 or n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    device_id = out.device.id
    prepare(device_id)  # a capturer prepares first, outside its capture
    handle, workspace = _handles[device_id]
    lib = _cublas()
    op_b, ld_b, b = _operand(cupy, b)
    op_a, ld_a, a = _operand(cupy, a)
    if a.dtype == cupy.float32:
        gemm, scalar = lib.cublasSgemm_v2, ctypes.c_float
    else:
        gemm, scalar = lib.cublasDgemm_v2, ctypes.c_double
    one, zero = scalar(1.0), scalar(0.0)
    with _lock:
        _check(lib.cublasSetStream_v2(handle, cupy.cuda.get_current_stream().ptr), "cublasSetStream")
        _check(lib.cublasSetWorkspace_v2(handle, workspace.data.ptr, _WORKSPACE_BYTES), "cublasSetWorkspace")
        status = gemm(
            handle, op_b, op_a, n, m, k, ctypes.byref(one), b.data.ptr, ld_b, a.data.ptr, ld_a, ctypes.byref(zero),
            out.data.ptr, max(1, n),
        )  # fmt: skip
    _check(status, "gemm")
    return out
