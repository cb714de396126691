"""Weak scaling of data-parallel training over MPI: one SGD step of an MLP at a fixed batch per rank.

    python benchmarks/bench_distributed.py                 # 1 vs 2 ranks, 3 rounds, one thread per rank
    python benchmarks/bench_distributed.py --ranks 1 2 4 --rounds 5 --steps 40

Workload: MLP 784 → 1000 → 1000 → 10 (float32, sigmoid, softmax cross-entropy, SGD lr=0.1), batch 100 per
rank, random data. Each round starts `mpiexec -n p` for every p in turn (alternating, so drifting load from
other processes hits all sizes alike); each job times `--steps` steps after warm-up and reports medians from
rank 0. Every rank runs with one thread (OMP/OpenBLAS/MKL_NUM_THREADS=1) and glibc's pinned malloc settings.

Reported per p (medians over rounds of the per-job medians):
  step       time of one whole step (forward, backward, gradient all-reduce, update), ms
  wait       time in a barrier before the all-reduce: waiting for the slower rank (load imbalance, contention)
  comm       time inside `comm.allreduce_grad` (packing, MPI_Allreduce, dividing, unpacking), ms, and its
             share of the step
  allreduce  a bare MPI_Allreduce of the same number of bytes after a barrier (the transport alone), ms
  latency    a bare MPI_Allreduce of one float32, µs (the α of the cost model in docs/distributed.md)
  efficiency step(1) / step(p): 100% is perfect weak scaling
  bytes      the gradient buffer (bytes reduced per step) and what each rank sends in a ring all-reduce,
             2(p-1)/p times the buffer
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _harness import PINNED_MALLOC

SIZES = (784, 1000, 1000, 10)
BATCH = 100


def worker(steps: int, warmup: int, reduce: bool) -> None:
    import numpy as np
    from mpi4py import MPI

    import xdezero.functions as F
    import xdezero.layers as L
    from xdezero import distributed as dist
    from xdezero.models import Sequential
    from xdezero.optimizers import SGD

    comm = dist.create_communicator("mpi")
    np.random.seed(0)
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES)):
        layers.append(L.Linear(n_out, in_size=n_in, dtype=np.float32))
        if i < len(SIZES) - 2:
            layers.append(F.sigmoid)
    model = Sequential(*layers)
    optimizer = SGD(lr=0.1).setup(model)
    comm.bcast_data(model)
    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    t = rng.integers(0, SIZES[-1], BATCH)

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        t1 = time.perf_counter()
        comm.barrier()  # waiting for the slower rank, counted apart from the all-reduce itself
        t2 = time.perf_counter()
        if reduce:
            comm.allreduce_grad(model)  # what the multi-node optimizer does before each update
        t3 = time.perf_counter()
        optimizer.update()
        return time.perf_counter() - t0, t2 - t1, t3 - t2

    for _ in range(warmup):
        step()
    comm.barrier()
    timings = [step() for _ in range(steps)]

    n_params = sum(p.data.size for p in model.params())
    buffer = np.ones(n_params + len(list(model.params())), dtype=np.float32)  # the packed gradients + flags
    one = np.ones(1, dtype=np.float32)

    def bare_allreduce(buf: np.ndarray) -> float:
        comm.barrier()
        t0 = time.perf_counter()
        comm.mpi_comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return time.perf_counter() - t0

    bare = [bare_allreduce(buffer) for _ in range(steps)]
    latency = [bare_allreduce(one) for _ in range(10 * steps)]
    if comm.rank == 0:
        result = {
            "ranks": comm.size,
            "reduce": reduce,
            "step_ms": 1e3 * statistics.median(s for s, _, _ in timings),
            "wait_ms": 1e3 * statistics.median(w for _, w, _ in timings),
            "comm_ms": 1e3 * statistics.median(c for _, _, c in timings),
            "allreduce_ms": 1e3 * statistics.median(bare),
            "latency_us": 1e6 * statistics.median(latency),
            "buffer_bytes": buffer.nbytes,
        }
        print(json.dumps(result), flush=True)


def launch(ranks: int, steps: int, warmup: int, reduce: bool = True) -> dict:
    mpiexec = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if mpiexec is None:
        sys.exit("bench_distributed: no mpiexec found; pip install mpi4py mpich")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "HYDRA_"))}
    env.update(
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        GLIBC_TUNABLES=PINNED_MALLOC,
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])),
    )
    command = [mpiexec, "-n", str(ranks), sys.executable, __file__, "--worker", "--steps", str(steps)]
    command += ["--warmup", str(warmup)] + ([] if reduce else ["--no-reduce"])
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-reduce", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.warmup, reduce=not args.no_reduce)
        return

    # Control: the largest p running the same steps without the all-reduce shows what sharing the machine's
    # cores, caches and memory bandwidth costs by itself (on a 2-core machine with other work, a lot).
    jobs = [(p, True) for p in args.ranks] + [(max(args.ranks), False)]
    runs: dict[tuple[int, bool], list[dict]] = {job: [] for job in jobs}
    for _ in range(args.rounds):
        for p, reduce in jobs:
            runs[p, reduce].append(launch(p, args.steps, args.warmup, reduce))
    print(f"MLP {' -> '.join(map(str, SIZES))}, float32, batch {BATCH} per rank, one thread per rank, MPI")
    print(f"medians over {args.rounds} rounds of {args.steps} steps; cores here: {os.cpu_count()}")
    print(
        f"{'ranks':>12} {'step ms':>8} {'wait ms':>8} {'comm ms':>8} {'comm %':>7} {'allreduce ms':>13} "
        f"{'efficiency':>10} {'buffer MB':>9} {'sent/rank MB':>12} {'latency us':>10}"
    )
    base = statistics.median(r["step_ms"] for r in runs[args.ranks[0], True])
    for p, reduce in jobs:
        rows = runs[p, reduce]
        step = statistics.median(r["step_ms"] for r in rows)
        comm = statistics.median(r["comm_ms"] for r in rows) if reduce else 0.0
        wait = statistics.median(r["wait_ms"] for r in rows)
        bare = statistics.median(r["allreduce_ms"] for r in rows)
        latency = statistics.median(r["latency_us"] for r in rows)
        buffer = rows[0]["buffer_bytes"]
        sent = 2 * (p - 1) / p * buffer if reduce else 0.0
        label = str(p) if reduce else f"{p} no-reduce"
        print(
            f"{label:>12} {step:>8.2f} {wait:>8.2f} {comm:>8.2f} {100 * comm / step:>6.1f}% {bare:>13.2f} "
            f"{100 * base / step:>9.1f}% {buffer / 1e6:>9.2f} {sent / 1e6:>12.2f} {latency:>10.1f}"
        )
    print(
        "per-round step ms: "
        + "; ".join(
            f"{p}{'' if reduce else ' no-reduce'}: " + ", ".join(f"{r['step_ms']:.1f}" for r in runs[p, reduce])
            for p, reduce in jobs
        )
    )


if __name__ == "__main__":
    main()
