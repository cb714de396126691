"""Rank 0 enters an all-reduce that rank 1 never joins: with a time-out, rank 0 fails instead of waiting."""

from __future__ import annotations

import datetime
import sys
import time

from xdezero import distributed as dist

# The time-out also bounds the start-up rendezvous: keep it well above how late a loaded machine starts a rank.
comm = dist.create_communicator(sys.argv[1], timeout=datetime.timedelta(seconds=float(sys.argv[2])))
comm.allreduce(1.0)  # both ranks are up
if comm.rank == 0:
    comm.allreduce(1.0)
else:
    time.sleep(60)
