"""The `xdezero` console command.

xdezero info                      versions, installed and usable backends, GPUs
xdezero train spiral [options]    train an MLP on the spiral data set (see `xdezero train spiral -h`)
xdezero train mnist [options]     train an MLP on MNIST (downloaded once into the data folder)

Under a launcher (`mpiexec -n 2 xdezero train spiral`, `torchrun --nproc-per-node 2 -m xdezero train spiral`)
training is data-parallel: --batch-size is the global batch, each process computes the gradient of its share of
every batch, and only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import io
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

import xdezero
from xdezero.backends import BackendUnavailable, cuda_devices, describe_library, library_converter, to_numpy

__all__ = ["main"]

BACKENDS = ("numpy", "cupy", "torch", "jax")


class UsageError(Exception):
    """A problem with what was asked for (not a bug): reported in one line, exit status 2."""


# --- backends ----------------------------------------------------------------------------------------


def _backend_converter(name: str) -> Callable[[np.ndarray], Any]:
    """A function moving NumPy arrays to backend `name`, or UsageError saying why it cannot be used."""
    try:
        return library_converter(name)
    except BackendUnavailable as e:
        raise UsageError(str(e)) from None


# --- progress output ---------------------------------------------------------------------------------


class Progress:
    """One line per epoch; on a terminal, also a bar on the last line, redrawn as batches finish."""

    def __init__(self, total_epochs: int, batches: int, stream: TextIO) -> None:
        self.total, self.batches, self.stream = total_epochs, batches, stream
        self.tty = stream.isatty()
        self.width = len(str(total_epochs))

    def batch(self, epoch: int, done: int) -> None:
        if not self.tty:
            return
        fraction = ((epoch - 1) * self.batches + done) / (self.total * self.batches)
        filled = int(30 * fraction)
        bar = "#" * filled + "-" * (30 - filled)
        self.stream.write(f"\r[{bar}] {100 * fraction:5.1f}%  epoch {epoch:{self.width}d}/{self.total}")
        self.stream.flush()

    def epoch(self, epoch: int, loss: float, acc: float) -> None:
        clear = "\r\033[K" if self.tty else ""
        self.stream.write(f"{clear}epoch {epoch:{self.width}d}/{self.total}  loss {loss:.4f}  accuracy {acc:.4f}\n")
        self.stream.flush()


# --- train spiral --------------------------------------------------------------------------------------


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def _check_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib, which is not installed (pip install matplotlib)")


def _communicator(args: argparse.Namespace) -> Any:
    from xdezero import distributed as dist

    try:
        return dist.create_communicator(args.communicator)
    except ImportError as e:
        raise UsageError(f"--communicator {args.communicator}: {e}") from None


def _load_task(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    """(training set, test set, model, description) for `args.task`."""
    import xdezero.functions as F
    from xdezero.datasets import MNIST, Spiral
    from xdezero.models import MLP

    activation = getattr(F, args.activation)
    if args.task == "spiral":
        train_set = Spiral(train=True)
        model = MLP((args.hidden, 3), activation=activation)
        return train_set, Spiral(train=False), model, f"spiral ({len(train_set)} points)"
    try:
        train_set, test_set = MNIST(train=True), MNIST(train=False)
    except OSError as e:
        raise UsageError(f"cannot load MNIST: {e}") from None
    model = MLP((args.hidden, 10), activation=activation)
    return train_set, test_set, model, f"MNIST ({len(train_set)} images)"


def _my_rows(n: int, comm: Any) -> slice:
    """This rank's rows of a batch of `n`: contiguous, sizes differing by at most one."""
    return slice(n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size)


def _use_gpu_of_rank(backend: str, intra_rank: int) -> None:
    """Several processes on one node: each takes GPU `intra_rank` (modulo the count) rather than all GPU 0."""
    if backend == "cupy":
        import cupy

        cupy.cuda.Device(intra_rank % cupy.cuda.runtime.getDeviceCount()).use()
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(intra_rank % torch.cuda.device_count())


