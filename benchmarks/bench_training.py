"""One training step (forward, loss, backward, SGD update): xdezero side by side with PyTorch eager.

    python benchmarks/bench_training.py                  # CPU: xdezero on NumPy vs torch CPU
    python benchmarks/bench_training.py --device cuda    # GPU: xdezero on CuPy vs torch CUDA
    python benchmarks/bench_training.py --threads 0      # leave both libraries' thread counts alone
    python benchmarks/bench_training.py --only cnn-28    # one CPU workload

Workloads (float32, sigmoid hidden layers, softmax cross-entropy, SGD lr=0.1)
  cpu   mlp-spiral   2 → 1000 → 3, batch 300 (the spiral data set)
  cpu   cnn-28       conv 3×3 1→16, relu, conv 3×3 16→32, relu, max pooling 2×2, linear → 10; batch 64 of 28×28
  cuda  mlp-mnist    784 → 1000 → 1000 → 10, batch 100
  cuda  wide-4096    4096 → 4096 (one linear layer, 4096 classes), batch 4096

Each number is the median over repeats of the time of one step, in µs; `ratio` is xdezero / torch.
By default both libraries run with one CPU thread (`--threads 1`), so the comparison measures the frameworks
rather than thread scheduling, and the two are timed in one process, one step each in turn. With more CPU
threads each framework runs in its own processes instead (three rounds, alternating): in one process, the idle
worker threads of one library (OpenMP in torch, OpenBLAS in NumPy) keep spinning after their last call and slow
the other's. Those processes run with glibc's mmap threshold pinned at 32 MiB (`--malloc pinned`, the default;
see bench_functions.py), so that large temporaries are reused from the heap in both; `--malloc default` leaves
glibc as a user starts it. Set the thread count before NumPy's BLAS starts, i.e. here, on the command line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from _harness import PINNED_MALLOC, interleaved_medians, run_python
from _workloads import CNN, data, torch_step, xdezero_step


def _set_threads(n: int) -> None:
    # Must happen before NumPy (and its BLAS) is imported.
    if n > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)


def _require_gpu() -> None:
    from xdezero.backends import is_cupy_available

    problems = []
    if not is_cupy_available():
        problems.append("CuPy with a usable CUDA device (cupy.cuda.is_available())")
    try:
        import torch

        if not torch.cuda.is_available():
            problems.append("a CUDA build of torch that sees the GPU (torch.cuda.is_available())")
    except ImportError:
        problems.append("torch")
    if problems:
        sys.exit("bench_training --device cuda needs " + " and ".join(problems) + "; none found here")


CPU_WORKLOADS = {"mlp-spiral": ((2, 1000, 3), 300, True), "cnn-28": (CNN, 64, False)}


def _separate_medians(name: str, args: argparse.Namespace) -> list[float]:
    """Median µs per step of xdezero and torch, each timed alone in its own processes, alternating rounds."""
    times = {"xdezero": [], "torch": []}
    for _ in range(3):
        for framework in times:
            env = {"GLIBC_TUNABLES": PINNED_MALLOC} if args.malloc == "pinned" else None
            cmd = ["--threads", str(args.threads), "--repeats", str(args.repeats), "--worker", framework, name]
            times[framework].append(float(run_python(__file__, *cmd, env=env)))
    return [statistics.median(ts) for ts in times.values()]


def _worker(framework: str, name: str, repeats: int, threads: int) -> None:
    sizes, batch, spiral = CPU_WORKLOADS[name]
    x, t = data(sizes, batch, spiral)
    if framework == "torch":
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        step = torch_step(sizes, x, t, "cpu")
    else:
        step = xdezero_step(sizes, x, t)
    (median,) = interleaved_medians([step], [lambda: None], repeats, max(5, repeats // 10))
    print(median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=200, help="timed steps per workload (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for NumPy and torch (0: defaults)")
    parser.add_argument("--malloc", choices=["pinned", "default"], default="pinned", help="see above")
    parser.add_argument("--only", choices=list(CPU_WORKLOADS), help="run one CPU workload")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _set_threads(args.threads)
    if args.worker:
        _worker(*args.worker, args.repeats, args.threads)
        return

    if args.device == "cuda":
        _require_gpu()
        import cupy
        import torch

        from xdezero.backends import to_gpu as move

        workloads = [("mlp-mnist", (784, 1000, 1000, 10), 100, False), ("wide-4096", (4096, 4096), 4096, False)]

        def sync_ours():
            cupy.cuda.Device().synchronize()

        sync_torch = torch.cuda.synchronize
    else:
        move = None
        workloads = [(name, *spec) for name, spec in CPU_WORKLOADS.items() if args.only in (None, name)]

        def sync_ours():
            pass

        sync_torch = sync_ours

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    print(f"device={args.device} threads={args.threads or 'default'} repeats={args.repeats} (median µs per step)")
    print(f"{'workload':28} {'xdezero':>10} {'torch':>10} {'ratio':>7}")
    for name, sizes, batch, spiral in workloads:
        if args.device == "cpu" and args.threads != 1:
            print(f"(each framework in its own processes, malloc {args.malloc})")
            ours, ref = _separate_medians(name, args)
        else:
            x, t = data(sizes, batch, spiral)
            ours_step = xdezero_step(sizes, x, t, move)
            ref_step = torch_step(sizes, x, t, "cuda" if args.device == "cuda" else "cpu")
            warmup = max(5, args.repeats // 10)
            ours, ref = interleaved_medians([ours_step, ref_step], [sync_ours, sync_torch], args.repeats, warmup)
        label = f"{name} {'→'.join(map(str, sizes)) if sizes != CNN else '28×28'} b{batch}"
        print(f"{label:28} {ours:10.1f} {ref:10.1f} {ours / ref:7.2f}")


if __name__ == "__main__":
    main()
