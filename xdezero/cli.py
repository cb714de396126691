"""The `xdezero` console command.

xdezero --version                 the installed version
xdezero info                      versions, installed and usable backends, GPUs
xdezero train spiral [options]    train an MLP on the spiral data set (see `xdezero train spiral -h`)
xdezero train mnist [options]     train an MLP or a CNN on MNIST (downloaded once into the data folder)
xdezero eval FILE                 accuracy of weights saved by `train --save` on the task's test split

Every argument is checked before training starts: a bad one is one line on stderr and exit status 2.

Under a launcher (`mpiexec -n 2 xdezero train spiral`, `torchrun --nproc-per-node 2 -m xdezero train spiral`)
training is data-parallel: --batch-size is the global batch, each process computes the gradient of its share of
every batch, and only rank 0 prints and writes files.

One file (about 700 lines) for the command's one concern: its arguments, their checks and the loops they drive
are read together; the tasks' data and models live in `_tasks.py`, the progress display in `_progress.py`, a run's
stop, checkpoint record and resume check in `_run.py`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import xdezero
from xdezero._progress import Progress, wants_bar
from xdezero._run import STOP_STATUS, ResumeError, RunRecord, Stopped, StopRequests, check_resume, run_settings
from xdezero._tasks import TaskError, build_model, load_data, load_test_data
from xdezero.backends import (
    BackendUnavailable,
    allocator_info,
    cuda_devices,
    describe_library,
    libraries,
    library,
    library_converter,
    to_numpy,
    tune_allocator,
)

__all__ = ["ArgumentParser", "main", "non_negative_int", "positive_float", "positive_int"]

BACKENDS = tuple(row.name for row in libraries())  # --backend: every library of the registry
OPTIMIZERS = ("sgd", "momentum", "adam")
# Learning rates that train each task in the default epochs (Adam's is its alpha).
DEFAULT_LR = {
    ("spiral", "sgd"): 1.0,
    ("spiral", "momentum"): 0.1,
    ("spiral", "adam"): 0.01,
    ("mnist", "sgd"): 0.1,
    ("mnist", "momentum"): 0.01,
    ("mnist", "adam"): 0.001,
}
# What the weights' sidecar (FILE.json beside FILE.npz) records, so that `xdezero eval` rebuilds the model.
SIDECAR_KEYS = ("task", "model", "hidden", "activation")
# Each task's defaults (hidden: None = the model's own, "help" says which).
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "spiral": {"epochs": 300, "hidden": 30, "help": 30, "batch_size": 30},
    "mnist": {"epochs": 5, "hidden": None, "help": "1000 for the MLP, 128 for the CNN", "batch_size": 100},
}
# A tiny problem gains nothing from more threads, and on a busy machine spinning OpenMP threads cost 10x.
SMALL_TASK_THREADS = {"spiral": 1}


class UsageError(Exception):
    """A problem with what was asked for (not a bug): reported in one line, exit status 2."""


# --- argument checks (also used by the scripts in examples/) ----------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `PROG: error: MESSAGE (see 'PROG -h')`, with exit status 2, and that
    takes options only as spelled (no abbreviations: `--epoch 3` is an error, not `--epochs 3`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:
        """Exit 2 with the message and a pointer to the command's help."""
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


def _number(text: str, convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str) -> Any:
    """`convert(text)` if it parses and `accept`s the value, else argparse's error saying what was expected."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An argparse type for seeds: an integer in [0, 2**32 - 1], the range NumPy's seed accepts."""
    return _number(text, int, lambda v: 0 <= v < 2**32, "an integer from 0 to 4294967295")


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (nan and inf would train to nan)."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")


def _existing_folder_for(text: str) -> None:
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; name a file")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: the directory {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: the directory {folder!r} is not writable")


def weights_file(text: str) -> str:
    """An argparse type for --save: a file in an existing, writable directory."""
    _existing_folder_for(text)
    return text


