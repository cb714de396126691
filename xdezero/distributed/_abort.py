"""One uncaught exception ends the whole job: without this, the other ranks wait in a collective for ever."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

_installed: list[Callable[[int], None]] = []


def install_abort_hook(rank: int, size: int, abort: Callable[[int], None]) -> None:
    """Make an uncaught exception print its traceback, marked with the rank, then call `abort(1)`.

    Installed once per process (the first communicator wins); a hook installed earlier by the user still
    prints the exception, then the job ends.
    """
    if _installed:
        return
    _installed.append(abort)
    previous = sys.excepthook

    def hook(exc_type, exc, tb) -> None:
        try:
            sys.stdout.flush()
            print(f"xdezero.distributed: uncaught exception on rank {rank} of {size}; ending the job", file=sys.stderr)
            if previous is sys.__excepthook__:
                traceback.print_exception(exc_type, exc, tb)
            else:
                previous(exc_type, exc, tb)
            sys.stderr.flush()
        finally:
            abort(1)

    sys.excepthook = hook
