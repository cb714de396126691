"""Train a small CNN on MNIST with xdezero.

    python examples/train_mnist_cnn.py --epochs 3 --backend numpy

MNIST (about 11 MB) is downloaded on first use into ~/.xdezero (or $XDEZERO_DATA_DIR). Backends: numpy
(CPU), cupy (NVIDIA GPU), torch (its GPU when it sees one, else CPU), jax (its default device).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import numpy as np

import xdezero
import xdezero.functions as F
import xdezero.layers as L
from xdezero import cuda, optimizers
from xdezero.cli import ArgumentParser, non_negative_int, positive_float, positive_int
from xdezero.dataloaders import DataLoader
from xdezero.datasets import MNIST, DownloadError
from xdezero.models import Model
from xdezero.transforms import Compose, Normalize, ToFloat


class CNN(Model):
    """conv(16) - relu - pool - conv(32) - relu - pool - linear(128) - relu - linear(10), for 1x28x28 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = L.Conv2d(16, kernel_size=3, stride=1, pad=1)
        self.conv2 = L.Conv2d(32, kernel_size=3, stride=1, pad=1)
        self.fc1 = L.Linear(128)
        self.fc2 = L.Linear(10)

    def forward(self, x):
        x = F.pooling(F.relu(self.conv1(x)), 2, 2)  # (N, 16, 14, 14)
        x = F.pooling(F.relu(self.conv2(x)), 2, 2)  # (N, 32, 7, 7)
        x = F.reshape(x, (x.shape[0], -1))
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def converter(backend: str, parser: argparse.ArgumentParser):
    """A function moving NumPy batches to `backend` (CuPy is handled by the DataLoader's gpu flag)."""
    if backend in ("numpy", "cupy"):
        return lambda a: a
    try:
        module = importlib.import_module(backend)
    except ImportError:
        parser.error(f"backend {backend!r} is not installed")
    if backend == "torch":
        device = "cuda" if module.cuda.is_available() else "cpu"
        return lambda a: module.asarray(a, device=device)
    return importlib.import_module("jax.numpy").asarray


def main() -> None:
    # The xdezero command's checks: a bad argument is a one-line error with exit status 2, before any work.
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=100)
    parser.add_argument("--lr", type=positive_float, default=0.001, help="Adam learning rate")
    parser.add_argument("--backend", choices=("numpy", "cupy", "torch", "jax"), default="numpy")
    parser.add_argument("--limit", type=positive_int, default=None, help="train on the first LIMIT examples only")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args()

    if args.backend == "cupy" and not cuda.gpu_enable:
        parser.error("backend 'cupy' needs CuPy and a CUDA GPU")
    convert = converter(args.backend, parser)

    # Images stay (1, 28, 28) for the convolutions: scale to [0, 1] without flattening.
    transform = Compose([ToFloat(), Normalize(0.0, 255.0)])
    try:
        train_set = MNIST(train=True, transform=transform)
        test_set = MNIST(train=False, transform=transform)
    except DownloadError as e:
        sys.exit(f"error: MNIST is not available: {e}")
    if args.limit is not None:
        train_set.data, train_set.label = train_set.data[: args.limit], train_set.label[: args.limit]

    np.random.seed(args.seed)
    gpu = args.backend == "cupy"
    train_loader = DataLoader(train_set, args.batch_size, gpu=gpu, seed=args.seed)
    test_loader = DataLoader(test_set, args.batch_size, shuffle=False, gpu=gpu)
    model = CNN()
    if gpu:
        model.to_gpu()
    optimizer = optimizers.Adam(alpha=args.lr).setup(model)

    for epoch in range(args.epochs):
        start = time.perf_counter()
        sum_loss = sum_acc = 0.0
        for x, t in train_loader:
            x, t = convert(x), convert(t)
            y = model(x)
            loss = F.softmax_cross_entropy(y, t)
            acc = F.accuracy(y, t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            sum_loss += float(loss.data) * len(t)
            sum_acc += float(acc.data) * len(t)
        elapsed = time.perf_counter() - start

        test_acc = 0.0
        with xdezero.test_mode(), xdezero.no_grad():
            for x, t in test_loader:
                x, t = convert(x), convert(t)
                test_acc += float(F.accuracy(model(x), t).data) * len(t)
        n = len(train_set)
        print(
            f"epoch {epoch + 1}: loss {sum_loss / n:.4f}, train accuracy {sum_acc / n:.4f}, "
            f"test accuracy {test_acc / len(test_set):.4f} ({elapsed:.1f} s)"
        )


if __name__ == "__main__":
    main()
