"""MPI (mpi4py): host arrays travel as NumPy buffers through `Allreduce`/`Bcast`, never pickled.

Arrays of other libraries are packed in their own library first and cross to the host once per collective
(one device-to-host copy per dtype group for GPU arrays). With a CUDA-aware MPI, `cuda_aware=True` hands CuPy
buffers to MPI directly instead (untested here: this machine has no GPU).
"""

from __future__ import annotations

import datetime
from typing import Any

from xdezero.backends import array_namespace, device_of
from xdezero.distributed._abort import install_abort_hook
from xdezero.distributed._watchdog import Watchdog, report_and_abort
from xdezero.distributed.communicator import Communicator, host_buffer

__all__ = ["MpiCommunicator"]


class MpiCommunicator(Communicator):
    """Data-parallel collectives over an MPI communicator (MPI.COMM_WORLD unless `mpi_comm` is given).

    `abort_on_exception` (default True) installs a `sys.excepthook` that prints the traceback of an uncaught
    exception and calls `MPI_Abort`, so that one failing rank ends the job instead of leaving the others
    blocked in a collective. MPI's collectives have no time-out of their own: a collective that one rank never
    reaches (a rank that returns early, or runs a different number of steps) would wait for ever, so a watchdog
    thread ends the job (MPI_Abort, with a line naming the collective and the rank) when a collective has not
    completed after `timeout` (default 30 minutes, as PyTorch's; None: wait for ever).

    `close()` stops that thread (idempotent); so does dropping the communicator (the abort hook holds it weakly).
    Collectives still work after `close()`, without the time-out. The MPI communicator stays open: it is
    MPI.COMM_WORLD or the caller's, who frees one it created.
    """

    name = "mpi"
    _numpy_in_place = True  # host_buffer shares a fresh contiguous NumPy array; MPI reduces it in place
    # Set in __init__; declared here so that type checkers see them as the base class's ints, not redefinitions.
    rank: int
    size: int
    intra_rank: int
    intra_size: int
    inter_rank: int
    inter_size: int
    mpi_comm: Any  # an mpi4py communicator

    def __init__(
        self,
        mpi_comm: Any = None,
        *,
        abort_on_exception: bool = True,
        cuda_aware: bool = False,
        timeout: datetime.timedelta | None = datetime.timedelta(minutes=30),
    ) -> None:
        if timeout is not None and not isinstance(timeout, datetime.timedelta):
            raise TypeError(f"MpiCommunicator: timeout must be a datetime.timedelta or None, got {timeout!r}")
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise ImportError(
                "the 'mpi' communicator needs mpi4py and an MPI runtime: pip install mpi4py mpich "
                "(or pip install 'xdezero[mpi]'); then launch with mpiexec -n N python script.py"
            ) from e
        self._MPI = MPI
        self.mpi_comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self.mpi_comm.Get_rank(), self.mpi_comm.Get_size()
        intra = self.mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.intra_rank, self.intra_size = intra.Get_rank(), intra.Get_size()
        inter = self.mpi_comm.Split(color=self.intra_rank, key=self.rank)  # rank r on each node: one per node
        self.inter_rank, self.inter_size = inter.Get_rank(), inter.Get_size()
        intra.Free()
        inter.Free()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        self.cuda_aware: bool = cuda_aware
        # mpi4py asks for MPI_THREAD_MULTIPLE unless told otherwise (mpi4py.rc.thread_level, or MPI initialised
        # by the program); below it, two threads may not call MPI at the same time.
        self._threaded_starts = MPI.Query_thread() == MPI.THREAD_MULTIPLE
        self._watchdog = None
        if timeout is not None and self.size > 1:
            on_timeout = report_and_abort(self.rank, self.size, self.abort)  # holds `self` weakly
            self._watchdog = Watchdog(timeout.total_seconds(), on_timeout, owner=self)
        if abort_on_exception:
            install_abort_hook(self.rank, self.size, self.abort)

    def _to_buffer(self, flat: Any) -> Any:
        if self.cuda_aware and type(flat).__module__.startswith("cupy"):
            import cupy

            cupy.cuda.get_current_stream().synchronize()  # MPI reads device memory outside CuPy's stream
            return flat
        return host_buffer(flat)

    def _from_buffer(self, buf: Any, like: Any) -> Any:
        if type(buf) is type(like):
            return buf
        return array_namespace(like).asarray(buf, device=device_of(like))

    def _blocking(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """call(*args, **kwargs), a blocking collective, under the watchdog when there is one."""
        if self._watchdog is None:
            return call(*args, **kwargs)
        self._watchdog.arm(what)
        try:
            return call(*args, **kwargs)
        finally:
            self._watchdog.disarm()

    def _allreduce_buffer(self, buf: Any, op: str) -> Any:
        mpi_op = self._ops["sum" if op == "mean" else op]
        self._blocking("an all-reduce", self.mpi_comm.Allreduce, self._MPI.IN_PLACE, buf, op=mpi_op)
        if op == "mean":
            buf /= self.size  # our buffer: dividing in place saves a pass and an allocation per step
        return buf

    def _iallreduce_buffer(self, buf: Any, op: str) -> Any:
        """MPI_Iallreduce, in place; `wait()` (under the watchdog) returns the reduced buffer."""
        mpi_op = self._ops["sum" if op == "mean" else op]
        request = self.mpi_comm.Iallreduce(self._MPI.IN_PLACE, buf, op=mpi_op)
        return _Pending(self, request, buf, op)

    def _bcast_buffer(self, buf: Any, root: int) -> Any:
        self._blocking("a broadcast", self.mpi_comm.Bcast, buf, root=root)
        return buf

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Rank `root`'s `obj` on every rank (pickled)."""
        return self._blocking("a broadcast", self.mpi_comm.bcast, obj, root=root)

    def barrier(self) -> None:
        """Return once every rank has called `barrier`."""
        self._blocking("a barrier", self.mpi_comm.Barrier)

    def abort(self, code: int = 1) -> None:
        """End every process of the job now."""
        self.mpi_comm.Abort(code)

    def close(self) -> None:
        """Stop the collective watchdog's thread (idempotent); later collectives run without a time-out."""
        if self._watchdog is not None:
            self._watchdog.stop()


class _Pending:
    """A started MPI_Iallreduce: `wait()` completes it and returns the reduced buffer."""

    def __init__(self, comm: MpiCommunicator, request: Any, buf: Any, op: str) -> None:
        self.comm, self.request, self.buf, self.op = comm, request, buf, op

    def wait(self) -> Any:
        """The reduced buffer (the mean divided here)."""
        self.comm._blocking("an all-reduce", self.request.Wait)
        if self.op == "mean":
            self.buf /= self.comm.size
        return self.buf
