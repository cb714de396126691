"""A time-out for blocking collectives that have none of their own (MPI): a thread that ends the job.

MPI's collectives cannot be interrupted: a rank inside `MPI_Allreduce` that another rank never joins waits for
ever. The communicator arms the watchdog before each blocking collective and disarms it after (two attribute
writes on the hot path); a daemon thread looks at the deadline about ten times per time-out and, past it, prints
which collective on which rank did not complete, then calls the communicator's abort (MPI_Abort ends every rank).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable


class Watchdog:
    """Calls `on_timeout(what, seconds)` once when a collective armed with `arm(what)` is still running
    `timeout` seconds later."""

    def __init__(self, timeout: float, on_timeout: Callable[[str, float], None]) -> None:
        if not timeout > 0:
            raise ValueError(f"the collective time-out must be positive (seconds), got {timeout}")
        self.timeout = timeout
        self._on_timeout = on_timeout
        self._armed: tuple[float, str] | None = None
        self._poll = min(1.0, timeout / 10)
        threading.Thread(target=self._watch, name="xdezero-collective-watchdog", daemon=True).start()

    def arm(self, what: str) -> None:
        """Start the time-out of the collective `what` (about to block)."""
        self._armed = (time.monotonic() + self.timeout, what)

    def disarm(self) -> None:
        """The armed collective completed."""
        self._armed = None

    def _watch(self) -> None:
        while True:
            time.sleep(self._poll)
            armed = self._armed
            if armed is not None and time.monotonic() > armed[0]:
                self._on_timeout(armed[1], self.timeout)
                return


def report_and_abort(rank: int, size: int, abort: Callable[[int], None]) -> Callable[[str, float], None]:
    """The `on_timeout` of a communicator: one clear line on stderr, then `abort(1)`."""

    def on_timeout(what: str, seconds: float) -> None:
        print(
            f"xdezero.distributed: {what} on rank {rank} of {size} did not complete within {seconds:g} s: some rank "
            "never joined it (a rank that stopped or returned early, or ran a different number of steps); ending "
            "the job (the time-out is the communicator's `timeout`)",
            file=sys.stderr,
            flush=True,
        )
        abort(1)

    return on_timeout
