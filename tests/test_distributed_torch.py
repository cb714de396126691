"""Data-parallel training over torch.distributed (gloo on the CPU) under `torchrun --standalone`."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from tests.distributed_scripts.launch import SCRIPTS, python, result_of, run, without_timing

pytest.importorskip("torch.distributed")


def torchrun(n: int, *args: str, timeout: float = 180):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *args]
    return run(command, timeout)


def test_collectives_of_every_kind_over_gloo():
    result = torchrun(2, str(SCRIPTS / "check_api.py"))  # "auto" finds torchrun
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "2"]


def test_training_on_two_ranks_ends_with_the_parameters_of_one_process(tmp_path):
    single = python(str(SCRIPTS / "train_spiral.py"), "--comm", "single", "--out", str(tmp_path / "one.npz"))
    assert single.returncode == 0, single.stderr
    result = torchrun(2, str(SCRIPTS / "train_spiral.py"), "--comm", "torch", "--out", str(tmp_path / "two.npz"))
    assert result.returncode == 0, result.stderr
    assert result_of(result.stdout)["size"] == 2
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        for key in one.files:
            np.testing.assert_allclose(two[key], one[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_a_rank_raising_ends_the_job_within_seconds(tmp_path):
    args = ["--steps", "1000000", "--fail-at", "5", "--out", str(tmp_path / "p")]
    start = time.monotonic()
    result = torchrun(2, str(SCRIPTS / "train_spiral.py"), *args, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "uncaught exception on rank 1 of 2" in result.stderr
    assert "RuntimeError: deliberate failure on rank 1 at step 5" in result.stderr
    assert elapsed < 60, f"the job took {elapsed:.1f} s to end"
    assert not (tmp_path / "p.npz").exists()


def test_cli_trains_torch_tensors_under_torchrun():
    args = ["train", "spiral", "--epochs", "3", "--backend", "torch"]
    single = python("-m", "xdezero", *args)
    assert single.returncode == 0, single.stderr
    parallel = torchrun(2, "-m", "xdezero", *args)
    assert parallel.returncode == 0, parallel.stderr
    header, _, rest = parallel.stdout.partition("\n")
    assert header.endswith(", 2 processes (torch)")
    assert without_timing(rest) == without_timing(single.stdout.partition("\n")[2])


def test_an_unmatched_collective_times_out_with_an_error():
    # Rank 1 sleeps for a minute instead of joining rank 0's second all-reduce; a 10 s time-out ends the job.
    start = time.monotonic()
    result = torchrun(2, str(SCRIPTS / "unmatched.py"), "torch", "10", timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "uncaught exception on rank 0 of 2" in result.stderr
    assert "Timed out" in result.stderr
    assert elapsed < 45, f"the job took {elapsed:.1f} s to end"


def test_gradient_buckets_reduced_during_backward_over_gloo():
    """Overlapped buckets equal the sequential all-reduce; no_sync; float16 exchange (check_buckets.py)."""
    result = torchrun(2, str(SCRIPTS / "check_buckets.py"), "torch")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "2"]


def test_captured_steps_over_gloo():
    """The exchange is one op of a captured step, replayed by every rank (check_capture.py)."""
    result = torchrun(2, str(SCRIPTS / "check_capture.py"), "torch")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "2"]