def image_file(text: str) -> str:
    """An argparse type for --plot: a file in an existing directory, of a format matplotlib writes."""
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf", "raw", "rgba"})  # pgf needs LaTeX
    extension = os.path.splitext(text)[1].lstrip(".").lower()
    if extension not in formats:
        raise argparse.ArgumentTypeError(
            f"cannot tell the image format of {text!r}: end the name with one of .{', .'.join(formats)}"
        )
    _existing_folder_for(text)
    return text


# --- backends, devices, threads ------------------------------------------------------------------------


def _converter(backend: str, device: str | None) -> tuple[Callable[[np.ndarray], Any], str]:
    """(a function moving NumPy arrays to `backend` on `device`, the device's name); UsageError if unusable.
    `device` is a string of the one device grammar (cpu, cpu:N, gpu:N, cuda:N, ..., see xdezero.backends)."""
    try:
        convert = library_converter(backend)
    except BackendUnavailable as e:
        raise UsageError(str(e)) from None
    if device is None:
        return convert, ""
    row = library(backend)
    try:
        found = row.find(device, where=f"--device {device}", subject=f"backend {backend}", text=True)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if found.gpu is not None and row.use_gpu is not None:
        row.use_gpu(found.gpu)  # what the library allocates without being told where lands there too
    return (lambda a: row.put(a, found.device)), found.name


def _use_gpu_of_rank(backend: str, intra_rank: int) -> None:
    """Several processes on one node: each takes GPU `intra_rank` (modulo the count) rather than all GPU 0."""
    row = library(backend)
    if row.use_gpu is not None and (gpus := row.gpu_probe().devices):
        row.use_gpu(intra_rank % len(gpus))


def _set_threads(backend: str, threads: int | None, given: bool) -> Callable[[], None]:
    """Limit the backend's CPU threads to `threads` for this run (its registry row says how); returns what
    restores the old count. A backend that takes none (JAX sizes its pool when imported) with --threads given is
    an error. `given`: the user asked (not the task's default)."""
    if threads is None or backend not in BACKENDS:
        return lambda: None
    row = library(backend)
    if row.threads is None:  # refused whether or not the library is installed
        if given:
            takers = [f"{r.label}'s" for r in reversed(libraries()) if r.threads is not None]  # torch's and NumPy's
            raise UsageError(
                f"--threads sets {', '.join(takers[:-1])} and {takers[-1]} CPU threads; backend {backend} takes "
                f"none ({row.no_threads})"
            )
        return lambda: None
    if not row.installed():
        return lambda: None  # a missing library is reported by _converter, in one line
    try:
        return row.threads.limit(threads)
    except BackendUnavailable as e:
        if given:
            raise UsageError(f"--threads {threads}: {e}") from None
        return lambda: None


# --- train ---------------------------------------------------------------------------------------------


def _communicator(args: argparse.Namespace) -> Any:
    from xdezero import distributed as dist

    try:
        return dist.create_communicator(args.communicator)
    except ImportError as e:
        raise UsageError(f"--communicator {args.communicator}: {e}") from None


def _my_rows(n: int, comm: Any) -> slice:
    """This rank's rows of a batch of `n`: contiguous, sizes differing by at most one."""
    return slice(n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size)


def _accuracy(model: Any, dataset: Any, convert: Callable, comm: Any, batch: int = 1000) -> float:
    """Accuracy over `dataset`, each rank evaluating its contiguous part, `batch` examples at a time."""
    import xdezero.functions as F

    rows = range(len(dataset))[_my_rows(len(dataset), comm)]
    correct = 0.0
    with xdezero.no_grad(), xdezero.test_mode():
        for start in range(0, len(rows), batch):
            examples = [dataset[i] for i in rows[start : start + batch]]
            x = np.asarray([e[0] for e in examples])
            t = np.asarray([e[1] for e in examples])
            correct += float(F.accuracy(model(convert(x)), convert(t)).data) * len(examples)
    return comm.allreduce(correct) / len(dataset)


