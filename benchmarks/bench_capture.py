"""A captured training step (`xdezero.capture`) against the same step eager, and against PyTorch eager (CPU).

    python benchmarks/bench_capture.py                # one thread each, 500 timed steps per workload
    python benchmarks/bench_capture.py --threads 0    # leave both libraries' thread counts alone

Workloads (float32, sigmoid hidden layers, softmax cross-entropy, SGD lr=0.1; see _workloads.py)
  mlp-spiral   MLP 2 → 1000 → 3, batch 300 (the spiral data set)
  mlp-small    MLP 2 → 10 → 3, batch 30: Python overhead dominates
  cnn-28       conv 3×3 ×2, relu, max pooling, linear; batch 64 of 28×28
  chain        y = sin(y) * 1.01, 10,000 times on a 0-d float64 array, then backward: µs per op (fwd+bwd)

The three steps of a workload run in one process, one call of each in turn, so drifting load hits all three;
each number is the median over the repeats, in µs. The captured step has recorded before timing starts
(its first two calls). Ratios: captured / torch and eager / torch.
"""

from __future__ import annotations

import argparse
import os
import sys


def _set_threads(n: int) -> None:
    # Before NumPy's BLAS and torch start.
    if n > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)


WORKLOADS = {
    "mlp-spiral": ((2, 1000, 3), 300),
    "mlp-small": ((2, 10, 3), 30),
    "cnn-28": ("cnn", 64),
    "chain": (None, 10_000),
}


def _training_steps(name: str):
    """(eager xdezero, captured xdezero, torch) step functions of no arguments for a training workload."""
    from _workloads import CNN, data, torch_step, xdezero_step

    sizes, batch = WORKLOADS[name]
    sizes = CNN if sizes == "cnn" else sizes
    x, t = data(sizes, batch, spiral=name == "mlp-spiral")
    return xdezero_step(sizes, x, t), xdezero_step(sizes, x, t, capture=True), torch_step(sizes, x, t, "cpu")


def _chain_steps(n: int):
    import numpy as np
    import torch

    import xdezero
    import xdezero.functions as F

    def chain(x):
        x.cleargrad()
        y = x
        for _ in range(n):
            y = F.sin(y) * 1.01
        y.backward()
        return y

    x0 = xdezero.Variable(np.array(0.5))
    captured = xdezero.capture(lambda: chain(x0))

    def torch_chain():
        x = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        y = x
        for _ in range(n):
            y = torch.sin(y) * 1.01
        y.backward()

    return (lambda: chain(x0)), captured, torch_chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for NumPy and torch (0: defaults)")
    parser.add_argument("--repeats", type=int, default=500, help="timed steps per workload (default 500)")
    parser.add_argument("--only", choices=list(WORKLOADS), help="run one workload")
    args = parser.parse_args()
    _set_threads(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _harness import interleaved_medians

    print(f"threads={'default' if args.threads <= 0 else args.threads} (median µs per step; chain: per op)")
    print(f"{'workload':<12} {'eager':>10} {'captured':>10} {'torch':>10} {'captured/torch':>15} {'eager/torch':>12}")
    for name in [args.only] if args.only else WORKLOADS:
        if name == "chain":
            n = WORKLOADS[name][1]
            steps, repeats, per = _chain_steps(n), max(5, args.repeats // 50), n
        else:
            steps, repeats, per = _training_steps(name), args.repeats, 1
            if name == "cnn-28":
                repeats = max(10, args.repeats // 10)
        eager, captured, theirs = (m / per for m in interleaved_medians(steps, [lambda: None] * 3, repeats, 3))
        print(
            f"{name:<12} {eager:>10.2f} {captured:>10.2f} {theirs:>10.2f} {captured / theirs:>15.2f} "
            f"{eager / theirs:>12.2f}"
        )


if __name__ == "__main__":
    main()
