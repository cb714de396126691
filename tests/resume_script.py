"""Training steps for the exact-resume test (tests/test_checkpoint.py), one process per call:

    python tests/resume_script.py LIBRARY OPTIMIZER STEPS OUT.npz [--resume CHECKPOINT] [--checkpoint CHECKPOINT]

Builds an MLP with dropout on LIBRARY's arrays, a shuffled DataLoader over the spiral data and OPTIMIZER, all from
seed 0; with --resume, first draws from every random stream (which the checkpoint must override) and loads the
checkpoint; takes STEPS steps (crossing epochs); with --checkpoint, saves one after them; writes the parameters.
"""

from __future__ import annotations

import argparse

import numpy as np

import xdezero
import xdezero.functions as F
from xdezero import DataLoader, layers, models, optimizers
from xdezero.backends import to_library, to_numpy, uniform


class Points:
    """120 points in the plane with labels 0-2 (a fixed draw)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(11)
        self.x = rng.standard_normal((120, 2)).astype(np.float32)
        self.t = rng.integers(0, 3, 120)

    def __len__(self) -> int:
        return len(self.t)

    def __getitem__(self, i: int):
        return self.x[i], self.t[i]


class DropoutMLP(models.Model):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = layers.Linear(16, in_size=2)
        self.l2 = layers.Linear(3, in_size=16)

    def forward(self, x):
        return self.l2(F.dropout(F.relu(self.l1(x)), 0.3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("optimizer", choices=["Adam", "MomentumSGD"])
    parser.add_argument("steps", type=int)
    parser.add_argument("out")
    parser.add_argument("--resume")
    parser.add_argument("--checkpoint")
    args = parser.parse_args()
    if args.library == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)

    np.random.seed(0)
    xdezero.seed(0)
    model = DropoutMLP()
    model.to_library(args.library)
    optimizer = getattr(optimizers, args.optimizer)().setup(model)
    optimizer.add_hook(optimizers.WeightDecay(1e-4))
    loader = DataLoader(Points(), 32, shuffle=True)  # 4 batches an epoch, the last of 24
    if args.resume:
        np.random.random(7)  # draws that the checkpoint's random state must override
        uniform((5,), to_library(np.zeros(1, np.float32), args.library))
        xdezero.load_checkpoint(args.resume, model=model, optimizer=optimizer, loader=loader)

    taken = 0
    while taken < args.steps:
        for x, t in loader:
            loss = F.softmax_cross_entropy(model(to_library(x, args.library)), to_library(t, args.library))
            model.cleargrads()
            loss.backward()
            optimizer.update()
            taken += 1
            if taken == args.steps:
                break
    if args.checkpoint:
        xdezero.save_checkpoint(args.checkpoint, model=model, optimizer=optimizer, loader=loader)
    np.savez(args.out, **{k: to_numpy(p.data) for k, p in model.named_params()})


if __name__ == "__main__":
    main()