def _optimizer(name: str, lr: float) -> Any:
    from xdezero.optimizers import SGD, Adam, MomentumSGD

    return {"sgd": SGD, "momentum": MomentumSGD}[name](lr=lr) if name != "adam" else Adam(alpha=lr)


def _load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    try:
        return load_data(args.task, getattr(args, "model", "mlp"), getattr(args, "data", None))
    except TaskError as e:
        raise UsageError(str(e)) from None


def _npz_to_read(text: str) -> str:
    """The file named, or, where there is none, that name with the .npz that writing it would have appended."""
    return text if os.path.exists(text) or text.endswith(".npz") else text + ".npz"


def train(args: argparse.Namespace, comm: Any, out: TextIO) -> int:
    """Train the model of `args.task`; data-parallel over `comm`, printing on rank 0 only. Returns the exit
    status: 0, or 130 / 143 when SIGINT / SIGTERM stopped it (after writing --checkpoint and --save)."""
    import xdezero.functions as F
    from xdezero import distributed as dist
    from xdezero.dataloaders import DataLoader

    if comm.rank != 0:
        out = io.StringIO()  # only rank 0 reports
    if args.batch_size < comm.size:
        raise UsageError(
            f"--batch-size {args.batch_size} is the global batch: it must be at least {comm.size}, "
            "the number of processes"
        )
    checkpoint = _weights_path(args.checkpoint) if args.checkpoint else None  # .npz appended, as the file gets it
    if args.checkpoint_every is not None and not checkpoint:
        raise UsageError(f"--checkpoint-every {args.checkpoint_every} needs --checkpoint FILE, the file to write")
    if checkpoint and args.save and os.path.abspath(checkpoint) == os.path.abspath(_weights_path(args.save)):
        raise UsageError(
            f"--save and --checkpoint both name {checkpoint}: give the weights and the checkpoint a file each"
        )
    convert, device = _converter(args.backend, args.device)
    if comm.intra_size > 1 and args.device is None:
        _use_gpu_of_rank(args.backend, comm.intra_rank)
    model_name = getattr(args, "model", "mlp")
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.task, args.optimizer]
    hidden = args.hidden or (128 if model_name == "cnn" else 1000)
    run = RunRecord(run_settings(args, model_name, hidden, lr))
    resume = _npz_to_read(args.resume) if args.resume else None
    try:
        done, taken = check_resume(resume, run.settings, comm) if resume else (0, 0)
    except ResumeError as e:
        raise UsageError(str(e)) from None
    xdezero.seed(args.seed)  # this program owns the process: NumPy's weight initialisation and xdezero's streams
    train_set, test_set, description = _load(args)
    description = description.replace("{n}", str(len(train_set)))
    if args.batch_size > len(train_set):
        if args.batch_size_given:
            raise UsageError(
                f"--batch-size {args.batch_size} is larger than the {len(train_set)} training examples: give at most "
                f"{len(train_set)}"
            )
        args.batch_size = len(train_set)  # a data set smaller than one default batch: one batch of all of it
    model = build_model(args.task, model_name, hidden, args.activation)
    with xdezero.no_grad(), xdezero.test_mode():
        # Parameters take their shapes from a first input: create them now (the same draws a first step would
        # make), so that a checkpoint can be loaded into them or written before any step.
        model(convert(np.asarray([train_set[0][0]])))
    # Every rank walks the same global order; each computes the gradient of its rows of every batch, so the
    # steps are those of one process up to floating-point order.
    loader = DataLoader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    optimizer = _optimizer(args.optimizer, lr)
    if comm.size > 1:
        optimizer = dist.create_multi_node_optimizer(optimizer, comm)
    optimizer.setup(model)
    state = {"model": model, "optimizer": optimizer, "loader": loader, "run": run}
    if resume:
        try:
            dist.load_checkpoint(comm, resume, **state)
        except (OSError, ValueError, TypeError) as e:
            raise UsageError(f"--resume {resume}: {e}") from None

    classes = 3 if args.task == "spiral" else 10
    shape = f"MLP(({hidden}, {classes}), {args.activation})" if model_name == "mlp" else f"CNN({hidden})"
    on = f" on {device}" if device else ""
    threads = ""
    setting = library(args.backend).threads
    if setting is not None:
        count = setting.current() if setting.current else args.threads  # torch's own count; NumPy's if given
        if count:
            threads = f", {count} {setting.unit}{'s' if count > 1 else ''}"
    processes = f", {comm.size} processes ({comm.name})" if comm.size > 1 else ""
    if not args.quiet:
        if resume:
            print(f"resuming from {resume} at epoch {done + 1}, batch {taken + 1} of {len(loader)}", file=out)
        print(
            f"training {shape} on {description} with {args.optimizer} lr={lr:g}, batch size {args.batch_size}, "
            f"backend {args.backend}{on}{threads}{processes}",
            file=out,
        )

    def step(x: Any, t: Any, scale: float, has_rows: bool) -> tuple:
        y = model(x)
        loss = F.softmax_cross_entropy(y, t) if has_rows else F.sum(y) * 0.0
        objective = loss if scale == 1.0 else loss * scale
        model.cleargrads()
        objective.backward()
        optimizer.update()
        return y, loss

    def write_checkpoint() -> None:
        run.elapsed = elapsed_before + time.perf_counter() - start
        try:
            dist.save_checkpoint(comm, checkpoint, **state)
        except OSError as e:
            raise UsageError(f"cannot write the checkpoint {checkpoint}: {e.strerror or e}") from None

    # Created after loading: a captured step records on its first calls, and then reads the loaded state.
    run_step = xdezero.capture(step) if args.capture else step
    progress = Progress(args.epochs, len(loader), out, bar=wants_bar(out), quiet=args.quiet)
    every = args.checkpoint_every or 1
    elapsed_before, start = run.elapsed, time.perf_counter()
    stop = 0
    with StopRequests(comm, active=bool(checkpoint or args.save)) as stops:
        try:
            for epoch in range(loader.epoch + 1, args.epochs + 1):
                progress.start_epoch(epoch, done=loader.iteration)
                for x, t in loader:
                    batch = len(t)
                    rows = _my_rows(batch, comm)
                    x, t = convert(x[rows]), convert(t[rows])
                    mine = rows.stop - rows.start
                    # The optimizer averages the ranks' gradients: weight each by its share of the batch, so that
                    # an uneven split (a last batch smaller than the rest) still gives the whole batch's gradient.
                    y, loss = run_step(x, t, mine * comm.size / batch, mine > 0)
                    batch_loss = float(loss.data)
                    if mine:
                        run.sum_loss += batch_loss * mine
                        run.sum_acc += float(F.accuracy(y, t).data) * mine
                    progress.batch(batch_loss)
                    # Between two steps; after an epoch's last one the epoch is finished first.
                    if loader.iteration < len(loader) and (stop := stops.requested()):
                        break
                else:
                    sum_loss, sum_acc = run.sum_loss, run.sum_acc
                    if comm.size > 1:
                        sums = comm.allreduce({"loss": sum_loss, "acc": sum_acc})
                        sum_loss, sum_acc = sums["loss"], sums["acc"]
                    run.losses.append(sum_loss / len(train_set))
                    run.sum_loss = run.sum_acc = 0.0
                    progress.end_epoch(epoch, run.losses[-1], sum_acc / len(train_set))
                    stop = stops.requested()
                if checkpoint and (stop or epoch % every == 0 or epoch == args.epochs):
                    write_checkpoint()
                if stop:
                    break
        finally:
            progress.close()
    elapsed = elapsed_before + time.perf_counter() - start

    # The weights are written before the final evaluation, which a Ctrl-C may still cut short.
    weights = _save(model, args, model_name, hidden) if args.save and comm.rank == 0 else None
    if stop:
        if weights:
            print(f"wrote {weights} and {_sidecar(weights)}", file=out)
        if comm.rank == 0:
            if loader.iteration:
                at = f"in epoch {epoch} after batch {loader.iteration} of {len(loader)}"
            else:
                at = f"after epoch {epoch} of {args.epochs}"
            then = (
                f"; wrote {checkpoint}: go on with the same arguments and --resume {checkpoint}" if checkpoint else ""
            )
            print(f"xdezero: stopped by {signal.Signals(stop).name} {at}{then}", file=sys.stderr)
        return STOP_STATUS[stop]
    train_acc = _accuracy(model, train_set, convert, comm)
    test_acc = _accuracy(model, test_set, convert, comm)
    print(
        f"done: {args.epochs} epoch{'s' if args.epochs != 1 else ''} in {elapsed:.1f} s; final weights: training "
        f"accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}"
        + (
            ""
            if args.quiet
            else " (the running accuracy above is averaged over each epoch's batches while the weights were still "
            "changing)"
        ),
        file=out,
    )
    if weights:
        print(f"wrote {weights} and {_sidecar(weights)}", file=out)
    plot = getattr(args, "plot", None)
    if plot and comm.rank == 0:  # parameters are the same on every rank: one writer
        _plot(plot, model, convert, train_set, run.losses)
        print(f"wrote {plot}", file=out)
    return 0


