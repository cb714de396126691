"""The GPU check: one command that verifies xdezero on a GPU machine in under 8 minutes.

    python benchmarks/gpu_check.py                   # on a GPU machine; results in ./gpu-check/
    python benchmarks/gpu_check.py --out DIR --full  # the whole test suite, slow tests and all
    python benchmarks/gpu_check.py --dry-run         # what a CPU machine does anyway: GPU steps skipped

Steps (each with its own time limit, with the probes 8 minutes at most; one failing does not stop the others):
  1. the test suite on the GPU backends of the `xp` fixture (XDEZERO_BACKENDS=cupy,torch_cuda,jax_gpu, the
     ones usable here), with the quick Hypothesis profile and without the tests marked slow (--full: with them)
  2. `xdezero train spiral --backend cupy`
  3. `xdezero train mnist --backend cupy` on a generated MNIST-format data set (--data)
  4. benchmarks/bench_gpu.py --tf32: xdezero on CuPy against PyTorch eager CUDA, as ratios
  5. benchmarks/count_kernels.py: kernels per MLP and CNN step, portable and fused (CPU only; always runs)
It writes DIR/gpu_check.md (the summary) and DIR/gpu_check.json, and exits 1 when a step that ran failed.

Without a GPU (or with --dry-run) it is a dry run: the test step is skipped, and says why; the two training
commands run on NumPy and the benchmark in its --smoke mode on the CPU, so that every command line is still
exercised; the summary says DRY RUN at the top, and the exit status is 0 when those pass.
Offline use (no package registry on the GPU machine): see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

# Each probe prints one line when the backend is usable and raises otherwise; run in a fresh process so that
# this one never holds GPU memory (JAX preallocates most of it) or a CUDA context.
PROBES = {
    "cupy": "import cupy; assert cupy.cuda.is_available(), 'cupy.cuda.is_available() is False'; "
    "print('cupy', cupy.__version__, cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())",
    "torch_cuda": "import torch; assert torch.cuda.is_available(), 'torch.cuda.is_available() is False'; "
    "print('torch', torch.__version__, torch.cuda.get_device_name(0))",
    "jax_gpu": "import jax; d = jax.devices('gpu'); print('jax', jax.__version__, d[0].device_kind)",
}
GPU_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # JAX and CuPy share the GPU within one pytest process


def probe(name: str) -> tuple[bool, str]:
    """(usable, the probe's line or the reason it is not)."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", PROBES[name]], capture_output=True, text=True, timeout=20, env=_env(GPU_ENV)
        )
    except subprocess.TimeoutExpired:
        return False, "the probe took over 20 s"
    if out.returncode == 0:
        return True, out.stdout.strip().splitlines()[-1]
    lines = (out.stderr or out.stdout).strip().splitlines()
    return False, lines[-1] if lines else f"exit status {out.returncode}"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    # `python -m xdezero` and the tests import the xdezero of this checkout, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def write_mnist(folder: Path, n_train: int, n_test: int) -> None:
    """MNIST's IDX files (gzip) with a learnable pattern: a bright bar whose row encodes the label, over noise."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(k.to_bytes(4, "big") for k in array.shape)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes(), mtime=0))


def run_step(
    name: str, command: list[str], timeout: int, env: dict[str, str] | None = None, log: Path | None = None
) -> dict:
    """Run one step; its record: status PASS/FAIL, seconds, the command and the tail of its output. With `log`,
    the output streams into that file as it comes (a step stopped at its time limit keeps what it printed)."""
    print(f"--> {name}: {' '.join(command)}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") if log is None else open(log, "w+") as sink:
        # its own process group, so that a time limit also stops its children (pytest-xdist's workers)
        child = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env(env), start_new_session=True
        )
        try:
            status = "PASS" if child.wait(timeout=timeout) == 0 else "FAIL"
            stopped = ""
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            status, stopped = "FAIL", f"\n... stopped after {timeout} s (time limit)"
        sink.seek(0)
        output = sink.read() + stopped
    seconds = time.perf_counter() - t0
    tail = "\n".join(output.strip().splitlines()[-25:])
    print(f"    {status} in {seconds:.0f} s", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 1), "command": command, "output_tail": tail}


def skipped(name: str, reason: str) -> dict:
    print(f"--> {name}: SKIPPED ({reason})", flush=True)
    return {"step": name, "status": "SKIPPED", "seconds": 0.0, "command": None, "output_tail": reason}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-check", help="folder for the results (default ./gpu-check)")
    parser.add_argument("--dry-run", action="store_true", help="skip the GPU even where there is one")
    parser.add_argument("--full", action="store_true", help="the whole test suite, slow tests and default profile")
    parser.add_argument(
        "--workers", type=int, default=None, help="pytest-xdist workers for the tests (default: up to 12, if installed)"
    )
    parser.add_argument("--test-timeout", type=int, default=200, help="seconds for the test step (default 200)")
    parser.add_argument("--no-kernel-count", action="store_true", help="skip count_kernels.py (CPU only anyway)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable

    backends = {} if args.dry_run else {name: probe(name) for name in PROBES}
    usable = [name for name, (ok, _) in backends.items() if ok]
    gpu = "cupy" in usable
    dry = not gpu
    why_dry = "--dry-run was given" if args.dry_run else "CuPy sees no usable GPU here: " + backends["cupy"][1]
    if dry:
        print(f"DRY RUN: {why_dry}. GPU steps are skipped; the commands run on the CPU instead.", flush=True)
    steps = []

    if usable:
        env = {**GPU_ENV, "XDEZERO_BACKENDS": ",".join(usable)}
        command = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
        if not args.full:
            env["XDEZERO_HYPOTHESIS_PROFILE"] = "quick"
            command[4:4] = ["-m", "not slow"]
        workers = _workers(args.workers)
        if workers > 1:
            command[4:4] = ["-n", str(workers)]
        # a line per failure and per skip reason at the end; pytest-benchmark (on some GPU images) warns
        # under pytest-xdist, and the suite turns warnings into errors
        command[4:4] = ["-rfEs", "-v", "-p", "no:benchmark"]
        steps.append(run_step(f"tests on {', '.join(usable)}", command, args.test_timeout, env, log=out / "tests.log"))
    else:
        steps.append(
            skipped("tests on cupy, torch_cuda, jax_gpu", "no GPU backend is usable here" + _reasons(backends))
        )

    backend = "numpy" if dry else "cupy"
    label = " (dry run: on numpy)" if dry else ""
    steps.append(
        run_step(
            f"xdezero train spiral --backend {backend}{label}",
            [py, "-m", "xdezero", "train", "spiral", "--backend", backend, "--epochs", "2" if dry else "100", "-q"],
            40,
        )
    )
    data = Path(tempfile.mkdtemp(prefix="xdezero-mnist-"))  # not in `out`: only the results travel back
    write_mnist(data, 200 if dry else 6000, 50 if dry else 1000)
    mnist = [py, "-m", "xdezero", "train", "mnist", "--data", str(data), "--backend", backend]
    steps.append(
        run_step(
            f"xdezero train mnist --data (generated) --backend {backend}{label}",
            [*mnist, "--epochs", "1" if dry else "3", "--batch-size", "50" if dry else "100", "-q"],
            40,
        )
    )
    if not dry:  # the CNN and the captured step, on the GPU only (the CPU runs them in the test suite)
        steps.append(
            run_step(
                "xdezero train mnist --model cnn --backend cupy",
                [*mnist, "--model", "cnn", "--epochs", "1", "--batch-size", "100", "-q"],
                60,
            )
        )
        steps.append(
            run_step(
                "xdezero train mnist --backend cupy --capture",
                [*mnist, "--epochs", "3", "--batch-size", "100", "--capture", "-q"],
                40,
            )
        )
        steps.append(
            run_step(
                "xdezero train spiral --backend cupy --capture",
                [py, "-m", "xdezero", "train", "spiral", "--backend", "cupy", "--epochs", "100", "--capture", "-q"],
                40,
            )
        )

    bench_json, bench_md = out / "bench_gpu.json", out / "bench_gpu.md"
    bench = [py, str(BENCH / "bench_gpu.py"), "--tf32", "--json", str(bench_json), "--markdown", str(bench_md)]
    if dry:
        bench.append("--smoke")
    steps.append(run_step("bench_gpu.py" + (" --smoke (dry run: CPU, shrunken sizes)" if dry else ""), bench, 110))

    kernels_json = out / "kernels.json"
    if not args.no_kernel_count:
        command = [py, str(BENCH / "count_kernels.py"), "--json", str(kernels_json)]
        steps.append(run_step("count_kernels.py (CPU)", command + (["--batch", "8"] if dry else []), 30))

    report = {
        "dry_run": dry,
        "dry_run_reason": why_dry if dry else None,
        "python": platform.python_version(),
        "machine": _nvidia_smi(),
        "backends": {name: {"usable": ok, "detail": detail} for name, (ok, detail) in backends.items()},
        "steps": steps,
        "bench": _load(bench_json),
        "kernels": _load(kernels_json),
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(summary(report, bench_md))
    failed = [s["step"] for s in steps if s["status"] == "FAIL"]
    print(f"summary: {out / 'gpu_check.md'}; {'FAILED: ' + ', '.join(failed) if failed else 'no step failed'}")
    return 1 if failed else 0


def _workers(asked: int | None) -> int:
    """pytest-xdist workers: as asked, else up to 12 (one per core) when pytest-xdist is installed, else 1."""
    if asked is not None:
        return asked
    try:
        import xdist  # noqa: F401
    except ImportError:
        return 1
    return max(1, min(12, os.cpu_count() or 1))


def _reasons(backends: dict) -> str:
    return "".join(f"; {name}: {detail}" for name, (_, detail) in backends.items())


def _nvidia_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "nvidia-smi found no GPU"
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi"


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def summary(report: dict, bench_md: Path) -> str:
    lines = ["# xdezero GPU check", ""]
    if report["dry_run"]:
        lines += [f"**DRY RUN** — {report['dry_run_reason']}. GPU steps were skipped; the commands ran on the CPU.", ""]
    lines += [f"Python {report['python']}; {report['machine']}", ""]
    for name, b in report["backends"].items():
        lines.append(f"- {name}: {'usable' if b['usable'] else 'not usable'} ({b['detail']})")
    lines += ["", "| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in report["steps"]]
    if bench_md.exists():
        lines += ["", bench_md.read_text()]
    if report["kernels"]:
        lines += ["", "### Kernels per step (counted on the CPU)", "", "| workload | portable | fused (as on CuPy) |"]
        lines += ["|---|---:|---:|"]
        lines += [f"| {k} | {v['portable']} | {v['fused']} |" for k, v in report["kernels"].items()]
    for s in report["steps"]:
        if s["status"] == "FAIL":
            lines += ["", f"### {s['step']}: FAIL", "", "```", s["output_tail"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
