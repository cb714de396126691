"""Checkpoints of a data-parallel job: one file, written by rank 0, from which every rank resumes where it was.

What is the same on every rank (the model's parameters, the optimizer's state: the multi-node optimizer keeps
them equal) is saved once, from rank 0. What differs between ranks (each rank's data loader over its shard, its
random streams) is gathered to rank 0 and saved per rank. Every rank reads the file when loading, so it must be
on a file system that every rank sees (as the data sets usually are).
"""

from __future__ import annotations

import os
from typing import IO, Any

from xdezero.checkpoint import (
    RANDOM,
    check_objects,
    random_streams,
    read_checkpoint,
    restore,
    write_checkpoint,
)
from xdezero.distributed.communicator import Communicator
from xdezero.distributed.optimizer import MultiNodeOptimizer
from xdezero.layers import Layer
from xdezero.optimizers import Optimizer

__all__ = ["save_checkpoint", "load_checkpoint"]

RANKS = "ranks"  # the entry holding each rank's own states


def _shared(obj: Any) -> bool:
    """Objects whose state is the same on every rank: models and (multi-node) optimizers."""
    return isinstance(obj, Layer | Optimizer | MultiNodeOptimizer)


def save_checkpoint(comm: Communicator, file: str | os.PathLike[str] | IO[bytes], **objects: Any) -> None:
    """Call on every rank: models and optimizers are saved from rank 0, every other object (data loaders) and
    the random streams from each rank; rank 0 writes `file`. With one process, the file is that of
    `xdezero.save_checkpoint`."""
    check_objects("save_checkpoint", objects, "state_dict")
    own = {name: obj.state_dict() for name, obj in objects.items() if not _shared(obj)}
    own[RANDOM] = random_streams()
    ranks = [comm.bcast_obj(own if comm.rank == r else None, root=r) for r in range(comm.size)]
    if comm.rank == 0:
        state = {name: obj.state_dict() for name, obj in objects.items() if _shared(obj)}
        if comm.size == 1:
            state.update(ranks[0])
        else:
            state[RANKS] = ranks
        write_checkpoint(file, state)
    comm.barrier()  # the file exists for every rank once save_checkpoint returns


def load_checkpoint(comm: Communicator, file: str | os.PathLike[str] | IO[bytes], **objects: Any) -> dict[str, Any]:
    """Call on every rank, with the objects built as when saving: each rank restores the shared states and its
    own, and its random streams. A file saved by another number of ranks is an error saying both numbers."""
    check_objects("load_checkpoint", objects, "load_state_dict")
    state = read_checkpoint(file)
    ranks = state.get(RANKS, [{k: v for k, v in state.items() if k != "format"}])
    if len(ranks) != comm.size:
        raise ValueError(
            f"load_checkpoint: the checkpoint was saved by {len(ranks)} process(es); this job has {comm.size}"
        )
    mine = {**{k: v for k, v in state.items() if k != RANKS}, **ranks[comm.rank]}
    restore(mine, objects, mine[RANDOM])
    return state