def _sidecar(weights: str) -> Path:
    return Path(weights).with_suffix(".json")


def _weights_path(save: str) -> str:
    return save if save.endswith(".npz") else save + ".npz"


def _save(model: Any, args: argparse.Namespace, model_name: str, hidden: int) -> str:
    """Write the weights (.npz appended if missing) and their sidecar FILE.json; the .npz path written."""
    path = _weights_path(args.save)
    data = getattr(args, "data", None)
    record = {"task": args.task, "model": model_name, "hidden": hidden, "activation": args.activation}
    # Where the training data came from: `xdezero eval` tests on that folder's test split (None: MNIST's own).
    record["data"] = None if data is None else os.path.abspath(data)
    record["xdezero"] = xdezero.__version__
    try:
        model.save_weights(path)
        _sidecar(path).write_text(json.dumps(record, indent=1) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    return path


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
        fig.savefig(path, dpi=100)  # the format follows the extension, checked when the arguments were read
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


# --- eval ----------------------------------------------------------------------------------------------


def evaluate(args: argparse.Namespace, out: TextIO) -> int:
    """Print the test-split accuracy of the weights in `args.file`, rebuilding the model its sidecar names."""
    path = _npz_to_read(args.file)
    if os.path.isdir(args.file):
        raise UsageError(f"{args.file} is a directory: name the .npz file that 'xdezero train --save FILE' wrote")
    if args.file.endswith(".json"):
        weights = Path(args.file).with_suffix(".npz")
        raise UsageError(f"{args.file} is the description beside the weights: name the weights, {weights}")
    if not os.path.isfile(path):
        raise UsageError(f"{args.file}: no such weights file")
    sidecar = _sidecar(path)
    try:
        record = json.loads(sidecar.read_text())
        task, model_name, hidden, activation = (record[k] for k in SIDECAR_KEYS)
    except FileNotFoundError:
        raise UsageError(
            f"{path} has no {sidecar.name} beside it saying which model it holds ('xdezero train --save' writes one)"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{sidecar} is damaged: expected JSON with {', '.join(SIDECAR_KEYS)} ({e})") from None
    if task not in ("spiral", "mnist") or model_name not in ("mlp", "cnn"):
        raise UsageError(f"{sidecar}: unknown task {task!r} or model {model_name!r}")
    data = args.data
    if data is None and task == "mnist":
        data = record.get("data")  # None (or a sidecar older than this key): MNIST's own files
        if data is not None and not isinstance(data, str):
            raise UsageError(f"{sidecar} is damaged: its data should be a folder's path or null, not {data!r}")
        if data is not None and not os.path.isdir(data):
            raise UsageError(
                f"{sidecar} says the weights were trained on --data {data}, which no longer exists: pass --data DIR "
                "to evaluate them on the test split of another folder"
            )
    convert, _ = _converter(args.backend, args.device)
    try:
        test_set, description = load_test_data(task, model_name, data)
    except TaskError as e:
        raise UsageError(str(e)) from None
    model = build_model(task, model_name, hidden, activation)
    with xdezero.no_grad():
        model(convert(np.asarray([test_set[0][0]])))  # parameters take their shapes from a first input
    try:
        model.load_weights(path)
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    single = _communicator(argparse.Namespace(communicator="single"))
    accuracy = _accuracy(model, test_set, convert, single, args.batch_size)
    split = description.replace("{n}", str(len(test_set)))
    print(f"test accuracy {accuracy:.4f} on the test split, {split}, weights {path}", file=out)
    return 0


# --- info --------------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info(out: TextIO) -> int:
    """`xdezero info`: the versions, each array library's state and devices, the allocator; exit status 0."""
    rows = [
        ("xdezero", xdezero.__version__),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("NumPy", np.__version__),
        ("array-api-compat", _version("array-api-compat")),
    ]
    rows += [(f"backend {name}", describe_library(name)) for name in BACKENDS]
    rows.append(("GPUs (CuPy)", cuda_devices()))
    rows.append(("malloc", allocator_info()))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
    return 0


# --- entry point ---------------------------------------------------------------------------------------


def _add_runtime_options(parser: argparse.ArgumentParser, task: str | None) -> None:
    """--backend, --device, --threads: where the arrays live and how many threads work on them."""
    parser.add_argument("--backend", choices=BACKENDS, default="numpy", help="array library (default numpy)")
    parser.add_argument(
        "--device",
        help="the backend's device, the same for every backend: cpu, cpu:N, gpu, gpu:N (cuda and cuda:N are the "
        "same), or a name of its own (device1 and device2 of array_api_strict, mps of torch) (default: its current "
        "GPU where it sees one, else cpu)",
    )
    small = SMALL_TASK_THREADS.get(task or "")
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads for this run: "
        + ", ".join(row.threads.what for row in libraries() if row.threads is not None)
        + " (default "
        + (f"{small}: the problem is too small to gain from more)" if small else "the library's own)"),
    )


def _add_training_options(task: argparse.ArgumentParser, name: str, defaults: dict[str, Any]) -> None:
    d = defaults
    task.add_argument(
        "--epochs", type=positive_int, default=d["epochs"], help=f"passes over the data (default {d['epochs']})"
    )
    task.add_argument("--hidden", type=positive_int, default=d["hidden"], help=f"hidden units (default {d['help']})")
    task.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,  # d["batch_size"], filled in by main: a default larger than the data set is not an error
        help=f"examples per step, over all processes together (default {d['batch_size']})",
    )
    task.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="update rule (default sgd)")
    lrs = ", ".join(f"{o} {DEFAULT_LR[name, o]:g}" for o in OPTIMIZERS)
    task.add_argument("--lr", type=positive_float, help=f"learning rate (Adam's alpha; default {lrs})")
    task.add_argument(
        "--activation", choices=("relu", "sigmoid", "tanh"), default="relu", help="MLP activation (default relu)"
    )
    _add_runtime_options(task, name)
    task.add_argument("--seed", type=non_negative_int, default=0, help="seed for weights and shuffling (default 0)")
    task.add_argument(
        "--save",
        metavar="FILE",
        type=weights_file,
        help="write the trained weights to FILE (.npz) and what model and data they belong to to FILE.json (rank 0 "
        "only); also when SIGINT or SIGTERM stops the run",
    )
    task.add_argument(
        "--checkpoint",
        metavar="FILE",
        type=weights_file,
        help="write a checkpoint (model, optimizer, data order and position, random state, losses) to FILE (.npz) "
        "every --checkpoint-every epochs, at the end, and when SIGINT (Ctrl-C) or SIGTERM stops the run",
    )
    task.add_argument(
        "--checkpoint-every",
        metavar="N",
        type=positive_int,
        help="epochs between checkpoints (default 1)",
    )
    task.add_argument(
        "--resume",
        metavar="FILE",
        help="continue the run checkpointed in FILE, given the same arguments (--epochs may be larger), "
        "to the same numbers as a run never stopped",
    )
    task.add_argument("--quiet", "-q", action="store_true", help="print only the final result")
    task.add_argument(
        "--capture",
        action="store_true",
        help="record the training step and replay it (xdezero.capture): same numbers, less Python per step "
        "(with several processes, the exchange of gradients is one operation of the step)",
    )
    task.add_argument(
        "--communicator",
        choices=("auto", "mpi", "torch", "nccl", "single"),
        default="auto",
        help="how processes exchange gradients (default auto: MPI under mpiexec/srun, torch under torchrun)",
    )


