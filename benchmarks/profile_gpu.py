"""Where a CuPy training step spends its time: host (Python, launches) against device (kernels), per step.

    python benchmarks/profile_gpu.py                  # on a GPU machine
    python benchmarks/profile_gpu.py --top 30 --out profile.txt

For each workload of bench_gpu.py's MLP rows (eager and captured), `cupyx.profiler.benchmark` reports the
host time of a call and the device time between CUDA events around it: a step whose device time is far below
its host time is launch-bound (Python decides), one whose device time is close to it is kernel-bound. Then
one cProfile of 20 eager steps (the functions with the most own time), and the GPU kernels of 10 eager steps as
`torch.profiler` sees them through CUPTI (CuPy's kernels too: CUPTI sees every kernel of the process).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

from _workloads import CNN, data, torch_step, xdezero_step

WORKLOADS = {
    "mlp-b100": ((784, 1000, 1000, 10), 100),
    "wide-b4096": ((784, 4096, 4096, 10), 4096),
    "cnn-b128": (CNN, 128),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=25, help="functions listed by the cProfile (default 25)")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per step (default 50)")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()

    import cupy
    from cupyx.profiler import benchmark

    from xdezero.backends import to_gpu

    lines = []
    for name, (sizes, batch) in WORKLOADS.items():
        x, t = data(sizes, batch)
        steps = {
            "xdezero eager": xdezero_step(sizes, x, t, to_gpu),
            "xdezero captured": xdezero_step(sizes, x, t, to_gpu, capture=True),
            "torch eager": torch_step(sizes, x, t, "cuda"),
        }
        for label, step in steps.items():
            result = benchmark(step, n_repeat=args.repeat, n_warmup=5)
            host, device = result.cpu_times.mean() * 1e6, result.gpu_times[0].mean() * 1e6
            lines.append(f"{name:12s} {label:18s} host {host:9.1f} µs   device {device:9.1f} µs")
        profiler = cProfile.Profile()
        eager = steps["xdezero eager"]
        profiler.enable()
        for _ in range(20):
            eager()
        cupy.cuda.Device().synchronize()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
        lines.append(f"\n--- cProfile, 20 eager steps of {name}, by own time ---\n" + text.getvalue())
        lines.append(f"\n--- GPU kernels, 10 eager steps of {name} (torch.profiler) ---\n" + kernels(eager, args.top))
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


def kernels(step, top: int) -> str:
    """The kernels of 10 calls of `step` by total GPU time, as torch.profiler's CUPTI tracing records them."""
    import cupy
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        cupy.cuda.Device().synchronize()
    averages = prof.key_averages()
    try:
        return averages.table(sort_by="device_time_total", row_limit=top, max_name_column_width=60)
    except (AttributeError, KeyError, ValueError):  # torch before "device" replaced "cuda" in these names
        return averages.table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=60)


if __name__ == "__main__":
    main()
