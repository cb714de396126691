"""xdezero on CuPy against PyTorch eager CUDA, in one process, float32, as ratios xdezero / torch.

    python benchmarks/bench_gpu.py                     # on a GPU machine (CuPy and a CUDA build of torch)
    python benchmarks/bench_gpu.py --tf32              # also the wide MLP with TF32 matmuls in both
    python benchmarks/bench_gpu.py --json out.json --markdown out.md
    python benchmarks/bench_gpu.py --smoke             # CPU, shrunken sizes, 2 repeats: checks the script only

Workloads (each number the median over repeats of one call, with a device synchronisation after each call;
the two frameworks timed one call each in turn):
  chain-1e3 / chain-1e6   y = sin(y)·1.01, 100 links forward and backward on 10³ / 10⁶ elements; µs per link
  mlp-b100 / mlp-b1000    SGD step of 784 → 1000 → 1000 → 10 (sigmoid, softmax cross-entropy) at batch 100 / 1000
  wide-b4096              SGD step of 784 → 4096 → 4096 → 10 at batch 4096 (with --tf32: again with TF32 matmuls)
  cnn-b128                SGD step of conv 3×3 1→16, relu, conv 3×3 16→32, relu, pool 2×2, linear → 10 at batch 128
  mlp-b100-captured       the mlp-b100 step through xdezero.capture (a CUDA graph from its fourth call), against
                          PyTorch eager
  mlp-b100-captured-plain the same, replayed without a CUDA graph (capture(..., cuda_graphs=False))
  cnn-b128-captured       the cnn-b128 step through xdezero.capture, against PyTorch eager
  mlp-b100-vs-graph       the same captured step, against PyTorch's step replayed from a CUDA graph
  memory-chain-1e7        200 links y = sin(y)·1.01 on 10⁷ elements: GPU memory held at the end of forward (MiB;
                          CuPy's pool bytes in use against torch.cuda.memory_allocated, each from zero)
Rows are float32 in both (torch's cuDNN TF32 default is turned off). TF32 (--tf32: wide-b4096 and cnn-b128 again)
runs in its own process: CuPy reads CUPY_TF32 when it is imported; torch gets TF32 for its matmuls and cuDNN.
"""

from __future__ import annotations

import argparse
import json
import sys

from _harness import interleaved_medians, run_python
from _workloads import CNN, data, torch_graph_step, torch_step, xdezero_step
from bench_core import chain_torch, chain_xdezero

CHAIN_LINKS = 100
# name -> (kind, sizes or element count, batch)
WORKLOADS = {
    "chain-1e3": ("chain", 10**3, None),
    "chain-1e6": ("chain", 10**6, None),
    "mlp-b100": ("step", (784, 1000, 1000, 10), 100),
    "mlp-b1000": ("step", (784, 1000, 1000, 10), 1000),
    "wide-b4096": ("step", (784, 4096, 4096, 10), 4096),
    "cnn-b128": ("step", CNN, 128),
    "mlp-b100-captured": ("captured", (784, 1000, 1000, 10), 100),
    "mlp-b100-captured-plain": ("plain", (784, 1000, 1000, 10), 100),
    "cnn-b128-captured": ("captured", CNN, 128),
    "mlp-b100-vs-graph": ("graph", (784, 1000, 1000, 10), 100),
    "memory-chain-1e7": ("memory", 10**7, None),
}
# --smoke: the same code on the CPU with sizes small enough for a test
SMOKE = {
    "chain-1e3": ("chain", 10, None),
    "chain-1e6": ("chain", 1000, None),
    "mlp-b100": ("step", (784, 32, 32, 10), 4),
    "mlp-b1000": ("step", (784, 32, 32, 10), 8),
    "wide-b4096": ("step", (784, 64, 64, 10), 16),
    "cnn-b128": ("step", CNN, 2),
    "mlp-b100-captured": ("captured", (784, 32, 32, 10), 4),
    "mlp-b100-captured-plain": ("plain", (784, 32, 32, 10), 4),
    "cnn-b128-captured": ("captured", CNN, 2),
    "mlp-b100-vs-graph": ("graph", (784, 32, 32, 10), 4),  # on the CPU: against torch eager (no CUDA graph)
    "memory-chain-1e7": ("memory", 1000, None),
}


