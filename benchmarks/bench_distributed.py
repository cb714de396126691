"""Weak scaling of data-parallel training over MPI: one SGD step of an MLP at a fixed batch per rank.

    python benchmarks/bench_distributed.py                 # 1 vs 2 ranks, 3 rounds, one thread per rank
    python benchmarks/bench_distributed.py --ranks 1 2 4 --rounds 5 --steps 40
    python benchmarks/bench_distributed.py --link-gbps 1   # overlap of the all-reduce on a simulated link

With `--link-gbps G` it runs in one process on a simulated link instead of MPI: each collective of B bytes
completes no sooner than it would on a network of G GB/s (`--latency-us` α plus B/G; collectives queue on the
link one after another), and waiting for it sleeps, spending no CPU. The "other rank" holds the same gradients.
Workload there: a CNN with a wide head, conv 3×3 1→32, relu, conv 3×3 32→64, relu, max pooling 2, conv 3×3
64→64, relu, linear 12544 → 512, relu, linear → 10 (float32, SGD), batch 16 of 28×28, chosen so that at 1 GB/s its
26.2 MB of gradients take about half of a step's compute on this machine. Like VGG or AlexNet, most of its
parameters are in the head, whose gradients come first in backward, and most of its compute is in the
convolutions after them. Overlap can hide the link only behind the backward compute that follows the head's
gradient: the forward, the head's own backward (which makes that gradient) and the update are not hidden. With
two convolutions the backward left after the head (15 ms here) was shorter than the link (26 ms), which bounded
the overlapped step at about 1.24x however the exchange is done; the third convolution makes it about 21 ms.
It times, interleaved, the step
without communication, the multi-node optimizer reducing after backward (`overlap=False`, the sequential
all-reduce) and reducing buckets during backward (`overlap=True`, `--bucket-mb`), the latter also with the buckets
packed and started on the step's own thread (`inline`, what a transport below MPI_THREAD_MULTIPLE gets), and prints
as its last line:
`overlap: overlapped step X.XXx, sequential step Y.YYx of the step without communication (link G GB/s)`.

Workload: MLP 784 → 1000 → 1000 → 10 (float32, sigmoid, softmax cross-entropy, SGD lr=0.1), batch 100 per
rank, random data. Each round starts `mpiexec -n p` for every p in turn (alternating, so drifting load from
other processes hits all sizes alike); each job times `--steps` steps after warm-up and reports medians from
rank 0. Every rank runs with one thread (OMP/OpenBLAS/MKL_NUM_THREADS=1) and glibc's pinned malloc settings.

Reported per p (medians over rounds of the per-job medians):
  step       time of one whole step (forward, backward, gradient all-reduce, update), ms
  wait       time in a barrier before the all-reduce: waiting for the slower rank (load imbalance, contention);
             0 with `--reducer optimizer`, whose steps have no barrier (the wait is inside its update)
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


def worker(steps: int, warmup: int, reduce: bool, reducer: str = "allreduce_grad") -> None:
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
    if reduce and reducer == "optimizer":  # the multi-node optimizer: buckets all-reduced during backward
        optimizer = dist.create_multi_node_optimizer(SGD(lr=0.1), comm).setup(model)
    else:
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
        # Waiting for the slower rank, counted apart from the all-reduce itself; not with the multi-node optimizer,
        # whose all-reduces are in flight after backward: a barrier there is a collective its steps do not have
        # (it cost about 1 ms per 2-rank step here), and the wait is inside its update.
        if reducer != "optimizer":
            comm.barrier()
        t2 = time.perf_counter()
        if reduce and reducer == "allreduce_grad":
            comm.allreduce_grad(model)  # the sequential all-reduce after backward
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
            "reducer": reducer,
            "step_ms": 1e3 * statistics.median(s for s, _, _ in timings),
            "wait_ms": 1e3 * statistics.median(w for _, w, _ in timings),
            "comm_ms": 1e3 * statistics.median(c for _, _, c in timings),
            "allreduce_ms": 1e3 * statistics.median(bare),
            "latency_us": 1e6 * statistics.median(latency),
            "buffer_bytes": buffer.nbytes,
        }
        print(json.dumps(result), flush=True)


def launch(ranks: int, steps: int, warmup: int, reduce: bool = True, reducer: str = "allreduce_grad") -> dict:
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
    command += ["--warmup", str(warmup), "--reducer", reducer] + ([] if reduce else ["--no-reduce"])
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
    parser.add_argument(
        "--reducer",
        choices=["allreduce_grad", "optimizer"],
        default="allreduce_grad",
        help="MPI: comm.allreduce_grad after backward (the comm column), or the multi-node optimizer (buckets)",
    )
    parser.add_argument("--link-gbps", type=float, help="run on a simulated link of this many GB/s (no MPI)")
    parser.add_argument("--latency-us", type=float, default=20.0, help="the simulated link's latency α (µs)")
    parser.add_argument("--bucket-mb", type=float, default=4.0, help="bucket size on the simulated link (MiB)")
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.warmup, reduce=not args.no_reduce, reducer=args.reducer)
        return
    if args.link_gbps is not None:
        if not args.link_gbps > 0:
            parser.error(f"--link-gbps must be positive, got {args.link_gbps}")
        simulated(args.link_gbps, args.latency_us * 1e-6, args.bucket_mb, args.steps, args.warmup, args.rounds)
        return

    # Control: the largest p running the same steps without the all-reduce shows what sharing the machine's
    # cores, caches and memory bandwidth costs by itself (on a 2-core machine with other work, a lot).
    jobs = [(p, True) for p in args.ranks] + [(max(args.ranks), False)]
    runs: dict[tuple[int, bool], list[dict]] = {job: [] for job in jobs}
    for _ in range(args.rounds):
        for p, reduce in jobs:
            runs[p, reduce].append(launch(p, args.steps, args.warmup, reduce, args.reducer))
    print(f"MLP {' -> '.join(map(str, SIZES))}, float32, batch {BATCH} per rank, one thread per rank, MPI")
    print(f"gradients reduced by {args.reducer} (the comm column is that of allreduce_grad only)")
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


# --- the simulated link ---------------------------------------------------------------------------------------

LINK_BATCH = 16


def simulated(gbps: float, latency: float, bucket_mb: float, steps: int, warmup: int, rounds: int) -> None:
    """Time the step without communication, with the sequential all-reduce and with the overlapped one."""
    import numpy as np

    import xdezero.functions as F
    import xdezero.layers as L
    from xdezero import distributed as dist
    from xdezero.distributed import Communicator
    from xdezero.models import Model
    from xdezero.optimizers import SGD

    class WideHeadCNN(Model):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = L.Conv2d(32, 3, pad=1, in_channels=1)
            self.conv2 = L.Conv2d(64, 3, pad=1, in_channels=32)
            self.conv3 = L.Conv2d(64, 3, pad=1, in_channels=64)
            self.fc1 = L.Linear(512, in_size=64 * 14 * 14)
            self.fc2 = L.Linear(10, in_size=512)

        def forward(self, x):
            h = F.pooling(F.relu(self.conv2(F.relu(self.conv1(x)))), 2, 2)
            h = F.relu(self.conv3(h))
            return self.fc2(F.relu(self.fc1(F.reshape(h, (h.shape[0], -1)))))

    class Timed:
        def __init__(self, buf: np.ndarray, done: float) -> None:
            self.buf, self.done = buf, done

        def wait(self) -> np.ndarray:
            time.sleep(max(0.0, self.done - time.perf_counter()))  # the link is busy: no CPU spent
            return self.buf

    class SimulatedLink(Communicator):
        """Two ranks holding the same gradients, joined by a link of `gbps` GB/s and latency α."""

        name = "simulated"
        size = 2
        _threaded_starts = True  # as MPI_THREAD_MULTIPLE: the buckets pack and start on a thread of their own
        _numpy_in_place = True  # as MPI: the buckets start in chunks

        def __init__(self) -> None:
            self.free_at = 0.0
            self.sent = 0

        def _done_at(self, nbytes: int) -> float:
            start = max(time.perf_counter(), self.free_at)
            self.free_at = start + latency + nbytes / (gbps * 1e9)
            self.sent += nbytes
            return self.free_at

        def _to_buffer(self, flat):
            return flat

        def _from_buffer(self, buf, like):
            return buf

        def _iallreduce_buffer(self, buf, op):
            if op == "sum":
                buf *= self.size  # the other rank's gradients are the same: the mean stays this rank's
            return Timed(buf, self._done_at(buf.nbytes))

        def _allreduce_buffer(self, buf, op):
            return self._iallreduce_buffer(buf, op).wait()

        def _bcast_buffer(self, buf, root):
            return Timed(buf, self._done_at(buf.nbytes)).wait()

        def bcast_obj(self, obj, root=0):
            return obj

        def barrier(self):
            pass

    def make(mode: str):
        np.random.seed(0)
        model = WideHeadCNN()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((LINK_BATCH, 1, 28, 28)).astype(np.float32)
        t = rng.integers(0, 10, LINK_BATCH)
        model(x)
        for p in model.params():
            p.data = p.data.astype(np.float32)
        link = SimulatedLink()
        link._threaded_starts = mode != "inline"
        if mode == "none":
            optimizer = SGD(lr=0.1).setup(model)
        else:
            optimizer = dist.create_multi_node_optimizer(
                SGD(lr=0.1), link, overlap=mode != "sequential", bucket_mb=bucket_mb
            ).setup(model)

        def step() -> None:
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            optimizer.update()

        step.link = link
        return step

    modes = ("none", "sequential", "inline", "overlapped")
    medians: dict[str, list[float]] = {m: [] for m in modes}
    steps_of = {m: make(m) for m in modes}
    for _ in range(rounds):
        for mode in modes:
            step = steps_of[mode]
            for _ in range(warmup):
                step()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            medians[mode].append(statistics.median(times))
    step_ms = {m: 1e3 * statistics.median(v) for m, v in medians.items()}
    sent_mb = steps_of["sequential"].link.sent / 1e6 / (rounds * (steps + warmup))
    link_ms = sent_mb * 1e6 / (gbps * 1e9) * 1e3
    print(
        "CNN with a wide head (conv 1->32->64, pool, conv 64->64, linear 12544->512->10), float32, "
        f"batch {LINK_BATCH}, one process"
    )
    print(f"link {gbps:g} GB/s, latency {latency * 1e6:g} us; buckets of {bucket_mb:g} MiB; {rounds} rounds of {steps}")
    share = link_ms / step_ms["none"]
    print(f"all-reduce bytes per step {sent_mb:.2f} MB: {link_ms:.2f} ms on the link, {share:.2f}x of the compute")
    for mode in modes:
        print(f"{mode:>12} step {step_ms[mode]:8.2f} ms  {step_ms[mode] / step_ms['none']:.2f}x")
    print(
        f"overlap: overlapped step {step_ms['overlapped'] / step_ms['none']:.2f}x, sequential step "
        f"{step_ms['sequential'] / step_ms['none']:.2f}x of the step without communication (link {gbps:g} GB/s)"
    )


if __name__ == "__main__":
    main()
