"""Convolution, pooling and loss: xdezero (NumPy) side by side with PyTorch eager (CPU), forward + backward.

    PYTHONPATH=. python benchmarks/bench_functions.py            # all workloads
    PYTHONPATH=. python benchmarks/bench_functions.py --quick    # fewer repeats

Workloads (float32)
  conv2d         x (32, 16, 32, 32), W (32, 16, 3, 3), b (32,), stride 1, pad 1
  max pooling    2x2, stride 2, on the conv2d output (32, 32, 32, 32)
  softmax-ce     softmax_cross_entropy on (1000, 100) logits with int64 labels
Each cell is the median (and the min) wall time of forward + backward over the repeats; the two frameworks
alternate in three rounds, so that load from other processes hits both. torch runs with as many intra-op
threads as NumPy's BLAS uses (threadpoolctl when installed, else OPENBLAS/OMP_NUM_THREADS, else the CPU count).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import numpy as np


def _times(fn, repeats: int) -> tuple[float, float]:
    """(median, min) wall time in ms; the min shows the cost without interference from other processes."""
    fn()  # warm-up (allocator, lazy imports, BLAS threads)
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
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

    def conv():
        x, W, b = (t[k].clone().requires_grad_() for k in ("x", "W", "b"))
        y = tf.conv2d(x, W, b, stride=1, padding=1)
        y.backward(torch.ones_like(y))

    def pool():
        h = t["h"].clone().requires_grad_()
        y = tf.max_pool2d(h, 2, 2)
        y.backward(torch.ones_like(y))

    def sce():
        x = t["logits"].clone().requires_grad_()
        tf.cross_entropy(x, t["labels"]).backward()

    return {"conv2d": conv, "max pooling": pool, "softmax-ce": sce}


TARGETS = {"conv2d": 2.0, "max pooling": 1.5, "softmax-ce": 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 7 if args.quick else 31

    import torch

    threads, source = _blas_threads()
    torch.set_num_threads(threads)
    d = _data()
    ours, theirs = xdezero_workloads(d), torch_workloads(d)
    print(f"numpy {np.__version__}, torch {torch.__version__}; torch.set_num_threads({threads}) from {source}")
    print(f"median of {repeats} repeats, forward + backward, float32")
    header = ("workload", "xdezero ms", "torch ms", "ratio", "min xdz", "min torch", "min ratio", "target")
    print("{:<14}{:>12}{:>10}{:>8}{:>10}{:>11}{:>11}{:>8}".format(*header))
    for name, fn in ours.items():
        if fn is None:
            print(f"{name:<14}  skipped: xdezero.functions has no softmax_cross_entropy yet")
            continue
        # Interleave the two frameworks so that a burst of load elsewhere hits both.
        a, b = [], []
        for _ in range(3):
            a.append(_times(fn, repeats // 3 + 1))
            b.append(_times(theirs[name], repeats // 3 + 1))
        med_a, med_b = statistics.median(t[0] for t in a), statistics.median(t[0] for t in b)
        min_a, min_b = min(t[1] for t in a), min(t[1] for t in b)
        ratio = med_a / med_b
        verdict = "ok" if ratio <= TARGETS[name] else "MISS"
        print(
            f"{name:<14}{med_a:>12.2f}{med_b:>10.2f}{ratio:>8.2f}{min_a:>10.2f}{min_b:>11.2f}"
            f"{min_a / min_b:>11.2f}{'<= ' + str(TARGETS[name]):>8}  {verdict}"
        )


if __name__ == "__main__":
    main()
