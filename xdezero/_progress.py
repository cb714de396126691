"""Training progress for the `xdezero` command: a tqdm bar within each epoch on a terminal, plain lines elsewhere.

tqdm is optional (`pip install xdezero[progress]`): it is small and well kept, but a library should not pull a
terminal toy into every program that imports it. Without tqdm, or when the output is not a terminal (a pipe, a
log file, a CI job) or TERM=dumb, each epoch prints one plain line and nothing else, so logs stay greppable.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, TextIO

__all__ = ["Progress", "wants_bar"]


def wants_bar(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that can redraw a line, and tqdm is installed to draw the bar."""
    isatty = getattr(stream, "isatty", None)
    return (
        isatty is not None
        and isatty()
        and os.environ.get("TERM", "") != "dumb"
        and importlib.util.find_spec("tqdm") is not None
    )


class Progress:
    """Epoch lines (`epoch 3/10  loss 0.4321  running accuracy 0.8700`) and, with `bar`, a tqdm bar per epoch
    showing batches done, rate and ETA. `quiet` prints neither."""

    def __init__(self, total_epochs: int, batches: int, stream: TextIO, *, bar: bool, quiet: bool = False) -> None:
        self.total, self.batches, self.stream = total_epochs, batches, stream
        self.bar, self.quiet = bar and not quiet, quiet
        self.width = len(str(total_epochs))
        self._tqdm: Any = None

    def start_epoch(self, epoch: int, done: int = 0) -> None:
        """A new epoch, or one resumed from a checkpoint with `done` of its batches already taken."""
        if self.bar:
            from tqdm import tqdm

            self._tqdm = tqdm(
                total=self.batches,
                initial=done,
                desc=f"epoch {epoch:{self.width}d}/{self.total}",
                unit="batch",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=0.1,
            )

    def batch(self, loss: float) -> None:
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            self._tqdm.update(1)

    def end_epoch(self, epoch: int, loss: float, acc: float) -> None:
        if self._tqdm is not None:
            self._tqdm.close()  # leave=False: the bar's line is cleared, the epoch line takes its place
            self._tqdm = None
        if not self.quiet:
            line = f"epoch {epoch:{self.width}d}/{self.total}  loss {loss:.4f}  running accuracy {acc:.4f}"
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Remove a bar left open (training interrupted), so the error message starts on a clean line."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
