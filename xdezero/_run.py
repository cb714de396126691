"""A training run of the `xdezero` command: the arguments that define it, the record it keeps in its checkpoints,
how a signal stops it between two steps, and the check that --resume continues the run it names."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Sequence
from typing import Any

from xdezero.checkpoint import read_checkpoint

__all__ = [
    "RUN_SETTINGS",
    "STOP_STATUS",
    "ResumeError",
    "RunRecord",
    "StopRequests",
    "Stopped",
    "as_arguments",
    "check_resume",
    "run_settings",
]

# The arguments that define a training run: --resume refuses a checkpoint made with others. --epochs may grow, and
# how the run is carried out (--device, --threads, --capture) or reported (--quiet, --save, --plot) may change.
RUN_SETTINGS = ("task", "model", "hidden", "activation", "optimizer", "lr", "batch_size", "seed", "data", "backend")
# The exit status of a run stopped by a signal: 128 + its number, as a shell reports a process killed by it.
STOP_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


class ResumeError(Exception):
    """--resume names a file that does not continue this run: one line for the user, exit status 2."""


class Stopped(BaseException):
    """A second SIGINT or SIGTERM while the first is being honoured: leave at once, saving nothing."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.status, self.name = STOP_STATUS[signum], signal.Signals(signum).name


class StopRequests:
    """SIGINT and SIGTERM while training with --checkpoint or --save, as a `with` block: the first asks the loop
    to stop after the step in progress (a checkpoint taken inside a step would hold a batch taken but not applied,
    lost on resume); a second leaves at once. The handlers found are put back on exit (main may run in-process)."""

    def __init__(self, comm: Any, active: bool) -> None:
        self.comm, self.active = comm, active
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if self.active and threading.current_thread() is threading.main_thread():  # only there may handlers be set
            for signum in STOP_STATUS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:
            raise Stopped(signum)
        self.signum = signum

    def requested(self) -> int:
        """The signal that asks to stop, 0 for none; the same on every process, so that all stop after one step."""
        if not self._previous:
            return 0
        return self.signum if self.comm.size == 1 else self.comm.allreduce(self.signum, op="max")


class RunRecord:
    """The command's own part of a checkpoint: the arguments that define the run, the epochs' losses so far, the
    sums of the epoch in progress (over this process's rows) and the seconds trained."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.losses: list[float] = []
        self.sum_loss = self.sum_acc = self.elapsed = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "command": "xdezero train",
            "settings": dict(self.settings),
            "losses": list(self.losses),
            "sum_loss": self.sum_loss,
            "sum_acc": self.sum_acc,
            "elapsed": self.elapsed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The settings were compared with this command's before anything was built (_check_resume).
        try:
            losses = [float(v) for v in state["losses"]]
            sums = float(state["sum_loss"]), float(state["sum_acc"])
            elapsed = float(state["elapsed"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the command's record is damaged ({type(e).__name__}: {e})") from None
        self.losses, (self.sum_loss, self.sum_acc), self.elapsed = losses, sums, elapsed


def run_settings(args: argparse.Namespace, model_name: str, hidden: int, lr: float) -> dict[str, Any]:
    """The arguments that define a run (RUN_SETTINGS, defaults resolved) and its --epochs, kept in a checkpoint."""
    data = getattr(args, "data", None)
    return {
        "task": args.task,
        "model": model_name,
        "hidden": hidden,
        "activation": args.activation,
        "optimizer": args.optimizer,
        "lr": lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "data": None if data is None else os.path.abspath(data),
        "backend": args.backend,
        "epochs": args.epochs,
    }


def as_arguments(settings: dict[str, Any], keys: Sequence[str]) -> str:
    """`keys` of `settings` as they read on a command line: 'train mnist' --hidden 30 --lr 0.1."""
    words = []
    for key in keys:
        value = settings.get(key)
        if key == "task":
            words.append(f"'train {value}'")
        elif key == "data" and value is None:
            words += ["no --data (MNIST's own files)"] if settings.get("task") == "mnist" else []
        else:
            option = "--" + key.replace("_", "-")
            words.append(f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}")
    return " ".join(words)


def check_resume(path: str, settings: dict[str, Any], comm: Any) -> tuple[int, int]:
    """(epochs completed, batches taken in the next) of the run checkpointed in `path`, after checking that this
    command continues it: the same defining arguments, more epochs to go, as many processes. ResumeError if not,
    or if the file cannot be read, before any data is loaded."""
    where = f"--resume {path}"
    try:
        state = read_checkpoint(path)
    except FileNotFoundError:
        raise ResumeError(f"{where}: no such file") from None
    except (OSError, ValueError) as e:
        raise ResumeError(f"{where}: {str(e).removeprefix(f'read_checkpoint({path!r}): ')}") from None
    ranks = state.get("ranks") or [state]
    run, loader = ranks[0].get("run"), ranks[0].get("loader")
    if not (isinstance(run, dict) and run.get("command") == "xdezero train" and isinstance(loader, dict)):
        held = sorted(k for k in ranks[0] if k not in ("format", "random"))
        raise ResumeError(f"{where}: not a checkpoint written by 'xdezero train --checkpoint' (it holds {held})")
    recorded = run.get("settings")
    recorded = recorded if isinstance(recorded, dict) else {}
    differ = [k for k in RUN_SETTINGS if recorded.get(k) != settings[k]]
    if differ:
        raise ResumeError(
            f"{where} continues a run made with {as_arguments(recorded, differ)}, not "
            f"{as_arguments(settings, differ)}: give the arguments of that run (only --epochs and how it runs may "
            "differ: --device, --threads, --capture, --quiet, --save, --plot, --checkpoint)"
        )
    if len(ranks) != comm.size:
        raise ResumeError(f"{where} was written by {len(ranks)} process(es); this job has {comm.size}")
    try:
        done, taken = int(loader["epoch"]), int(loader["iteration"])
    except (KeyError, TypeError, ValueError):
        raise ResumeError(f"{where}: the data loader's position in it is damaged") from None
    if done >= settings["epochs"]:
        raise ResumeError(
            f"{where}: that run has completed {done} epochs; to train it further ask for more (--epochs {done + 1} "
            "or above)"
        )
    return done, taken
