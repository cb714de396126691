"""The buffer pool (xdezero/backends/_scratch.py) on batch shapes that keep changing: memory at the end and time.

    python benchmarks/bench_buffer_pool.py              # 3 fresh processes per setting, medians
    python benchmarks/bench_buffer_pool.py --repeats 1

An MLP 784 → 1000 → 1000 → 10 (sigmoid), float32, softmax cross-entropy, SGD, one step at each batch size from
100 to 510 (411 sizes, so 411 sets of result shapes). Each run is a fresh process: with the pool, and with the
pool disabled (its MIN_BYTES set above every result). Reported: resident memory at the end (VmRSS), the pool's
bytes, the wall time of the 411 steps, and the ratios pool / no pool (medians over the processes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from _harness import run_python

SIZES = range(100, 511)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("bench_buffer_pool: no VmRSS line in /proc/self/status")


def worker(pool: bool) -> None:
    import numpy as np

    import xdezero.functions as F
    from xdezero.backends import _scratch
    from xdezero.models import MLP
    from xdezero.optimizers import SGD

    if not pool:
        _scratch.MIN_BYTES = 1 << 62  # every result is then a plain np.empty
    rng = np.random.default_rng(0)
    model = MLP((1000, 1000, 10))
    optimizer = SGD(0.01).setup(model)
    t0 = time.perf_counter()
    for n in SIZES:
        x = rng.standard_normal((n, 784), dtype=np.float32)
        t = rng.integers(0, 10, n)
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        optimizer.update()
    seconds = time.perf_counter() - t0
    del x, t, loss
    print(json.dumps({"rss_mib": _rss_mib(), "held_mib": _scratch.held_bytes() / 2**20, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per setting, run in turns")
    args = parser.parse_args()
    runs = {"pool": [], "no pool": []}
    for _ in range(args.repeats):
        for name, flag in (("pool", "1"), ("no pool", "0")):
            runs[name].append(json.loads(run_python(__file__, "--worker", flag)))
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    for name, r in median.items():
        print(f"{name:8s} RSS {r['rss_mib']:6.1f} MiB  pool holds {r['held_mib']:5.1f} MiB  {r['seconds']:5.2f} s")
    with_pool, without = median["pool"], median["no pool"]
    print(
        f"pool / no pool (medians of {args.repeats}): RSS {with_pool['rss_mib'] / without['rss_mib']:.2f}x, "
        f"time {with_pool['seconds'] / without['seconds']:.2f}x"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2] == "1")
    else:
        main()
