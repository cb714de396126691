"""NCCL through CuPy: runs only where CuPy sees a GPU and mpi4py is installed (one GPU: a 1-rank job)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.distributed_scripts.launch import SCRIPTS, run
from xdezero.backends import is_cupy_available

pytest.importorskip("mpi4py")
if not is_cupy_available():
    pytest.skip("no usable CuPy GPU here: the NCCL communicator needs one", allow_module_level=True)


def test_one_rank_allreduces_cupy_gradients():
    mpiexec = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    launcher = [mpiexec, "-n", "1"] if mpiexec else []  # mpi4py can also start a lone process by itself
    result = run([*launcher, sys.executable, str(SCRIPTS / "check_nccl.py")], timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "1"]
