"""`create_communicator`: pick the transport by name, or from the launcher that started this process."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from xdezero.distributed.communicator import Communicator

__all__ = ["create_communicator", "detect_launcher"]

_NAMES = ("auto", "mpi", "nccl", "torch", "single")

# Variables that MPI launchers set in every process they start: Open MPI, MPICH/Intel MPI (Hydra's PMI),
# PMIx (Open MPI 5, Slurm --mpi=pmix), MVAPICH.
_MPI_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


def detect_launcher(environ: Mapping[str, str] | None = None) -> str:
    """'torch' under torchrun, 'mpi' under mpiexec/mpirun/srun with several tasks, else 'single'.

    torchrun is recognised by TORCHELASTIC_RUN_ID, or RANK + WORLD_SIZE + MASTER_ADDR; MPI by the variables
    its launchers set (PMI_RANK, PMI_SIZE, OMPI_COMM_WORLD_SIZE, PMIX_RANK, MV2_COMM_WORLD_SIZE), or by Slurm's
    SLURM_PROCID with SLURM_NTASKS > 1 (one task of a batch script alone is a single process).
    """
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env or all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
        return "torch"
    if any(k in env for k in _MPI_VARIABLES):
        return "mpi"
    if "SLURM_PROCID" in env and _int(env.get("SLURM_NTASKS", "1")) > 1:
        return "mpi"
    return "single"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 1


def create_communicator(name: str = "auto", **options: Any) -> Communicator:
    """A communicator of the transport `name`; `options` go to its constructor.

    - "auto": the launcher decides (`detect_launcher`): MPI under mpiexec/mpirun/srun, torch.distributed under
      torchrun, else a single-process communicator, so one script runs with or without a launcher;
    - "mpi": mpi4py, NumPy buffers (`MpiCommunicator`); "nccl": CuPy arrays over NCCL, bootstrapped over MPI
      (`NcclCommunicator`, untested: no GPU in CI); "torch": torch.distributed (`TorchCommunicator`);
      "single": one process, every collective the identity.

    Only the chosen transport's library is imported.
    """
    if name not in _NAMES:
        raise ValueError(f"create_communicator: unknown communicator {name!r}; choose one of {', '.join(_NAMES)}")
    if name == "auto":
        name = detect_launcher()
    if name == "mpi":
        from xdezero.distributed.mpi import MpiCommunicator

        return MpiCommunicator(**options)
    if name == "nccl":
        from xdezero.distributed.nccl import NcclCommunicator

        return NcclCommunicator(**options)
    if name == "torch":
        from xdezero.distributed.torch_distributed import TorchCommunicator

        return TorchCommunicator(**options)
    from xdezero.distributed.single import SingleCommunicator

    return SingleCommunicator(**options)
