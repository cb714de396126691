"""One uncaught exception ends the whole job: without this, the other ranks wait in a collective for ever."""

from __future__ import annotations

import inspect
import sys
import time
import traceback
import weakref
from collections.abc import Callable

# (abort, rank, size) of every communicator that asked, oldest first. A bound method `abort` is held weakly: the
# hook must not keep a dropped communicator (and its watchdog thread) alive.
_registered: list[tuple[Callable[[], Callable[[int], None] | None], int, int]] = []
FORWARD_SECONDS = 0.5


def install_abort_hook(rank: int, size: int, abort: Callable[[int], None]) -> None:
    """Make an uncaught exception print its traceback, marked with the rank, then call `abort(1)`.

    Installed once per process, for every communicator that asks: the oldest one still alive names the rank and
    ends the job; once all are dropped, an exception is printed as without the hook. A hook installed earlier by
    the user still prints the exception, then the job ends.
    """
    first = not _registered
    _registered[:] = [entry for entry in _registered if entry[0]() is not None]
    _registered.append((weakref.WeakMethod(abort) if inspect.ismethod(abort) else lambda: abort, rank, size))
    if first:
        sys.excepthook = _hook_before(sys.excepthook)


def _oldest_alive() -> tuple[Callable[[int], None], int, int] | None:
    for ref, rank, size in _registered:
        abort = ref()
        if abort is not None:
            return abort, rank, size
    return None


def _hook_before(previous: Callable) -> Callable:
    """The excepthook: announce the rank, let `previous` print the exception, then end the job."""

    def hook(exc_type, exc, tb) -> None:
        alive = _oldest_alive()
        if alive is None:  # every communicator dropped: no job to end
            previous(exc_type, exc, tb)
            return
        abort, rank, size = alive
        try:
            sys.stdout.flush()
            print(f"xdezero.distributed: uncaught exception on rank {rank} of {size}; ending the job", file=sys.stderr)
            if previous is sys.__excepthook__:
                traceback.print_exception(exc_type, exc, tb)
            else:
                previous(exc_type, exc, tb)
            sys.stderr.flush()
            # MPICH's mpiexec can drop what its proxy has not read yet when MPI_Abort ends the job (the whole
            # traceback, in about 1 run of 15 here): give it a moment to forward the output.
            time.sleep(FORWARD_SECONDS)
        finally:
            abort(1)

    return hook
