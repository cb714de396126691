"""Train an MLP on the spiral data full-batch in float64, data-parallel; rank 0 writes the parameters.

Run alone (`python train_spiral.py --comm single ...`) or under `mpiexec -n N` / `torchrun --nproc-per-node N`.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import xdezero.functions as F
import xdezero.layers as L
from xdezero import distributed as dist
from xdezero.dataloaders import DataLoader
from xdezero.datasets import Spiral
from xdezero.models import Sequential
from xdezero.optimizers import MomentumSGD


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--comm", default="auto")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-at", type=int, default=-1, help="raise on rank --fail-rank at this step")
    parser.add_argument("--fail-rank", type=int, default=1)
    parser.add_argument("--seed-per-rank", action="store_true", help="different lazy initial weights per rank")
    args = parser.parse_args()

    comm = dist.create_communicator(args.comm)
    shard = dist.scatter_dataset(Spiral(), comm, shuffle=True, seed=0)  # Spiral reseeds NumPy, as DeZero's does
    np.random.seed(comm.rank if args.seed_per_rank else 0)  # so seed after it: the lazy weights draw from here
    model = Sequential(L.Linear(10, dtype=np.float64), F.sigmoid, L.Linear(3, dtype=np.float64))
    loader = DataLoader(shard, len(shard), shuffle=False)  # full batch: one step per epoch
    optimizer = dist.create_multi_node_optimizer(MomentumSGD(lr=1.0), comm).setup(model)
    for step in range(args.steps):
        if step == args.fail_at and comm.rank == args.fail_rank:
            raise RuntimeError(f"deliberate failure on rank {comm.rank} at step {step}")
        for x, t in loader:
            loss = F.softmax_cross_entropy(model(x.astype(np.float64)), t)
            model.cleargrads()
            loss.backward()
            optimizer.update()

    # Every rank must hold exactly the same parameters.
    for name, p in model.named_params():
        spread = comm.allreduce(p.data, "max") - comm.allreduce(p.data, "min")
        assert not spread.any(), f"{name} differs between ranks by up to {abs(spread).max()}"

    def evaluate() -> dict:
        x = np.stack([shard[i][0] for i in range(len(shard))]).astype(np.float64)
        t = np.asarray([shard[i][1] for i in range(len(shard))])
        y = model(x)
        return {"loss": F.softmax_cross_entropy(y, t).data, "accuracy": F.accuracy(y, t).data}

    metrics = dist.create_multi_node_evaluator(evaluate, comm)()
    if comm.rank == 0:
        np.savez(args.out, **{name.replace("/", "."): p.data for name, p in model.named_params()})
        summary = {"size": comm.size, "skipped": optimizer.skipped_updates, **metrics}
        print("RESULT " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
