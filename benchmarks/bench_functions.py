"""Convolution, pooling and loss: xdezero (NumPy) side by side with PyTorch eager (CPU), forward + backward.

    PYTHONPATH=. python benchmarks/bench_functions.py            # all workloads
    PYTHONPATH=. python benchmarks/bench_functions.py --quick    # fewer repeats

Workloads (float32)
  conv2d         x (32, 16, 32, 32), W (32, 16, 3, 3), b (32,), stride 1, pad 1
  max pooling    2x2, stride 2, on the conv2d output (32, 32, 32, 32)
  softmax-ce     softmax_cross_entropy on (1000, 100) logits with int64 labels
Each cell is the median (and the min) wall time of forward + backward. Every round runs each framework in a
fresh process, alternating: in one process the idle worker threads of one library (OpenMP in torch, OpenBLAS in
NumPy) keep spinning after their last call and slow the other library's threads several-fold. torch runs with as
many intra-op threads as NumPy's BLAS uses (threadpoolctl when installed, else OPENBLAS/OMP_NUM_THREADS, else the
CPU count).

Each table is measured twice, under two glibc malloc settings:
  default   the process as a user starts it. glibc maps every allocation at or above its mmap threshold afresh
            and unmaps it on free, so a large temporary costs page faults on every call.
  pinned    GLIBC_TUNABLES fixes the mmap threshold at 32 MiB (and the trim threshold at 64 MiB), the state glibc
            reaches by itself once a process has freed one array of 32 MiB or more. Large temporaries are then
            reused from the heap: each library at its best.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import numpy as np
from _harness import PINNED_MALLOC, run_python, wall_times


def _times(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall time in ms; the min shows the cost without interference from other processes."""
    for _ in range(3):  # warm-up (allocator, lazy imports, BLAS threads)
        fn()
    times = wall_times(fn, repeats)
    return statistics.median(times) * 1e3, min(times) * 1e3


def _blas_threads() -> tuple[int, str]:
    try:
        from threadpoolctl import threadpool_info

        blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if blas:
            return int(blas[0]["num_threads"]), f"threadpoolctl ({blas[0].get('internal_api')})"
    except ImportError:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            return int(os.environ[var]), var
    return os.cpu_count() or 1, "os.cpu_count() (OpenBLAS default)"


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((32, 16, 32, 32), dtype=np.float32),
        "W": (rng.standard_normal((32, 16, 3, 3), dtype=np.float32) * 0.1).astype(np.float32),
        "b": rng.standard_normal(32, dtype=np.float32),
        "h": rng.standard_normal((32, 32, 32, 32), dtype=np.float32),
        "logits": rng.standard_normal((1000, 100), dtype=np.float32),
        "labels": rng.integers(0, 100, size=1000),
    }


# --- workloads ---------------------------------------------------------------------------------------


def xdezero_workloads(d):
    import xdezero.functions as F
    from xdezero import Variable

    def conv():
        x, W, b = Variable(d["x"]), Variable(d["W"]), Variable(d["b"])
        y = F.conv2d(x, W, b, stride=1, pad=1)
        y.backward()
        assert W.grad.dtype == np.float32

    def pool():
        h = Variable(d["h"])
        y = F.pooling(h, 2, stride=2)
        y.backward()

    loss = getattr(F, "softmax_cross_entropy", None)

    def sce():
        x = Variable(d["logits"])
        y = loss(x, d["labels"])
        y.backward()

    return {"conv2d": conv, "max pooling": pool, "softmax-ce": sce if loss else None}


def torch_workloads(d):
    import torch

    tf = torch.nn.functional
    t = {k: torch.from_numpy(v) for k, v in d.items()}
    # Each call wraps the same arrays in fresh leaves without copying them (detach shares the storage), as
    # xdezero's calls wrap them in fresh Variables: neither side copies its inputs inside the timed call.

    def conv():
        x, W, b = (t[k].detach().requires_grad_() for k in ("x", "W", "b"))
        y = tf.conv2d(x, W, b, stride=1, padding=1)
        y.backward(torch.ones_like(y))

    def pool():
        h = t["h"].detach().requires_grad_()
        y = tf.max_pool2d(h, 2, 2)
        y.backward(torch.ones_like(y))

    def sce():
        x = t["logits"].detach().requires_grad_()
        tf.cross_entropy(x, t["labels"]).backward()

    return {"conv2d": conv, "max pooling": pool, "softmax-ce": sce}


TARGETS = {"conv2d": 2.0, "max pooling": 1.5, "softmax-ce": 1.5}


def _worker(framework: str, workload: str, repeats: int, threads: int) -> None:
    """Time one workload of one framework; prints (median, min) in ms as JSON."""
    if framework == "torch":
        import torch

        torch.set_num_threads(threads)
        fn = torch_workloads(_data())[workload]
    else:
        fn = xdezero_workloads(_data())[workload]
    print(json.dumps(_times(fn, repeats)))


def _in_subprocess(malloc: str | None, *args) -> tuple[float, float]:
    env = {"GLIBC_TUNABLES": malloc} if malloc else None
    return tuple(json.loads(run_python(__file__, "--worker", *map(str, args), env=env)))


def _table(malloc: str | None, rounds: int, repeats: int, threads: int) -> None:
    print(f"\nmalloc: {'pinned (GLIBC_TUNABLES=' + malloc + ')' if malloc else 'default'}")
    header = ("workload", "xdezero ms", "torch ms", "ratio", "min xdz", "min torch", "min ratio", "target")
    print("{:<14}{:>12}{:>10}{:>8}{:>10}{:>11}{:>11}{:>8}".format(*header))
    for name in TARGETS:
        # Alternate the frameworks, round by round, so that a burst of load elsewhere hits both.
        a, b = [], []
        for _ in range(rounds):
            a.append(_in_subprocess(malloc, "xdezero", name, repeats, threads))
            b.append(_in_subprocess(malloc, "torch", name, repeats, threads))
        med_a, med_b = statistics.median(t[0] for t in a), statistics.median(t[0] for t in b)
        min_a, min_b = min(t[1] for t in a), min(t[1] for t in b)
        ratio = med_a / med_b
        verdict = "ok" if ratio <= TARGETS[name] else "MISS"
        print(
            f"{name:<14}{med_a:>12.2f}{med_b:>10.2f}{ratio:>8.2f}{min_a:>10.2f}{min_b:>11.2f}"
            f"{min_a / min_b:>11.2f}{'<= ' + str(TARGETS[name]):>8}  {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats")
    parser.add_argument("--malloc", choices=["both", "default", "pinned"], default="both")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, workload, repeats, threads = args.worker
        _worker(framework, workload, int(repeats), int(threads))
        return
    rounds, repeats = (3, 10) if args.quick else (5, 30)

    import torch

    threads, source = _blas_threads()
    print(f"numpy {np.__version__}, torch {torch.__version__}; torch.set_num_threads({threads}) from {source}")
    print(f"{rounds} rounds of {repeats} repeats, each in a fresh process; forward + backward, float32")
    settings = {"default": [None], "pinned": [PINNED_MALLOC], "both": [None, PINNED_MALLOC]}[args.malloc]
    for malloc in settings:
        _table(malloc, rounds, repeats, threads)


if __name__ == "__main__":
    main()