def _accuracy(model: Any, dataset: Any, convert: Callable, comm: Any) -> float:
    """Accuracy over `dataset`, each rank evaluating its contiguous part."""
    import xdezero.functions as F

    rows = range(len(dataset))[_my_rows(len(dataset), comm)]
    correct = 0.0
    if len(rows):
        examples = [dataset[i] for i in rows]
        x = np.asarray([e[0] for e in examples])
        t = np.asarray([e[1] for e in examples])
        with xdezero.no_grad():
            correct = float(F.accuracy(model(convert(x)), convert(t)).data) * len(rows)
    return comm.allreduce(correct) / len(dataset)


def train(args: argparse.Namespace, comm: Any, out: TextIO) -> int:
    """Train the MLP of `args.task` with SGD; data-parallel over `comm`, printing on rank 0 only."""
    import xdezero.functions as F
    from xdezero import distributed as dist
    from xdezero.dataloaders import DataLoader
    from xdezero.optimizers import SGD

    if comm.rank != 0:
        out = io.StringIO()  # only rank 0 reports
    if args.batch_size < comm.size:
        raise UsageError(
            f"--batch-size {args.batch_size} is the global batch: it must be at least {comm.size}, "
            "the number of processes"
        )
    convert = _backend_converter(args.backend)
    if comm.intra_size > 1:
        _use_gpu_of_rank(args.backend, comm.intra_rank)
    plot = getattr(args, "plot", None)
    if plot:
        _check_matplotlib()
    np.random.seed(args.seed)  # this program owns the process: make the weight initialisation reproducible
    train_set, test_set, model, description = _load_task(args)
    # Every rank walks the same global order; each computes the gradient of its rows of every batch, so the
    # steps are those of one process up to floating-point order.
    loader = DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    optimizer = SGD(lr=args.lr)
    if comm.size > 1:
        optimizer = dist.create_multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)
    processes = f", {comm.size} processes ({comm.name})" if comm.size > 1 else ""
    print(
        f"training MLP(({args.hidden}, {3 if args.task == 'spiral' else 10}), {args.activation}) on {description} "
        f"with SGD lr={args.lr}, batch size {args.batch_size}, backend {args.backend}{processes}",
        file=out,
    )
    progress = Progress(args.epochs, len(loader), out)
    losses = []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        sum_loss = sum_acc = 0.0
        for done, (x, t) in enumerate(loader, 1):
            batch = len(t)
            rows = _my_rows(batch, comm)
            x, t = convert(x[rows]), convert(t[rows])
            mine = rows.stop - rows.start
            y = model(x)
            loss = F.softmax_cross_entropy(y, t) if mine else F.sum(y) * 0.0
            # The optimizer averages the ranks' gradients: weight each by its share of the batch, so that an
            # uneven split (a last batch smaller than the rest) still gives the gradient of the whole batch.
            objective = loss if mine * comm.size == batch else loss * (mine * comm.size / batch)
            model.cleargrads()
            objective.backward()
            optimizer.update()
            if mine:
                sum_loss += float(loss.data) * mine
                sum_acc += float(F.accuracy(y, t).data) * mine
            progress.batch(epoch, done)
        if comm.size > 1:
            sums = comm.allreduce({"loss": sum_loss, "acc": sum_acc})
            sum_loss, sum_acc = sums["loss"], sums["acc"]
        losses.append(sum_loss / len(train_set))
        progress.epoch(epoch, losses[-1], sum_acc / len(train_set))
    elapsed = time.perf_counter() - start

    train_acc = _accuracy(model, train_set, convert, comm)
    test_acc = _accuracy(model, test_set, convert, comm)
    print(
        f"done: {args.epochs} epochs in {elapsed:.1f} s; "
        f"training accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}",
        file=out,
    )
    if comm.rank == 0:  # parameters are the same on every rank: one writer
        if args.save:
            try:
                model.save_weights(args.save)
            except OSError as e:
                raise UsageError(f"cannot write {args.save}: {e.strerror or e}") from None
            print(f"wrote {args.save}", file=out)
        if plot:
            _plot(plot, model, convert, train_set, losses)
            print(f"wrote {plot}", file=out)
    return 0


