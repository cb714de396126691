"""Communicators created and dropped leave no thread and no communicator behind; rank 0 prints 'ok'.

    mpiexec -n 2 python lifetime.py

First the abort hook: the first communicator of the process installs it, and dropping that communicator still
frees it; the hook then ends the job through the oldest communicator alive, and with none only prints.
Then each rank creates 200 communicators over duplicates of COMM_WORLD, runs a collective on some, closes some and
drops the rest: after gc.collect() its thread count is back where it started and every communicator is gone.
Then the watchdog alone: stop() ends its thread at once, dropping its owner ends it too, and an owner that is
alive is still aborted when a collective times out.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import io
import sys
import threading
import time
import weakref
from collections.abc import Callable

from mpi4py import MPI

from xdezero.distributed._abort import install_abort_hook
from xdezero.distributed._watchdog import Watchdog, report_and_abort
from xdezero.distributed.mpi import MpiCommunicator

TIMEOUT = datetime.timedelta(seconds=60)  # the watchdog polls every second: a sleeping thread would not end


def wait_until(condition: Callable[[], bool], seconds: float = 2.0) -> bool:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def check_abort_hook() -> None:
    dup = MPI.COMM_WORLD.Dup()
    first = MpiCommunicator(dup, timeout=TIMEOUT)  # the process's first: installs the hook
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None, "the abort hook kept the first communicator of the process alive"
    dup.Free()

    def uncaught() -> str:
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                raise RuntimeError("deliberate")
            except RuntimeError:
                sys.excepthook(*sys.exc_info())
        return stderr.getvalue()

    printed = uncaught()  # no communicator alive: printed only, nothing to end
    assert "RuntimeError: deliberate" in printed and "ending the job" not in printed, printed
    owner = Owner()
    install_abort_hook(1, 3, owner.abort)
    printed = uncaught()
    assert owner.codes == [1], f"the hook called abort with {owner.codes}, not [1]"
    assert "uncaught exception on rank 1 of 3; ending the job" in printed and "RuntimeError: deliberate" in printed


def check_communicators(world: MpiCommunicator) -> None:
    before = threading.active_count()
    dups, refs = [], []
    for i in range(200):
        dups.append(MPI.COMM_WORLD.Dup())
        comm = MpiCommunicator(dups[-1], timeout=TIMEOUT)
        refs.append(weakref.ref(comm))
        if i % 10 == 0:
            assert comm.allreduce(i) == i * comm.size
        if i % 3 == 0:
            comm.close()
            comm.close()  # idempotent
            if i % 30 == 0:  # still usable, without a time-out
                comm.barrier()
    during = threading.active_count()
    del comm
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    settled = wait_until(lambda: threading.active_count() <= before)
    after = threading.active_count()
    assert alive == 0 and settled, (
        f"rank {world.rank}: {alive} of 200 dropped communicators still alive; threads {before} before, "
        f"{during} with 67 closed and 133 open, {after} after dropping them all"
    )
    world.barrier()
    for dup in dups:  # the caller's: close() does not free them
        dup.Free()


class Owner:
    def __init__(self) -> None:
        self.codes: list[int] = []

    def abort(self, code: int) -> None:
        self.codes.append(code)


def check_watchdog() -> None:
    before = threading.active_count()
    dog = Watchdog(10.0, report_and_abort(0, 2, Owner().abort))
    assert threading.active_count() == before + 1
    start = time.monotonic()
    dog.stop()
    dog.stop()  # idempotent
    assert wait_until(lambda: threading.active_count() == before), "stop() left the watchdog thread running"
    assert time.monotonic() - start < 0.5, "stop() waited for the next poll (1 s) instead of waking the thread"

    owner = Owner()
    dog = Watchdog(10.0, report_and_abort(0, 2, owner.abort), owner=owner)
    dog.arm("a barrier")
    dog.disarm()
    ref = weakref.ref(owner)
    del owner
    assert ref() is None, "the watchdog kept its owner alive"
    assert wait_until(lambda: threading.active_count() == before), "dropping the owner left the thread running"

    owner, stderr = Owner(), io.StringIO()
    with contextlib.redirect_stderr(stderr):
        dog = Watchdog(0.2, report_and_abort(0, 2, owner.abort), owner=owner)
        dog.arm("a barrier")
        assert wait_until(lambda: owner.codes == [1]), f"a time-out called abort with {owner.codes}, not [1]"
    assert "a barrier on rank 0 of 2 did not complete within 0.2 s" in stderr.getvalue(), stderr.getvalue()
    assert wait_until(lambda: threading.active_count() == before), "the thread did not end after its time-out"


def main() -> None:
    check_abort_hook()  # before any other communicator: the hook must be installed by the one it drops
    world = MpiCommunicator()
    check_communicators(world)
    check_watchdog()
    world.barrier()
    if world.rank == 0:
        print("ok", flush=True)


if __name__ == "__main__":
    main()
