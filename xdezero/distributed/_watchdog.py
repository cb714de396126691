"""A time-out for blocking collectives that have none of their own (MPI): a thread that ends the job.

MPI's collectives cannot be interrupted: a rank inside `MPI_Allreduce` that another rank never joins waits for
ever. The communicator arms the watchdog before each blocking collective and disarms it after (two attribute
writes on the hot path); a daemon thread looks at the deadline about ten times per time-out and, past it, prints
which collective on which rank did not complete, then calls the communicator's abort (MPI_Abort ends every rank).

The thread holds its communicator only weakly, and ends when `stop()` is called or the communicator (the
watchdog's `owner`) is garbage collected: a program that creates communicators and drops them leaks neither.
"""

from __future__ import annotations

import inspect
import sys
import threading
import time
import weakref
from collections.abc import Callable


class Watchdog:
    """Calls `on_timeout(what, seconds)` once when a collective armed with `arm(what)` is still running
    `timeout` seconds later. The thread ends after that, on `stop()`, or when `owner` is garbage collected."""

    def __init__(self, timeout: float, on_timeout: Callable[[str, float], None], owner: object = None) -> None:
        if not timeout > 0:
            raise ValueError(f"the collective time-out must be positive (seconds), got {timeout}")
        self.timeout = timeout
        self._on_timeout = on_timeout
        self._armed: tuple[float, str] | None = None
        self._poll = min(1.0, timeout / 10)
        self._stopping = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="xdezero-collective-watchdog", daemon=True)
        self._thread.start()
        if owner is not None:
            weakref.finalize(owner, self.stop)

    def arm(self, what: str) -> None:
        """Start the time-out of the collective `what` (about to block)."""
        self._armed = (time.monotonic() + self.timeout, what)

    def disarm(self) -> None:
        """The armed collective completed."""
        self._armed = None

    def stop(self) -> None:
        """End the thread now (idempotent); a collective armed later is no longer timed."""
        self._stopping = True
        # Run as a finalizer, this may be the watchdog thread itself, collecting garbage while it holds the
        # event's lock inside wait(): setting the event there would deadlock; it sees `_stopping` at its next poll.
        if threading.current_thread() is not self._thread:
            self._wake.set()

    def _watch(self) -> None:
        while not self._stopping:
            self._wake.wait(self._poll)
            armed = self._armed
            if not self._stopping and armed is not None and time.monotonic() > armed[0]:
                self._on_timeout(armed[1], self.timeout)
                return


def report_and_abort(rank: int, size: int, abort: Callable[[int], None]) -> Callable[[str, float], None]:
    """The `on_timeout` of a communicator: one clear line on stderr, then `abort(1)`.

    A bound method `abort` is held weakly, so that the watchdog thread does not keep its communicator alive (a
    collective in progress does: its communicator is alive whenever the time-out fires).
    """
    abort_ref = weakref.WeakMethod(abort) if inspect.ismethod(abort) else lambda: abort

    def on_timeout(what: str, seconds: float) -> None:
        print(
            f"xdezero.distributed: {what} on rank {rank} of {size} did not complete within {seconds:g} s: some rank "
            "never joined it (a rank that stopped or returned early, or ran a different number of steps); ending "
            "the job (the time-out is the communicator's `timeout`)",
            file=sys.stderr,
            flush=True,
        )
        live_abort = abort_ref()
        if live_abort is not None:
            live_abort(1)

    return on_timeout
