"""Engine overhead and memory: xdezero (NumPy) side by side with PyTorch eager (CPU), reported as ratios.

    python benchmarks/bench_core.py            # all workloads
    python benchmarks/bench_core.py --quick    # fewer repeats

Workloads
  chain-0d    y = sin(y) * 1.01, 10,000 times, on a 0-d float64 array; forward + backward, µs per iteration
  chain-1k    the same on a 1,000-element float64 array
  fanout-N    x fanned into N branches sin(x * c_i), summed by a balanced tree; backward µs per graph node
  memory      y = sin(y) * c for 200 ops on a 10⁶-element float32 array, c = 1.01 and c = np.float32(1.01):
              MiB held at the end of forward, each framework measured in a fresh subprocess (resident memory
              growth); a NumPy scalar is a constant like a Python number, so it keeps no extra array alive
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import numpy as np
from _harness import run_python, wall_times


def _median_time(fn, repeats: int) -> float:
    return statistics.median(wall_times(fn, repeats))


# --- workloads, one function per framework ------------------------------------------------------


def chain_xdezero(size: int | None, n: int, data=None):
    """n links y = sin(y)·1.01 forward and backward, on float64 0.5s or on `data` (any library) when given."""
    import xdezero.functions as F
    from xdezero import Variable

    if data is None:
        data = np.array(0.5) if size is None else np.full(size, 0.5)

    def run():
        x = Variable(data)
        y = x
        for _ in range(n):
            y = F.sin(y) * 1.01
        if size is not None:
            y = F.sum(y)
        y.backward()

    return run


def chain_torch(size: int | None, n: int, data=None):
    import torch

    if data is None:
        data = torch.tensor(0.5, dtype=torch.float64) if size is None else torch.full((size,), 0.5, dtype=torch.float64)

    def run():
        x = data.detach().requires_grad_()  # a fresh leaf on the same storage, as Variable(data): no copy
        y = x
        for _ in range(n):
            y = torch.sin(y) * 1.01
        if size is not None:
            y = y.sum()
        y.backward()

    return run


def _tree_sum(terms):
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            pairs.append(terms[-1])
        terms = pairs
    return terms[0]


def fanout_xdezero(n: int):
    import xdezero.functions as F
    from xdezero import Variable

    cs = [np.array(1.0 + i / n) for i in range(n)]

    def build():
        x = Variable(np.array(0.5))
        return x, _tree_sum([F.sin(x * c) for c in cs])

    return build, lambda graph: graph[1].backward()


def fanout_torch(n: int):
    import torch

    cs = [torch.tensor(1.0 + i / n, dtype=torch.float64) for i in range(n)]

    def build():
        x = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        return x, _tree_sum([torch.sin(x * c) for c in cs])

    return build, lambda graph: graph[1].backward()


def _time_backward(build, backward, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        graph = build()
        gc.collect()
        t0 = time.perf_counter()
        backward(graph)
        times.append(time.perf_counter() - t0)
        del graph
    return statistics.median(times)


# --- memory, measured in a fresh process per framework --------------------------------------------

_MEMORY_SCRIPT = r"""
import gc, json, os, sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
framework, n_ops, size, constant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import numpy as np
c = np.float32(1.01) if constant == "numpy" else 1.01
if framework == "torch":
    import torch
    x = torch.full((size,), 0.5, dtype=torch.float32, requires_grad=True)
    sin = torch.sin
else:
    import xdezero, xdezero.functions as F
    x = xdezero.Variable(np.full(size, 0.5, dtype=np.float32))
    sin = F.sin
warm = sin(x) * c  # warm up (loads kernels, starts pools) before measuring
del warm
gc.collect()
before = rss()
y = x
for _ in range(n_ops // 2):
    y = sin(y) * c
gc.collect()
print(json.dumps({"held_mb": (rss() - before) / 2**20}))
"""


def memory_held(framework: str, constant: str = "python", n_ops: int = 200, size: int = 10**6) -> float:
    # A fixed mmap threshold makes every large buffer its own mapping, returned to the OS when freed, so the
    # resident-memory growth is the memory actually held (glibc's adaptive threshold would keep freed buffers).
    env = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    args = (framework, str(n_ops), str(size), constant)
    return json.loads(run_python("-c", _MEMORY_SCRIPT, *args, env=env))["held_mb"]


def _worker(framework: str, workload: str) -> float:
    """Time one workload for one framework in this (fresh) process; returns µs per iteration or per node."""
    if framework == "torch":
        import torch

        torch.set_num_threads(1)  # the engine overhead is single-threaded in both frameworks
    chain = chain_torch if framework == "torch" else chain_xdezero
    fanout = fanout_torch if framework == "torch" else fanout_xdezero
    if workload.startswith("chain"):
        size = None if workload == "chain-0d" else 1000
        run = chain(size, 10_000)
        run()  # warm-up
        return _median_time(run, 3) / 10_000 * 1e6
    fan = int(workload.split("-")[1])
    nodes = 3 * fan - 1  # fan multiplications, fan sines, fan - 1 additions
    return _time_backward(*fanout(fan), 3) / nodes * 1e6


def _in_subprocess(*args: str) -> float:
    return float(run_python(__file__, "--worker", *args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(_worker(*args.worker))
        return
    # Each measurement runs in a fresh process (so neither framework's objects weigh on the other's garbage
    # collector), alternating frameworks; the table shows medians over the rounds.
    rounds = 3 if args.quick else 5
    workloads = {
        "chain-0d": "chain-0d fwd+bwd (µs/iter)",
        "chain-1k": "chain-1k fwd+bwd (µs/iter)",
        "fanout-1000": "fanout-1000 backward (µs/node)",
        "fanout-30000": "fanout-30000 backward (µs/node)",
    }
    rows = []
    for workload, label in workloads.items():
        ours, ref = [], []
        for _ in range(rounds):
            ours.append(_in_subprocess("xdezero", workload))
            ref.append(_in_subprocess("torch", workload))
        rows.append((label, statistics.median(ours), statistics.median(ref)))
    for constant, label in (("python", "1.01"), ("numpy", "np.float32(1.01)")):
        mem_ours = statistics.median(memory_held("xdezero", constant) for _ in range(rounds))
        mem_ref = statistics.median(memory_held("torch", constant) for _ in range(rounds))
        rows.append((f"memory, c = {label} (MiB held)", mem_ours, mem_ref))

    print(f"{'workload':36} {'xdezero':>10} {'torch':>10} {'ratio':>7}")
    for label, ours, ref in rows:
        print(f"{label:36} {ours:10.2f} {ref:10.2f} {ours / ref:7.2f}")
    fan_small, fan_large = rows[2], rows[3]
    print(
        f"fan-out growth 1,000 -> 30,000 (µs/node): xdezero {fan_large[1] / fan_small[1]:.2f}x, "
        f"torch {fan_large[2] / fan_small[2]:.2f}x"
    )


if __name__ == "__main__":
    main()
