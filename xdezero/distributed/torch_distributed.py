"""torch.distributed: torch tensors travel as they are (gloo on CPU, nccl on CUDA); other arrays via the host.

The process group is initialised from the environment that `torchrun` sets (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, LOCAL_RANK), unless the program initialised one itself. Collectives time out after `timeout`
(gloo and nccl honour it), so a rank that never reaches a collective ends in an error rather than a hang.
"""

from __future__ import annotations

import atexit
import datetime
import os
from typing import Any

import numpy as np

from xdezero.backends import array_namespace, device_of
from xdezero.distributed._abort import install_abort_hook
from xdezero.distributed.communicator import Communicator, host_buffer

__all__ = ["TorchCommunicator"]


def default_backend(torch: Any, td: Any) -> str:
    """nccl when torch sees CUDA, has NCCL and a GPU for every process of this node (LOCAL_WORLD_SIZE), else
    gloo: two processes on a one-GPU machine would both ask for GPU `LOCAL_RANK` and the second has none."""
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if torch.cuda.is_available() and td.is_nccl_available() and torch.cuda.device_count() >= local_size:
        return "nccl"
    return "gloo"


class TorchCommunicator(Communicator):
    """Collectives over torch.distributed; `backend` defaults to nccl when each local rank has a GPU of its
    own, else gloo."""

    name = "torch"
    # Set in __init__; declared here so that type checkers see them as the base class's ints, not redefinitions.
    rank: int
    size: int
    intra_rank: int
    intra_size: int
    inter_rank: int
    inter_size: int
    device: Any  # the torch.device its buffers live on

    def __init__(
        self,
        backend: str | None = None,
        *,
        timeout: datetime.timedelta = datetime.timedelta(minutes=5),
        abort_on_exception: bool = True,
    ) -> None:
        try:
            import torch
            import torch.distributed as td
        except ImportError as e:
            raise ImportError("the 'torch' communicator needs PyTorch: pip install torch") from e
        if not td.is_available():
            raise RuntimeError("the 'torch' communicator: this PyTorch build has no torch.distributed")
        self._torch, self._td = torch, td
        if not td.is_initialized():
            missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise RuntimeError(
                    f"the 'torch' communicator: {', '.join(missing)} not set; launch with "
                    "torchrun --nproc-per-node N script.py, or call torch.distributed.init_process_group first"
                )
            if backend is None:
                backend = default_backend(torch, td)
            td.init_process_group(backend, timeout=timeout)
            # Left to the interpreter's teardown, a live gloo group can end the process in std::terminate.
            atexit.register(_destroy, td)
        self.backend: str = td.get_backend()
        self.rank, self.size = td.get_rank(), td.get_world_size()
        self.intra_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.intra_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        self.inter_rank = int(os.environ.get("GROUP_RANK", 0))
        self.inter_size = max(1, self.size // max(1, self.intra_size))
        if self.backend == "nccl":
            self.device = torch.device("cuda", self.intra_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self._ops = {"sum": td.ReduceOp.SUM, "max": td.ReduceOp.MAX, "min": td.ReduceOp.MIN}
        # torch.distributed takes collectives from any thread (DDP starts them from autograd's); NCCL, whose
        # streams are per thread, stays on the step's thread (untested: no GPU in CI).
        self._threaded_starts = self.backend != "nccl"
        if abort_on_exception:
            install_abort_hook(self.rank, self.size, self.abort)

    def _to_buffer(self, flat: Any) -> Any:
        torch = self._torch
        if isinstance(flat, torch.Tensor):
            return flat.to(self.device)  # a fresh tensor already on the device is passed through
        return torch.from_numpy(host_buffer(flat)).to(self.device)

    def _from_buffer(self, buf: Any, like: Any) -> Any:
        if isinstance(like, self._torch.Tensor):
            return buf.to(like.device)
        # A copy: an array whose `.base` is a Tensor confuses code that walks NumPy's `.base` chain.
        host = np.array(buf.cpu().numpy())
        if type(like) is type(host):
            return host
        return array_namespace(like).asarray(host, device=device_of(like))

    def _allreduce_buffer(self, buf: Any, op: str) -> Any:
        self._td.all_reduce(buf, op=self._ops["sum" if op == "mean" else op])  # gloo has no AVG
        if op == "mean":
            buf.div_(self.size)
        return buf

    def _iallreduce_buffer(self, buf: Any, op: str) -> Any:
        work = self._td.all_reduce(buf, op=self._ops["sum" if op == "mean" else op], async_op=True)
        return _Pending(work, buf, self.size if op == "mean" else 1)

    def _bcast_buffer(self, buf: Any, root: int) -> Any:
        self._td.broadcast(buf, src=root)
        return buf

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Rank `root`'s `obj` on every rank (pickled)."""
        box = [obj]
        self._td.broadcast_object_list(box, src=root)
        return box[0]

    def barrier(self) -> None:
        """Return once every rank has called `barrier`."""
        self._td.barrier()

    def abort(self, code: int = 1) -> None:
        """End every process of the job now."""
        # No collective abort in torch.distributed: leaving at once closes this rank's connections, the peers'
        # pending collectives fail, and torchrun (or torch.multiprocessing.spawn) ends the other workers.
        os._exit(code)


def _destroy(td: Any) -> None:
    if td.is_initialized():
        td.destroy_process_group()


class _Pending:
    """A started all_reduce(async_op=True): `wait()` completes it and returns the reduced tensor."""

    def __init__(self, work: Any, buf: Any, divisor: int) -> None:
        self.work, self.buf, self.divisor = work, buf, divisor

    def wait(self) -> Any:
        """The reduced tensor (divided for a mean)."""
        self.work.wait()
        if self.divisor != 1:
            self.buf.div_(self.divisor)
        return self.buf
