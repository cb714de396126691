"""`scatter_dataset`: this rank's shard of a data set, by index (the data set itself is never sent)."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from xdezero.distributed.communicator import Communicator

__all__ = ["SubDataset", "scatter_dataset"]


class SubDataset:
    """The examples `dataset[indices[0]]`, `dataset[indices[1]]`, ... (a DataLoader takes it like any data set)."""

    def __init__(self, dataset: Any, indices: np.ndarray) -> None:
        self.dataset: Any = dataset
        self.indices: np.ndarray = np.asarray(indices, dtype=np.int64)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"SubDataset: index {index} out of range for a shard of {len(self)} examples")
        return self.dataset[int(self.indices[index])]

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"<SubDataset of {len(self)} examples of {type(self.dataset).__name__}>"


def scatter_dataset(
    dataset: Any,
    comm: Communicator,
    shuffle: bool = False,
    seed: int | None = 0,
    *,
    remainder: Literal["pad", "drop"] = "pad",
) -> SubDataset:
    """This rank's shard: disjoint, equal-sized shards that together cover `dataset`.

    Every rank must hold the same data set (each builds or loads it; only indices are computed). With
    `shuffle`, the examples are permuted first by a generator seeded with `seed` (the same on every rank;
    `seed=None` draws one on rank 0 and broadcasts it). Shards have equal sizes so that every rank runs the
    same number of steps, each of which is a collective: when `len(dataset)` is not a multiple of `comm.size`,
    `remainder="pad"` (as ChainerMN does) repeats the first examples of the order to fill the last shards, and
    `remainder="drop"` leaves out the last `len(dataset) % comm.size` examples instead.
    """
    if remainder not in ("pad", "drop"):
        raise ValueError(f"scatter_dataset: remainder must be 'pad' or 'drop', got {remainder!r}")
    n = len(dataset)
    low, high = comm.allreduce(np.asarray([-n, n], dtype=np.int64), "max")
    if -low != high:
        raise ValueError(
            f"scatter_dataset: the data set has {n} examples on rank {comm.rank} but sizes from {-low} to {high} "
            "across ranks; every rank must load the same data set"
        )
    if seed is None and shuffle:
        seed = comm.bcast_obj(int(np.random.SeedSequence().entropy % 2**63) if comm.rank == 0 else None)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if remainder == "pad":
        per_rank = math.ceil(n / comm.size)
        order = np.resize(order, per_rank * comm.size)  # repeats the order from its start
    else:
        per_rank = n // comm.size
        if per_rank == 0:
            raise ValueError(f"scatter_dataset: {n} examples cannot fill {comm.size} shards with remainder='drop'")
    return SubDataset(dataset, order[comm.rank * per_rank : (comm.rank + 1) * per_rank])
