"""Data-parallel training under `mpiexec -n N` (mpi4py + an MPI runtime, e.g. `pip install mpi4py mpich`).

Every test starts its own MPI job in a subprocess with a time-out, so a hang fails the test instead of CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.distributed_scripts.launch import SCRIPTS, child_env, python, result_of, run, without_timing

pytest.importorskip("mpi4py")

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
if MPIEXEC is None:
    pytest.skip("mpi4py is installed but no mpiexec was found (pip install mpich)", allow_module_level=True)


def mpirun(n: int, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([MPIEXEC, "-n", str(n), *args], timeout, env)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_collectives_of_every_kind(n):
    result = mpirun(n, sys.executable, str(SCRIPTS / "check_api.py"), "mpi")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(n)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single") / "params.npz"
    result = python(str(SCRIPTS / "train_spiral.py"), "--comm", "single", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with np.load(out) as f:
        return {"params": dict(f), **result_of(result.stdout)}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_training_on_n_ranks_ends_with_the_parameters_of_one_process(n, one_process, tmp_path):
    out = tmp_path / "params.npz"
    result = mpirun(n, sys.executable, str(SCRIPTS / "train_spiral.py"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = result_of(result.stdout)
    assert summary["size"] == n and summary["skipped"] == 0
    with np.load(out) as f:
        assert sorted(f.files) == sorted(one_process["params"])
        for key, value in one_process["params"].items():
            np.testing.assert_allclose(f[key], value, rtol=1e-9, atol=1e-12, err_msg=key)
    assert summary["accuracy"] == pytest.approx(one_process["accuracy"], rel=1e-9)
    assert summary["loss"] == pytest.approx(one_process["loss"], rel=1e-9)


def test_lazy_parameters_created_differently_are_broadcast(tmp_path):
    # Each rank seeds NumPy with its rank: the lazily created weights differ until the first update broadcasts
    # them; that step's gradients belong to different models, so it is skipped (the script checks that every
    # rank ends with identical parameters).
    result = mpirun(
        2, sys.executable, str(SCRIPTS / "train_spiral.py"), "--seed-per-rank", "--out", str(tmp_path / "p")
    )
    assert result.returncode == 0, result.stderr
    assert result_of(result.stdout)["skipped"] == 1


def test_a_rank_raising_ends_the_job_within_seconds(tmp_path):
    # A million steps would take many minutes; rank 1 raises at step 5 while rank 0 waits in the all-reduce.
    args = ["--steps", "1000000", "--fail-at", "5", "--fail-rank", "1", "--out", str(tmp_path / "p")]
    start = time.monotonic()
    result = mpirun(2, sys.executable, str(SCRIPTS / "train_spiral.py"), *args, timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "uncaught exception on rank 1 of 2" in result.stderr
    assert "RuntimeError: deliberate failure on rank 1 at step 5" in result.stderr
    assert elapsed < 20, f"the job took {elapsed:.1f} s to end"


def test_an_unmatched_collective_times_out_and_ends_the_job():
    # Rank 1 sleeps for a minute instead of joining rank 0's second all-reduce; a 3 s time-out ends the job.
    start = time.monotonic()
    result = mpirun(2, sys.executable, str(SCRIPTS / "unmatched.py"), "mpi", "3", timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "an all-reduce on rank 0 of 2 did not complete within 3 s" in result.stderr
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"


def test_a_collective_slower_than_nothing_but_within_the_time_out_completes():
    # Rank 1 joins the second all-reduce after 2 s; a 6 s time-out lets both finish normally.
    result = mpirun(2, sys.executable, str(SCRIPTS / "unmatched.py"), "mpi", "6", "--late", "2", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "did not complete" not in result.stderr


def _xdezero() -> list[str]:
    script = shutil.which("xdezero", path=str(BIN))
    return [script] if script else [sys.executable, "-m", "xdezero"]


@pytest.mark.parametrize(("n", "batch", "capture"), [(2, "30", []), (3, "32", []), (3, "32", ["--capture"])])
def test_cli_trains_data_parallel_like_one_process(n, batch, capture, tmp_path):
    args = ["train", "spiral", "--epochs", "5", "--batch-size", batch]
    single = python("-m", "xdezero", *args)
    assert single.returncode == 0, single.stderr
    parallel = mpirun(n, *_xdezero(), *args, *capture, "--save", str(tmp_path / "w.npz"))
    assert parallel.returncode == 0, parallel.stderr
    header, _, rest = parallel.stdout.partition("\n")
    assert header.endswith(f", {n} processes (mpi)")
    # Printed once; the same batches in the same order, so the same losses and accuracies (the 32 examples of
    # a batch split 11/11/10 over 3 ranks still give the gradient of the whole batch).
    wrote = f"wrote {tmp_path / 'w.npz'} and {tmp_path / 'w.json'}\n"
    assert without_timing(rest) == without_timing(single.stdout.partition("\n")[2]) + wrote
    assert (tmp_path / "w.npz").exists() and not list(tmp_path.glob(".*.tmp"))


def test_cli_usage_errors_are_said_once():
    result = mpirun(2, *_xdezero(), "train", "spiral", "--batch-size", "1")
    assert result.returncode == 2
    assert result.stderr.count("xdezero: error: --batch-size 1 is the global batch") == 1


def test_cli_trains_mnist_under_mpiexec(tmp_path):
    from tests.test_cli import fake_mnist

    fake_mnist(tmp_path)
    env = child_env(XDEZERO_DATA_DIR=str(tmp_path))
    args = ["train", "mnist", "--data", str(tmp_path), "--epochs", "2", "--hidden", "20", "--batch-size", "50"]
    single = python("-m", "xdezero", *args, env=env)
    assert single.returncode == 0, single.stderr
    parallel = mpirun(2, *_xdezero(), *args, env=env)
    assert parallel.returncode == 0, parallel.stderr
    assert "MNIST (200 images)" in parallel.stdout
    assert without_timing(parallel.stdout.partition("\n")[2]) == without_timing(single.stdout.partition("\n")[2])


@pytest.mark.parametrize("n", [2, 3])
def test_a_job_resumed_from_a_checkpoint_goes_on_as_the_straight_run(n, tmp_path):
    """8 steps straight, or 5 steps, a checkpoint written by rank 0, and 3 in a new job: every rank resumes its
    own loader (its shard, its order, mid-epoch) and its own random stream, so the parameters, each rank's last
    batch and each rank's next random number are those of the straight run."""
    script = str(SCRIPTS / "resume_ranks.py")
    checkpoint = tmp_path / "c.npz"
    for args in (
        ["8", str(tmp_path / "straight.npz")],
        ["5", str(tmp_path / "first.npz"), "--checkpoint", str(checkpoint)],
        ["3", str(tmp_path / "resumed.npz"), "--resume", str(checkpoint)],
    ):
        result = mpirun(n, sys.executable, script, *args)
        assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "straight.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    result = mpirun(n + 1, sys.executable, script, "1", str(tmp_path / "x.npz"), "--resume", str(checkpoint))
    assert result.returncode != 0
    assert f"the checkpoint was saved by {n} process(es); this job has {n + 1}" in result.stderr


def test_dropped_or_closed_communicators_leave_no_thread_and_are_freed():
    # 200 communicators over duplicates of COMM_WORLD on each rank: each one's watchdog thread must end, and the
    # thread must not keep the communicator alive; the script also checks the watchdog alone.
    result = mpirun(2, sys.executable, str(SCRIPTS / "lifetime.py"), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]
