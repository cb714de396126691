"""NCCL (CuPy's `cupy.cuda.nccl`): CuPy arrays all-reduced on the GPUs, bootstrapped over MPI.

UNTESTED: written against CuPy's documented NCCL binding, but this project's CI has no GPU, so no test has
run it. Rank 0 creates the NCCL unique id and broadcasts it over MPI; each process uses GPU `intra_rank`.
Host arrays and Python numbers are copied to the GPU for the collective and back. MPI stays underneath for
the bootstrap, `bcast_obj`, `barrier` and the abort on an uncaught exception.
"""

from __future__ import annotations

from typing import Any

from xdezero.backends import array_namespace, device_of, to_numpy
from xdezero.distributed.communicator import Communicator
from xdezero.distributed.mpi import MpiCommunicator

__all__ = ["NcclCommunicator"]


class NcclCommunicator(Communicator):
    """Collectives on CuPy arrays through NCCL, one process per GPU (launch with mpiexec)."""

    name = "nccl"

    def __init__(self, mpi_comm: Any = None, *, abort_on_exception: bool = True) -> None:
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as e:
            raise ImportError("the 'nccl' communicator needs CuPy with NCCL: pip install cupy-cuda12x") from e
        if not getattr(nccl, "available", True):
            raise RuntimeError("the 'nccl' communicator: this CuPy build has no NCCL support")
        self.mpi: MpiCommunicator = MpiCommunicator(mpi_comm, abort_on_exception=abort_on_exception)
        for attr in ("rank", "size", "intra_rank", "intra_size", "inter_rank", "inter_size"):
            setattr(self, attr, getattr(self.mpi, attr))
        self._cupy, self._nccl = cupy, nccl
        cupy.cuda.Device(self.intra_rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = self.mpi.bcast_obj(nccl.get_unique_id() if self.rank == 0 else None)
        self.nccl_comm: Any = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}
        self._dtypes = {
            "float16": nccl.NCCL_FLOAT16,
            "float32": nccl.NCCL_FLOAT32,
            "float64": nccl.NCCL_FLOAT64,
            "int32": nccl.NCCL_INT32,
            "int64": nccl.NCCL_INT64,
            "uint8": nccl.NCCL_UINT8,
        }

    def _nccl_dtype(self, buf: Any) -> int:
        try:
            return self._dtypes[str(buf.dtype)]
        except KeyError:
            raise TypeError(
                f"nccl communicator: dtype {buf.dtype} is not supported; use one of {', '.join(self._dtypes)}"
            ) from None

    def _to_buffer(self, flat: Any) -> Any:
        cupy = self._cupy
        if isinstance(flat, cupy.ndarray) and flat.device.id == cupy.cuda.Device().id:
            return flat
        return cupy.asarray(to_numpy(flat))

    def _from_buffer(self, buf: Any, like: Any) -> Any:
        if isinstance(like, self._cupy.ndarray):
            return buf if like.device.id == buf.device.id else self._cupy.asarray(buf)
        host = buf.get()
        if type(like) is type(host):
            return host
        return array_namespace(like).asarray(host, device=device_of(like))

    def _allreduce_buffer(self, buf: Any, op: str) -> Any:
        stream = self._cupy.cuda.get_current_stream()
        nccl_op = self._ops["sum" if op == "mean" else op]
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._nccl_dtype(buf), nccl_op, stream.ptr)
        if op == "mean":
            buf /= self.size
        return buf

    def _bcast_buffer(self, buf: Any, root: int) -> Any:
        stream = self._cupy.cuda.get_current_stream()
        self.nccl_comm.bcast(buf.data.ptr, buf.size, self._nccl_dtype(buf), root, stream.ptr)
        return buf

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Rank `root`'s `obj` on every rank (pickled)."""
        return self.mpi.bcast_obj(obj, root)

    def barrier(self) -> None:
        """Return once every rank has called `barrier`."""
        self._cupy.cuda.get_current_stream().synchronize()
        self.mpi.barrier()

    def abort(self, code: int = 1) -> None:
        """End every process of the job now."""
        self.mpi.abort(code)