def gpu_problems() -> list[str]:
    """What this machine lacks for the GPU benchmark (empty when CuPy and torch both see a CUDA GPU)."""
    problems = []
    try:
        import cupy

        if not cupy.cuda.is_available():
            problems.append("CuPy sees no CUDA GPU (cupy.cuda.is_available() is False)")
    except ImportError:
        problems.append("CuPy is not installed")
    try:
        import torch

        if not torch.cuda.is_available():
            problems.append("torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    except ImportError:
        problems.append("torch is not installed")
    return problems


def _pair(kind, size, batch, gpu: bool, links: int):
    """(xdezero call, torch call, xdezero sync, torch sync)."""
    import numpy as np
    import torch

    if gpu:
        import cupy

        from xdezero.backends import to_gpu

        move, device = to_gpu, "cuda"
        sync_ours, sync_torch = cupy.cuda.Device().synchronize, torch.cuda.synchronize
    else:
        move, device = None, "cpu"

        def sync_ours():
            pass

        sync_torch = sync_ours
    if kind == "chain":
        host = np.full(size, 0.5, dtype=np.float32)
        ours = chain_xdezero(size, links, data=move(host) if move else host)
        ref = chain_torch(size, links, data=torch.from_numpy(host).to(device))
    else:
        x, t = data(size, batch)
        captured = kind in ("captured", "graph", "plain")
        ours = xdezero_step(size, x, t, move, capture=captured, cuda_graphs=kind != "plain")
        ref = torch_graph_step(size, x, t) if kind == "graph" and gpu else torch_step(size, x, t, device)
    return ours, ref, sync_ours, sync_torch


def memory_held(size: int, links: int, gpu: bool) -> tuple[float, float]:
    """MiB of device memory held at the end of the forward pass of the chain (the graph's saved arrays and
    the output), xdezero on CuPy and torch on CUDA; on the CPU (smoke) both read 0."""
    if not gpu:
        return 0.0, 0.0
    import cupy
    import torch

    import xdezero.functions as F
    from xdezero import Variable

    pool = cupy.get_default_memory_pool()
    x = Variable(cupy.full(size, 0.5, dtype=cupy.float32))
    start = pool.used_bytes()
    y = x
    for _ in range(links):
        y = F.sin(y) * 1.01
    ours = pool.used_bytes() - start
    del x, y
    pool.free_all_blocks()

    x = torch.full((size,), 0.5, dtype=torch.float32, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    y = x
    for _ in range(links):
        y = torch.sin(y) * 1.01
    torch.cuda.synchronize()
    ref = torch.cuda.memory_allocated() - start
    del x, y
    torch.cuda.empty_cache()
    return ours / 2**20, ref / 2**20


def run(names: list[str], repeats: int, smoke: bool, tf32: bool = False) -> list[dict]:
    """One row per workload: µs per call (per link for the chains) of each framework and their ratio."""
    table = SMOKE if smoke else WORKLOADS
    import torch

    if smoke:  # tiny CPU problems: more threads only add scheduling noise
        torch.set_num_threads(1)
    else:  # float32 means float32 in both: torch's cuDNN convolutions default to TF32, its matmuls do not
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
    links = 10 if smoke else CHAIN_LINKS
    rows = []
    for name in names:
        kind, size, batch = table[name]
        if kind == "memory":
            ours, ref = memory_held(size, 200, not smoke)
            ratio = ours / ref if ref else float("nan")
            rows.append({"workload": name, "unit": "MiB held", "xdezero": ours, "torch": ref, "ratio": ratio})
            continue
        ours, ref, sync_ours, sync_torch = _pair(kind, size, batch, not smoke, links)
        warmup = 1 if smoke else max(5, repeats // 10)
        t_ours, t_ref = interleaved_medians([ours, ref], [sync_ours, sync_torch], repeats, warmup)
        per = links if kind == "chain" else 1
        unit = "µs/link" if kind == "chain" else "µs/step"
        label = name + (" tf32" if tf32 else "")
        row = {"workload": label, "unit": unit, "xdezero": t_ours / per, "torch": t_ref / per, "ratio": t_ours / t_ref}
        step = getattr(ours, "step", None)
        if hasattr(step, "graphs"):  # a captured step: whether it ran as a CUDA graph, and if not, why
            row["cuda_graph"] = step.graphs == 1
            row["graph_notes"] = step.graph_notes
        rows.append(row)
    return rows


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "", "| workload | unit | xdezero | torch | ratio |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['unit']} | {r['xdezero']:.1f} | {r['torch']:.1f} | {r['ratio']:.2f} |")
    notes = [
        f"- {r['workload']}: CUDA graph {r['cuda_graph']} {r['graph_notes'] or ''}" for r in rows if "cuda_graph" in r
    ]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per workload (default 50)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), help="run these workloads only")
    parser.add_argument("--tf32", action="store_true", help="also run wide-b4096 and cnn-b128 with TF32 (own process)")
    parser.add_argument("--smoke", action="store_true", help="CPU, small sizes, 2 repeats: checks the script")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--markdown", help="write the table to this Markdown file")
    parser.add_argument("--tf32-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.only or list(WORKLOADS)
    repeats = 2 if args.smoke else args.repeats

    if args.tf32_worker:  # CUPY_TF32=1 is already in this process's environment
        print(json.dumps(run(["wide-b4096", "cnn-b128"], repeats, args.smoke, tf32=True)))
        return
    if not args.smoke:
        problems = gpu_problems()
        if problems:
            sys.exit("bench_gpu needs a CUDA GPU for CuPy and torch: " + "; ".join(problems) + " (--smoke: CPU)")

    rows = run(names, repeats, args.smoke)
    if args.tf32:
        worker = [__file__, "--tf32-worker", "--repeats", str(repeats)] + (["--smoke"] if args.smoke else [])
        rows += json.loads(run_python(*worker, env={"CUPY_TF32": "1"}))
    title = "xdezero on CuPy vs PyTorch eager CUDA (float32)"
    if args.smoke:
        title = "SMOKE RUN on the CPU (xdezero on NumPy vs torch CPU, shrunken sizes): the numbers mean nothing"
    text = markdown(rows, title)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"title": title, "smoke": args.smoke, "rows": rows}, f, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
