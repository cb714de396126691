"""Starting the scripts of this folder in child processes, for the tests of xdezero.distributed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent

# Variables of an enclosing launcher would make a child job think it is part of ours.
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "MPI_", "HYDRA_", "SLURM_", "MV2_", "TORCHELASTIC_")
_TORCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK")


def child_env(**extra: str) -> dict:
    """This environment without launcher variables, with the repository importable and one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES) and k not in _TORCH_VARIABLES}
    path = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if os.geteuid() == 0:  # Open MPI's mpiexec refuses root (containers, GPU machines) unless told twice
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if shutil.which("ssh") is None and shutil.which("rsh") is None:
        # Open MPI's mpiexec looks for ssh or rsh at start-up even for ranks on this machine alone (MPICH does
        # not); without its rsh launcher it starts local ranks directly (open-mpi/ompi#12386)
        env["OMPI_MCA_plm"] = "^rsh"
    return dict(env, PYTHONPATH=path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)


def run(command: list[str], timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=env or child_env(), capture_output=True, text=True, timeout=timeout)


def python(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, *args], timeout, env)


def result_of(stdout: str) -> dict:
    """The JSON of the one `RESULT` line that rank 0 of train_spiral.py prints."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"expected one RESULT line (rank 0 only), got:\n{stdout}"
    return json.loads(lines[0][len("RESULT ") :])


def without_timing(stdout: str) -> str:
    return re.sub(r" in [0-9.]+ s", "", stdout)
