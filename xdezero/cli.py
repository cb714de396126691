"""The `xdezero` console command.

xdezero info                      versions, installed and usable backends, GPUs
xdezero train spiral [options]    train an MLP on the spiral data set (see `xdezero train spiral -h`)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

import xdezero
from xdezero.backends import to_numpy

__all__ = ["main"]

BACKENDS = ("numpy", "cupy", "torch", "jax")


class UsageError(Exception):
    """A problem with what was asked for (not a bug): reported in one line, exit status 2."""


# --- backends ----------------------------------------------------------------------------------------


def _backend_converter(name: str) -> Callable[[np.ndarray], Any]:
    """A function moving NumPy arrays to backend `name`, or UsageError saying why it cannot be used."""
    if name == "numpy":
        return lambda a: a
    if importlib.util.find_spec(name) is None:
        raise UsageError(f"backend {name!r} is not usable: {name} is not installed")
    try:
        module = importlib.import_module(name)
    except Exception as e:
        raise UsageError(f"backend {name!r} is not usable: importing {name} failed ({e})") from None
    if name == "cupy":
        from xdezero.backends import is_cupy_available, to_gpu

        if not is_cupy_available():
            raise UsageError("backend 'cupy' is not usable: CuPy sees no CUDA GPU")
        return to_gpu
    if name == "torch":
        device = "cuda" if module.cuda.is_available() else "cpu"
        return lambda a: module.asarray(a, device=device)
    jnp = importlib.import_module("jax.numpy")
    return jnp.asarray


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


def train_spiral(args: argparse.Namespace, out: TextIO) -> int:
    import xdezero.functions as F
    from xdezero.dataloaders import DataLoader
    from xdezero.datasets import Spiral
    from xdezero.models import MLP
    from xdezero.optimizers import SGD

    convert = _backend_converter(args.backend)
    if args.plot:
        _check_matplotlib()
    np.random.seed(args.seed)  # this program owns the process: make the weight initialisation reproducible
    train_set = Spiral(train=True)
    loader = DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    model = MLP((args.hidden, 3), activation=getattr(F, args.activation))
    optimizer = SGD(lr=args.lr).setup(model)
    print(
        f"training MLP(({args.hidden}, 3), {args.activation}) on spiral ({len(train_set)} points) with SGD "
        f"lr={args.lr}, batch size {args.batch_size}, backend {args.backend}",
        file=out,
    )
    progress = Progress(args.epochs, len(loader), out)
    losses = []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        sum_loss = sum_acc = 0.0
        for done, (x, t) in enumerate(loader, 1):
            x, t = convert(x), convert(t)
            y = model(x)
            loss = F.softmax_cross_entropy(y, t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            sum_loss += float(loss.data) * len(t)
            sum_acc += float(F.accuracy(y, t).data) * len(t)
            progress.batch(epoch, done)
        losses.append(sum_loss / len(train_set))
        progress.epoch(epoch, losses[-1], sum_acc / len(train_set))
    elapsed = time.perf_counter() - start

    with xdezero.no_grad():
        train_acc = float(F.accuracy(model(convert(train_set.data)), convert(train_set.label)).data)
        test_set = Spiral(train=False)
        test_acc = float(F.accuracy(model(convert(test_set.data)), convert(test_set.label)).data)
    print(
        f"done: {args.epochs} epochs in {elapsed:.1f} s; "
        f"training accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}",
        file=out,
    )
    if args.plot:
        _plot(args.plot, model, convert, train_set, losses)
        print(f"wrote {args.plot}", file=out)
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


def _probe(name: str) -> str:
    """One line saying whether backend `name` is installed and usable; never raises."""
    if importlib.util.find_spec(name) is None:
        return "not installed"
    try:
        module = importlib.import_module(name)
        version = getattr(module, "__version__", "?")
        if name == "cupy":
            if not module.cuda.is_available():
                return f"{version}, installed but unusable (no CUDA GPU)"
            module.zeros(1).sum()
            return f"{version}, usable"
        if name == "torch":
            module.zeros(1).sum()
            cuda = "with CUDA" if module.cuda.is_available() else "CPU only"
            return f"{version}, usable ({cuda})"
        if name == "jax":
            jnp = importlib.import_module("jax.numpy")
            jnp.zeros(1).sum()
            platforms = sorted({d.platform for d in module.devices()})
            return f"{version}, usable (devices: {', '.join(platforms)})"
        module.asarray([1.0])
        return f"{version}, usable"
    except Exception as e:
        return f"installed but unusable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _cupy_gpus() -> str:
    if importlib.util.find_spec("cupy") is None:
        return "none (CuPy is not installed)"
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        names = []
        for i in range(count):
            name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
            names.append(f"{i}: {name.decode() if isinstance(name, bytes) else name}")
        return "; ".join(names) if names else "none"
    except Exception as e:
        return f"none ({type(e).__name__})"


def info(out: TextIO) -> int:
    rows = [
        ("xdezero", xdezero.__version__),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("NumPy", np.__version__),
        ("array-api-compat", _version("array-api-compat")),
    ]
    rows += [(f"backend {name}", _probe(name)) for name in ("numpy", "array_api_strict", *BACKENDS[1:])]
    rows.append(("GPUs (CuPy)", _cupy_gpus()))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    return 0


# --- entry point ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xdezero", description="xdezero: DeZero over any array-API array.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="show versions, backends and GPUs")
    train = commands.add_parser("train", help="train an example model")
    tasks = train.add_subparsers(dest="task", required=True, metavar="TASK")
    spiral = tasks.add_parser("spiral", help="an MLP on the 3-class spiral data set")
    spiral.add_argument("--epochs", type=_positive(int), default=300, help="passes over the data (default 300)")
    spiral.add_argument("--hidden", type=_positive(int), default=30, help="hidden units (default 30)")
    spiral.add_argument("--batch-size", type=_positive(int), default=30, help="examples per step (default 30)")
    spiral.add_argument("--lr", type=_positive(float), default=1.0, help="SGD learning rate (default 1.0)")
    spiral.add_argument(
        "--activation", choices=("relu", "sigmoid", "tanh"), default="relu", help="hidden activation (default relu)"
    )
    spiral.add_argument("--backend", choices=BACKENDS, default="numpy", help="array library (default numpy)")
    spiral.add_argument("--plot", metavar="FILE", help="write a PNG with the loss curve and the decision regions")
    spiral.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `xdezero` command; returns the exit status (0 success, 2 usage errors)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            return info(sys.stdout)
        return train_spiral(args, sys.stdout)
    except UsageError as e:
        print(f"xdezero: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nxdezero: interrupted", file=sys.stderr)
        return 130
