"""Mini-batch iterators over a Dataset (DeZero's `dezero.dataloaders`).

Shuffling draws `np.random.permutation` from NumPy's global generator at the start of every epoch, as DeZero
does, so a program seeded with `np.random.seed` sees DeZero's batches. Pass `seed=` (an int or a
`numpy.random.Generator`) for an order of the loader's own, which other random draws do not change.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Self

import numpy as np

from xdezero.backends import library_of_device, to_library
from xdezero.backends import to_gpu as _to_gpu
from xdezero.transforms import make_rng

__all__ = ["DataLoader", "SeqDataLoader", "pil_available"]  # noqa: F822 (pil_available: see __getattr__)


def __getattr__(name: str) -> Any:
    # DeZero's flag for Pillow (used by the image transforms), found without importing it.
    if name == "pil_available":
        return importlib.util.find_spec("PIL") is not None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_batch_size(cls: str, batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(f"{cls}: batch_size must be a positive integer, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"{cls}: batch_size must be a positive integer, got {batch_size}")
    return int(batch_size)


class DataLoader:
    """Iterate over `dataset` in batches `(x, t)` of `batch_size` examples (the last one may be smaller).

    One pass over the data set is one `for` loop; the loader then resets (reshuffling when `shuffle`) for
    the next epoch. A loop left early (`break`) does not carry over: the next `for` starts a complete epoch.
    Batches are NumPy arrays, CuPy arrays when `gpu=True` or after `to_gpu()` (which needs CuPy and a GPU), or
    arrays of another library on its device after `to_device(device)` (e.g. `torch.device("cuda")`).
    `t` is None when the data set has no labels.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        shuffle: bool = True,
        gpu: bool = False,
        *,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.dataset: Any = dataset
        self.batch_size: int = _check_batch_size(type(self).__name__, batch_size)
        self.shuffle: bool = shuffle
        self.gpu: bool = gpu
        self.device: Any = None  # set by to_device; the batches' library is then self.library
        self.library: str | None = None
        self.data_size: int = len(dataset)
        self.max_iter: int = math.ceil(self.data_size / self.batch_size)
        self.rng: np.random.Generator | None = None if seed is None or not shuffle else make_rng(seed)
        self.epoch: int = 0  # epochs completed
        self._resumed = False  # set by load_state_dict: the next loop continues the restored epoch
        self.reset()

    def reset(self) -> None:
        """Start a new epoch (a new order when shuffling)."""
        self.iteration: int = 0  # batches taken in this epoch
        if self.shuffle:  # index: this epoch's order of the examples
            self.index: np.ndarray = (np.random if self.rng is None else self.rng).permutation(self.data_size)
        else:
            self.index = np.arange(self.data_size)

    def __iter__(self) -> Self:
        # A new loop over a partly consumed epoch starts afresh; a finished epoch has already been reset, so
        # a loop after a complete one draws no extra permutation (the order for a seed stays as it was).
        if self.iteration and not self._resumed:
            self.reset()
        self._resumed = False
        return self

    def _batch_indices(self) -> Any:
        i, b = self.iteration, self.batch_size
        return self.index[i * b : (i + 1) * b]

    def __next__(self) -> tuple[Any, Any]:
        """The next batch (x, t), t None when the data set has no labels; StopIteration ends the epoch."""
        if self.iteration >= self.max_iter:
            self.epoch += 1
            self.reset()
            raise StopIteration
        batch = [self.dataset[int(i)] for i in self._batch_indices()]
        x = np.asarray([example[0] for example in batch])
        labels = [example[1] for example in batch]
        t = None if all(label is None for label in labels) else np.asarray(labels)
        if self.gpu:
            x, t = _to_gpu(x), _to_gpu(t)
        elif self.device is not None:
            x, t = to_library(x, self.library, self.device), to_library(t, self.library, self.device)
        self.iteration += 1  # only now: a failed GPU move does not skip the batch
        return x, t

    def next(self) -> tuple[Any, Any]:
        """The next batch (x, t) (DeZero's name for `__next__`)."""
        return self.__next__()

    def __len__(self) -> int:
        """The number of batches in one epoch."""
        return self.max_iter

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: epochs completed, batches taken in this epoch, this epoch's order, and the
        state of its own generator (with `seed=`; else the order's draws come from NumPy's global generator)."""
        return {
            "type": type(self).__name__,
            "data_size": self.data_size,
            "batch_size": self.batch_size,
            "shuffle": bool(self.shuffle),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "index": np.array(self.index),
            "rng": None if self.rng is None else self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the next loop goes on with the restored epoch from its next batch. The
        state must come from a loader of the same kind over a data set of the same size with the same batch size
        and shuffling; else it is an error naming what differs, and nothing changes."""
        where = f"{type(self).__name__}.load_state_dict"
        try:
            kind, epoch, iteration = state["type"], state["epoch"], state["iteration"]
            index = np.asarray(state["index"])
            settings = {k: state[k] for k in ("data_size", "batch_size", "shuffle")}
            rng_state = state["rng"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{where}: not a state that state_dict returned ({type(e).__name__}: {e})") from None
        mine = {"data_size": self.data_size, "batch_size": self.batch_size, "shuffle": bool(self.shuffle)}
        if kind != type(self).__name__ or settings != mine:
            raise ValueError(f"{where}: the state is of a {kind} with {settings}; this loader has {mine}")
        for name, value in (("epoch", epoch), ("iteration", iteration)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"{where}: {name} must be a non-negative integer, got {value!r}")
        if iteration > self.max_iter:
            raise ValueError(f"{where}: iteration {iteration} is past the epoch's {self.max_iter} batches")
        if index.shape != (self.data_size,) or not np.array_equal(np.sort(index), np.arange(self.data_size)):
            raise ValueError(f"{where}: index must be an order of the {self.data_size} examples (each once)")
        if (rng_state is None) != (self.rng is None):
            has = "its own generator (seed=)" if self.rng is not None else "NumPy's global generator"
            raise ValueError(
                f"{where}: the state's loader {'had no' if rng_state is None else 'had a'} seed; this one uses {has}"
            )
        rng = None
        if rng_state is not None:
            rng = np.random.default_rng()
            try:
                rng.bit_generator.state = rng_state
            except (TypeError, ValueError, KeyError) as e:
                raise ValueError(f"{where}: the generator's state is not one NumPy accepts ({e})") from None
        self.epoch, self.iteration, self.index = int(epoch), int(iteration), index.astype(np.int64)
        if rng is not None:
            self.rng = rng
        self._resumed = self.iteration > 0

    def to_cpu(self) -> None:
        """Batches as NumPy arrays from now on."""
        self.gpu = False
        self.device = self.library = None

    def to_gpu(self) -> None:
        """Batches as CuPy arrays from now on (DeZero's GPU)."""
        self.gpu = True
        self.device = self.library = None

    def to_device(self, device: Any, library: str | None = None) -> None:
        """Batches as arrays on `device` from now on: a device object of an array library
        (`torch.device("cuda:0")`, `jax.devices("gpu")[0]`, `cupy.cuda.Device(0)`, `array_api_strict.Device(...)`),
        or a device string of `library` (`to_device("cuda:0", library="torch")`); 'cpu' gives NumPy batches."""
        if library is None:
            library = library_of_device(device)
        # An unusable library or device fails here, naming the devices there are, not at the first batch.
        to_library(np.zeros(0), library, device)
        if library == "numpy":
            self.to_cpu()
            return
        self.gpu = False
        self.device, self.library = device, library


class SeqDataLoader(DataLoader):
    """Batches for truncated backprop through time: row k of each batch walks its own contiguous stretch of
    the sequence (start k * len(dataset) // batch_size), one step per iteration; no shuffling."""

    def __init__(self, dataset: Any, batch_size: int, gpu: bool = False) -> None:
        super().__init__(dataset, batch_size, shuffle=False, gpu=gpu)
        if self.batch_size > self.data_size:
            raise ValueError(
                f"SeqDataLoader: batch_size {self.batch_size} is larger than the data set ({self.data_size} examples)"
            )

    def _batch_indices(self) -> Any:
        jump = self.data_size // self.batch_size
        return (np.arange(self.batch_size) * jump + self.iteration) % self.data_size