def _plot(path: str, model: Any, convert: Callable, dataset: Any, losses: Sequence[float]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x, t = dataset.data, dataset.label
    lo, hi = x.min(axis=0) - 0.1, x.max(axis=0) + 0.1
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(x.dtype)
    with xdezero.no_grad():
        scores = to_numpy(model(convert(grid)).data)
    regions = np.argmax(scores, axis=1).reshape(gx.shape)

    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)
    ax_loss, ax_map = fig.subplots(1, 2)
    ax_loss.plot(np.arange(1, len(losses) + 1), losses)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
    ax_map.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5, 2.5], colors=["#fdd", "#dfd", "#ddf"])
    for c, (color, marker) in enumerate(zip(("#c00", "#070", "#00c"), ("o", "x", "^"))):
        ax_map.scatter(x[t == c, 0], x[t == c, 1], s=14, c=color, marker=marker, label=f"class {c}")
    ax_map.set(xlabel="x0", ylabel="x1", title="decision regions")
    ax_map.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


# --- info --------------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info(out: TextIO) -> int:
    rows = [
        ("xdezero", xdezero.__version__),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("NumPy", np.__version__),
        ("array-api-compat", _version("array-api-compat")),
    ]
    rows += [(f"backend {name}", describe_library(name)) for name in ("numpy", "array_api_strict", *BACKENDS[1:])]
    rows.append(("GPUs (CuPy)", cuda_devices()))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    return 0


# --- entry point ---------------------------------------------------------------------------------------


def _add_training_options(task: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    d = defaults
    task.add_argument(
        "--epochs", type=_positive(int), default=d["epochs"], help=f"passes over the data (default {d['epochs']})"
    )
    task.add_argument(
        "--hidden", type=_positive(int), default=d["hidden"], help=f"hidden units (default {d['hidden']})"
    )
    task.add_argument(
        "--batch-size",
        type=_positive(int),
        default=d["batch_size"],
        help=f"examples per step, over all processes together (default {d['batch_size']})",
    )
    task.add_argument("--lr", type=_positive(float), default=d["lr"], help=f"SGD learning rate (default {d['lr']})")
    task.add_argument(
        "--activation", choices=("relu", "sigmoid", "tanh"), default="relu", help="hidden activation (default relu)"
    )
    task.add_argument("--backend", choices=BACKENDS, default="numpy", help="array library (default numpy)")
    task.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling (default 0)")
    task.add_argument("--save", metavar="FILE", help="write the trained weights to FILE (.npz; rank 0 only)")
    task.add_argument(
        "--communicator",
        choices=("auto", "mpi", "torch", "nccl", "single"),
        default="auto",
        help="how processes exchange gradients (default auto: MPI under mpiexec/srun, torch under torchrun)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xdezero", description="xdezero: DeZero over any array-API array.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="show versions, backends and GPUs")
    train = commands.add_parser("train", help="train an example model")
    tasks = train.add_subparsers(dest="task", required=True, metavar="TASK")
    spiral = tasks.add_parser("spiral", help="an MLP on the 3-class spiral data set")
    _add_training_options(spiral, {"epochs": 300, "hidden": 30, "batch_size": 30, "lr": 1.0})
    spiral.add_argument("--plot", metavar="FILE", help="write a PNG with the loss curve and the decision regions")
    mnist = tasks.add_parser("mnist", help="an MLP on MNIST digits (downloaded on first use)")
    _add_training_options(mnist, {"epochs": 5, "hidden": 1000, "batch_size": 100, "lr": 0.1})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `xdezero` command; returns the exit status (0 success, 2 usage errors)."""
    args = _parser().parse_args(argv)
    rank = 0
    try:
        if args.command == "info":
            return info(sys.stdout)
        comm = _communicator(args)
        rank = comm.rank
        return train(args, comm, sys.stdout)
    except UsageError as e:
        if rank == 0:  # the same error on every rank: said once
            print(f"xdezero: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nxdezero: interrupted", file=sys.stderr)
        return 130
