"""The GPU check command as a dry run on this machine (no GPU): it skips the GPU steps and says so, runs the
training commands on NumPy and the benchmark in its smoke mode, writes its Markdown and JSON summaries, and
exits 0. Also the kernel counter of benchmarks/count_kernels.py on operations whose kernels are known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _gpu_here() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:
        return False


@pytest.mark.skipif(_gpu_here(), reason="a GPU is usable here: the dry run is forced below, the real run is manual")
def test_dry_run_without_a_gpu(tmp_path):
    pytest.importorskip("torch")
    out = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DRY RUN" in out.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    statuses = {s["step"]: s["status"] for s in report["steps"]}
    assert statuses.pop("tests on cupy, torch_cuda, jax_gpu") == "SKIPPED"
    assert set(statuses.values()) == {"PASS"}, statuses
    assert any("train spiral --backend numpy" in name for name in statuses)
    assert any("train mnist --data" in name for name in statuses)
    assert report["bench"]["smoke"] is True
    names = [r["workload"] for r in report["bench"]["rows"]]
    assert names == [
        *("chain-1e3", "chain-1e6", "mlp-b100", "mlp-b1000", "wide-b4096", "cnn-b128"),
        *("mlp-b100-captured", "mlp-b100-captured-plain", "cnn-b128-captured", "mlp-b100-vs-graph"),
        *("memory-chain-1e7", "wide-b4096 tf32", "cnn-b128 tf32"),
    ]
    assert set(report["kernels"]) == {"mlp", "cnn"}
    summary = (tmp_path / "gpu_check.md").read_text()
    assert summary.startswith("# xdezero GPU check") and "**DRY RUN**" in summary and "SKIPPED" in summary
    assert "SMOKE RUN on the CPU" in summary


@pytest.fixture
def counter():
    sys.path.insert(0, str(BENCH))
    try:
        import count_kernels

        c = count_kernels.KernelCounter()
        c.install()
        yield c
        c.uninstall()
    finally:
        sys.path.remove(str(BENCH))


def test_kernel_counter_counts_writes_not_views(counter):
    import array_api_strict as xs

    x = xs.asarray(np.arange(6.0))
    with counter.counting():
        y = xs.sin(x) * 1.01  # 2 kernels
        z = xs.reshape(y, (2, 3))  # a view: none
        w = z[0, :]  # a view: none
        w2 = xs.permute_dims(z, (1, 0))  # a view: none
        z += 1.0  # in place: 1
        s = xs.sum(z)  # 1
        e = xs.empty((3,))  # allocation only: none
        host = float(s)  # a host transfer, not a kernel
    assert counter.total == 4, counter.kernels
    assert dict(counter.kernels) == {"sin": 1, "__mul__": 1, "__iadd__": 1, "sum": 1}
    assert counter.host_transfers == 1
    assert (
        w.shape == (3,)
        and w2.shape == (3, 2)
        and e.shape == (3,)
        and host == pytest.approx(np.sum(np.sin(np.arange(6.0)) * 1.01) + 6)
    )


def test_kernel_counter_counts_a_fused_block_as_its_launches(counter):
    import array_api_strict as xs

    x = xs.asarray(np.arange(4.0))
    with counter.counting():
        with counter.as_kernels("sigmoid", 1):
            y = xs.tanh(x * 0.5) * 0.5 + 0.5  # four operations, one launch
        y = y * 2  # 1
    assert dict(counter.kernels) == {"fused sigmoid": 1, "__mul__": 1}
