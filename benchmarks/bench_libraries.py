"""One training step on each array library's arrays, side by side with PyTorch eager on the CPU.

    python benchmarks/bench_libraries.py                       # every workload on numpy, torch and jax
    python benchmarks/bench_libraries.py --libraries torch --only cnn-28 --rounds 5
    python benchmarks/bench_libraries.py --captured             # xdezero's steps through xdezero.capture

The same step as bench_training.py (forward, softmax cross-entropy, backward, SGD lr=0.1, float32), with the
data and parameters moved to the library's arrays by `to_library`. One CPU thread for every library. Each
(framework, workload) runs in its own fresh process, rounds alternate between the frameworks, and each number
is the median over rounds of the median µs per step within a round; `ratio` is xdezero / PyTorch eager.

Workloads
  mlp-small   2 → 10 → 3, batch 30 (the spiral data set; the step is all overhead)
  cnn-28      conv 3×3 1→16, relu, conv 3×3 16→32, relu, max pooling 2×2, linear → 10; batch 64 of 28×28
  mlp-mnist   784 → 1000 → 1000 → 10, batch 100
  mlp-wide    2 → 1000 → 3, batch 300 (the spiral data set)
"""

from __future__ import annotations

import argparse
import os
import statistics

from _harness import PINNED_MALLOC, interleaved_medians, run_python
from _workloads import CNN, data, torch_step, xdezero_step

WORKLOADS = {
    "mlp-small": ((2, 10, 3), 30, True, 2000),
    "cnn-28": (CNN, 64, False, 60),
    "mlp-mnist": ((784, 1000, 1000, 10), 100, False, 100),
    "mlp-wide": ((2, 1000, 3), 300, True, 500),
}
LIBRARIES = ("numpy", "torch", "jax")


def _one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


def _worker(framework: str, name: str, scale: float, captured: bool) -> None:
    sizes, batch, spiral, repeats = WORKLOADS[name]
    repeats = max(10, int(repeats * scale))
    x, t = data(sizes, batch, spiral)
    import torch

    torch.set_num_threads(1)
    if framework == "pytorch":
        step = torch_step(sizes, x, t, "cpu")
    else:
        from xdezero.backends import to_library

        library = framework.removeprefix("xdezero-")
        move = None if library == "numpy" else (lambda a: to_library(a, library))
        step = xdezero_step(sizes, x, t, move, capture=captured)
    (median,) = interleaved_medians([step], [lambda: None], repeats, max(5, repeats // 10))
    print(median)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated, of: numpy,torch,jax")
    parser.add_argument("--only", choices=list(WORKLOADS), help="run one workload")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per framework (default 3)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the timed steps per process")
    parser.add_argument(
        "--captured", action="store_true", help="xdezero's step through xdezero.capture (JAX: one jax.jit function)"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _one_thread()
    if args.worker:
        _worker(*args.worker, args.scale, args.captured)
        return
    libraries = [name for name in args.libraries.split(",") if name]
    for name in libraries:
        if name not in LIBRARIES:
            parser.error(f"unknown library {name!r}; accepted: {', '.join(LIBRARIES)}")
    how = "captured xdezero steps" if args.captured else "eager steps"
    print(f"one thread each, {args.rounds} rounds of fresh processes, median µs per step; {how} / PyTorch eager")
    print(f"{'workload':12} {'library':8} {'xdezero':>10} {'pytorch':>10} {'ratio':>7}")
    for name in [args.only] if args.only else WORKLOADS:
        frameworks = ["pytorch"] + [f"xdezero-{library}" for library in libraries]
        times: dict[str, list[float]] = {f: [] for f in frameworks}
        for _ in range(args.rounds):
            for framework in frameworks:
                cmd = [
                    "--scale",
                    str(args.scale),
                    *(["--captured"] if args.captured else []),
                    "--worker",
                    framework,
                    name,
                ]
                times[framework].append(float(run_python(__file__, *cmd, env={"GLIBC_TUNABLES": PINNED_MALLOC})))
        reference = statistics.median(times["pytorch"])
        for library in libraries:
            ours = statistics.median(times[f"xdezero-{library}"])
            print(f"{name:12} {library:8} {ours:10.1f} {reference:10.1f} {ours / reference:7.2f}", flush=True)


if __name__ == "__main__":
    main()
