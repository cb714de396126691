"""What the `xdezero` command trains: the models, and MNIST's files checked before anything reads them.

MNIST in the cache folder (`$XDEZERO_DATA_DIR` or ~/.xdezero) must be the published files: each one, downloaded
or placed there by hand, is checked against its MD5 before use. `--data DIR` names a folder of one's own
MNIST-format files (Fashion-MNIST, a subset, generated data): those are checked for format only. Both checks
are `xdezero.datasets.locate_mnist`'s.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import xdezero.functions as F
import xdezero.layers as L
from xdezero.datasets import MNIST, DownloadError, Spiral, locate_mnist
from xdezero.models import MLP, Model
from xdezero.transforms import Compose, Flatten, Normalize, ToFloat

__all__ = ["CNN", "TaskError", "build_model", "load_data", "load_test_data", "mnist_folder"]


class TaskError(Exception):
    """Data or weights that cannot be used; the message (one line) says which file and what to do."""


class CNN(Model):
    """conv(16) - relu - pool - conv(32) - relu - pool - linear(hidden) - relu - linear(classes), 1x28x28 inputs."""

    def __init__(self, hidden: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = L.Conv2d(16, kernel_size=3, stride=1, pad=1)
        self.conv2 = L.Conv2d(32, kernel_size=3, stride=1, pad=1)
        self.fc1 = L.Linear(hidden)
        self.fc2 = L.Linear(classes)

    def forward(self, x: Any) -> Any:
        x = F.pooling(F.relu(self.conv1(x)), 2, 2)
        x = F.pooling(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.fc1(F.reshape(x, (x.shape[0], -1))))
        return self.fc2(x)


def build_model(task: str, model: str, hidden: int, activation: str) -> Model:
    """The model the command trains for `task` ('spiral' or 'mnist'), from what the weights' sidecar records."""
    classes = 3 if task == "spiral" else 10
    if model == "cnn":
        return CNN(hidden, classes)
    return MLP((hidden, classes), activation=getattr(F, activation))


def mnist_folder(data: str | None, *, test_only: bool = False) -> Path:
    """The folder holding MNIST's four files (the test split's two with `test_only`), each present and checked
    (downloaded into the cache if missing).

    `data` None: the cache, with checksums. Otherwise the user's own folder, checked for format only.
    """
    try:
        return locate_mnist(data, test_only=test_only)
    except (FileExistsError, NotADirectoryError) as e:  # the cache folder's path names a file
        raise TaskError(
            f"XDEZERO_DATA_DIR={os.environ.get('XDEZERO_DATA_DIR')} is not a folder ({e.strerror}): point it at a "
            "folder (it is created if missing), or unset it to use ~/.xdezero"
        ) from None
    except FileNotFoundError as e:
        if data is None:
            raise TaskError(f"the data folder (XDEZERO_DATA_DIR or ~/.xdezero): {e}") from None
        raise TaskError(f"--data {e}") from None
    except ValueError as e:
        hint = "" if data is not None else ", or pass --data FOLDER to use MNIST-format files of your own"
        raise TaskError(f"{e}{hint}") from None
    except DownloadError as e:
        raise TaskError(str(e)) from None


def load_data(task: str, model: str, data: str | None) -> tuple[Any, Any, str]:
    """(training set, test set, description with `{n}` for the size) for `task`; MNIST files are checked first."""
    if task == "spiral":
        train_set = Spiral(train=True)
        return train_set, Spiral(train=False), "spiral ({n} points)"
    folder = mnist_folder(data)
    return _mnist(folder, model, True), _mnist(folder, model, False), _mnist_description(data)


def load_test_data(task: str, model: str, data: str | None) -> tuple[Any, str]:
    """(test set, description with `{n}`) for `task`, reading (or downloading) nothing of the training split."""
    if task == "spiral":
        return Spiral(train=False), "spiral ({n} points)"
    return _mnist(mnist_folder(data, test_only=True), model, False), _mnist_description(data)


def _mnist(folder: Path, model: str, train: bool) -> MNIST:
    # The MLP takes flat rows (MNIST's default transform); the CNN keeps the (1, 28, 28) images.
    transform = Compose([ToFloat(), Normalize(0.0, 255.0)])
    if model != "cnn":
        transform = Compose([Flatten(), transform])
    try:
        return MNIST(train=train, transform=transform, folder=folder)
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise TaskError(f"cannot read MNIST from {folder}: {e}") from None


def _mnist_description(data: str | None) -> str:
    return "MNIST ({n} images)" + ("" if data is None else f" from {data}")
