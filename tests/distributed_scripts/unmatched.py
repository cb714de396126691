"""Rank 0 enters an all-reduce that rank 1 never joins: with a time-out, rank 0 fails instead of waiting.

    python unmatched.py COMMUNICATOR TIMEOUT_SECONDS [--late SECONDS]

With --late, rank 1 joins the all-reduce after that many seconds instead of never.
"""

from __future__ import annotations

import argparse
import datetime
import time

from xdezero import distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("communicator")
parser.add_argument("timeout", type=float)
parser.add_argument("--late", type=float, default=None)
args = parser.parse_args()
# The time-out also bounds the start-up rendezvous: keep it well above how late a loaded machine starts a rank.
comm = dist.create_communicator(args.communicator, timeout=datetime.timedelta(seconds=args.timeout))
comm.allreduce(1.0)  # both ranks are up
if comm.rank == 0 or args.late is not None:
    if comm.rank == 1:
        time.sleep(args.late)
    comm.allreduce(1.0)
else:
    time.sleep(60)
