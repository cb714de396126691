"""Data-parallel steps for the resume test: each rank its own shard, shuffled by its own loader, and dropout drawn
from NumPy's global generator seeded per rank, so that loaders and random streams differ between ranks.

    mpiexec -n N python resume_ranks.py STEPS OUT.npz [--resume CHECKPOINT] [--checkpoint CHECKPOINT]

Rank 0 writes the parameters and every rank's last batch (labels) and next random number to OUT.npz.
"""

from __future__ import annotations

import argparse

import numpy as np

import xdezero.functions as F
import xdezero.layers as L
from xdezero import distributed as dist
from xdezero.dataloaders import DataLoader
from xdezero.datasets import Spiral
from xdezero.models import Model
from xdezero.optimizers import Adam


class Net(Model):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = L.Linear(16, in_size=2, dtype=np.float64)
        self.l2 = L.Linear(3, in_size=16, dtype=np.float64)

    def forward(self, x):
        return self.l2(F.dropout(F.relu(self.l1(x)), 0.2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("steps", type=int)
    parser.add_argument("out")
    parser.add_argument("--resume")
    parser.add_argument("--checkpoint")
    args = parser.parse_args()

    comm = dist.create_communicator("auto")
    shard = dist.scatter_dataset(Spiral(), comm, shuffle=True, seed=0)
    np.random.seed(0)
    model = Net()
    optimizer = dist.create_multi_node_optimizer(Adam(), comm).setup(model)
    loader = DataLoader(shard, 25, shuffle=True, seed=comm.rank)
    np.random.seed(100 + comm.rank)  # each rank's dropout draws its own numbers
    if args.resume:
        np.random.random(3)  # overridden by the checkpoint
        dist.load_checkpoint(comm, args.resume, model=model, optimizer=optimizer, loader=loader)
    taken, last = 0, None
    while taken < args.steps:
        for x, t in loader:
            loss = F.softmax_cross_entropy(model(x.astype(np.float64)), t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            taken, last = taken + 1, t
            if taken == args.steps:
                break
    if args.checkpoint:
        dist.save_checkpoint(comm, args.checkpoint, model=model, optimizer=optimizer, loader=loader)
    lasts = [comm.bcast_obj(last if comm.rank == r else None, root=r) for r in range(comm.size)]
    nexts = [comm.bcast_obj(np.random.random() if comm.rank == r else None, root=r) for r in range(comm.size)]
    if comm.rank == 0:
        arrays = {name.replace("/", "."): p.data for name, p in model.named_params()}
        arrays.update({f"last{r}": a for r, a in enumerate(lasts)}, next_random=np.asarray(nexts))
        np.savez(args.out, **arrays)


if __name__ == "__main__":
    main()
