"""Gradient buckets all-reduced while backward runs, over MPI on 1 to 3 ranks (distributed_scripts/check_buckets.py:
overlapped equals sequential at rtol 1e-12 in float64 with stale and unused parameters, no_sync, float16 exchange),
and the options' errors in one process."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import xdezero.functions as F
import xdezero.layers as L
from tests.distributed_scripts.launch import SCRIPTS, run
from xdezero import distributed as dist
from xdezero import optimizers

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_buckets_over_mpi(n):
    pytest.importorskip("mpi4py")
    if MPIEXEC is None:
        pytest.skip("mpi4py is installed but no mpiexec was found (pip install mpich)")
    result = run([MPIEXEC, "-n", str(n), sys.executable, str(SCRIPTS / "check_buckets.py"), "mpi"], 180, None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(n)]


def test_the_options_are_checked():
    comm = dist.SingleCommunicator()
    with pytest.raises(ValueError, match="allreduce_grad_dtype must be None, 'float16' or 'bfloat16', got 'int8'"):
        dist.create_multi_node_optimizer(optimizers.SGD(), comm, allreduce_grad_dtype="int8")
    with pytest.raises(ValueError, match="bucket_mb must be a positive number of MiB, got 0"):
        dist.create_multi_node_optimizer(optimizers.SGD(), comm, bucket_mb=0)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(), comm, allreduce_grad_dtype=np.float16)
    assert opt._grad_dtype == "float16"


def test_update_inside_no_sync_is_an_error_that_loses_nothing():
    model = L.Linear(2, in_size=3)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr=0.1), dist.SingleCommunicator()).setup(model)
    before = np.array(model.W.data)
    with opt.no_sync():
        F.sum(model(np.ones((1, 3)))).backward()
        with pytest.raises(RuntimeError, match=r"inside no_sync\(\), where gradients are only accumulated"):
            opt.update()
    np.testing.assert_array_equal(model.W.data, before)
    grad = np.array(model.W.grad.data)
    F.sum(model(np.ones((1, 3)))).backward()
    np.testing.assert_allclose(model.W.grad.data, 2 * grad)  # accumulated over both micro-batches
    opt.update()
    np.testing.assert_allclose(model.W.data, before - 0.1 * 2 * grad)