def _add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="a folder of MNIST-format files of your own (format-checked only); default: MNIST, downloaded "
        "into $XDEZERO_DATA_DIR or ~/.xdezero and checked against its published checksums",
    )


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="xdezero", description="xdezero: DeZero over any array-API array.")
    parser.add_argument("--version", action="version", version=f"xdezero {xdezero.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="show versions, backends and GPUs")
    train = commands.add_parser("train", help="train an example model")
    tasks = train.add_subparsers(dest="task", required=True, metavar="TASK")
    spiral = tasks.add_parser("spiral", help="an MLP on the 3-class spiral data set")
    _add_training_options(spiral, "spiral", TRAINING_DEFAULTS["spiral"])
    spiral.add_argument(
        "--plot", metavar="FILE", type=image_file, help="draw the loss curve and the decision regions (.png, .svg, ...)"
    )
    mnist = tasks.add_parser("mnist", help="an MLP or a CNN on MNIST digits (downloaded on first use)")
    _add_training_options(
        mnist,
        "mnist",
        TRAINING_DEFAULTS["mnist"],
    )
    mnist.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="the book's MLP or a small CNN")
    _add_data_option(mnist)
    evaluate = commands.add_parser("eval", help="accuracy of saved weights on the test split")
    evaluate.add_argument("file", metavar="FILE", help="weights written by 'xdezero train ... --save FILE'")
    _add_runtime_options(evaluate, None)
    evaluate.add_argument("--batch-size", type=positive_int, default=1000, help="examples per step (default 1000)")
    _add_data_option(evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `xdezero` command; returns the exit status (0 success, 2 usage errors)."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "task", None):
        args.batch_size_given = args.batch_size is not None
        if args.batch_size is None:
            args.batch_size = TRAINING_DEFAULTS[args.task]["batch_size"]
    if unknown:  # named by the command that was given, whose -h lists what it takes
        command = " ".join(filter(None, [parser.prog, args.command, getattr(args, "task", None)]))
        print(f"{command}: error: unrecognized arguments: {' '.join(unknown)} (see '{command} -h')", file=sys.stderr)
        return 2
    if argv is None:  # run as the command, an application: large temporaries stay in this process
        tune_allocator()
    rank = 0
    threads = getattr(args, "threads", None)
    given = threads is not None
    if not given:
        threads = SMALL_TASK_THREADS.get(getattr(args, "task", ""))
    try:
        restore_threads = _set_threads(getattr(args, "backend", ""), threads, given)
    except UsageError as e:
        print(f"xdezero: error: {e}", file=sys.stderr)
        return 2
    try:
        if args.command == "info":
            return info(sys.stdout)
        if args.command == "eval":
            return evaluate(args, sys.stdout)
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
    except BrokenPipeError:  # the reader left (`xdezero train ... | head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except Stopped as e:
        if rank == 0:
            print(f"\nxdezero: {e.name} again: stopped at once, nothing saved", file=sys.stderr)
        return e.status
    finally:
        restore_threads()
