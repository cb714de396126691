"""What the benchmark scripts share: the timing loop and the fresh worker processes."""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time

# glibc's mmap threshold pinned at 32 MiB (trim threshold 64 MiB): the state glibc reaches by itself once a
# process has freed one array of 32 MiB or more. Large temporaries are then reused from the heap instead of
# being mapped and page-faulted afresh on every call.
PINNED_MALLOC = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"


def wall_times(fn, repeats: int) -> list[float]:
    """Seconds taken by each of `repeats` calls of fn, each after a garbage collection."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run_python(*args: str, env: dict[str, str] | None = None) -> str:
    """The last line printed by `python *args` in a fresh process, with `env` added to this one's."""
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    )
    return out.stdout.strip().splitlines()[-1]


def interleaved_medians(steps, syncs, repeats: int, warmup: int) -> list[float]:
    """Median µs per call of each step function, timed one step of each in turn (drifting load hits all);
    sync() after each step waits for the device (a no-op on the CPU)."""
    for step, sync in zip(steps, syncs):
        for _ in range(warmup):
            step()
        sync()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for k, (step, sync) in enumerate(zip(steps, syncs)):
            t0 = time.perf_counter()
            step()
            sync()
            times[k].append(time.perf_counter() - t0)
    return [statistics.median(ts) * 1e6 for ts in times]
