"""What the `xdezero` command trains: the models, and MNIST's files checked before anything reads them.

MNIST in the cache folder (`$XDEZERO_DATA_DIR` or ~/.xdezero) must be the published files: each one, downloaded
or placed there by hand, is checked against its MD5 before use. `--data DIR` names a folder of one's own
MNIST-format files (Fashion-MNIST, a subset, generated data): those are checked for format only.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xdezero.functions as F
import xdezero.layers as L
from xdezero.datasets import MNIST, DownloadError, Spiral, data_dir, get_file
from xdezero.models import MLP, Model
from xdezero.transforms import Compose, Flatten, Normalize, ToFloat

__all__ = ["CNN", "MNIST_FILES", "MNIST_MIRRORS", "TaskError", "build_model", "load_data", "mnist_folder"]

# The published files (the same table as xdezero.datasets.MNIST downloads with).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
}


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


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_idx(path: Path) -> None:
    """A gzip-compressed IDX file of unsigned bytes (magic 0x0000080N), or TaskError naming the file."""
    try:
        with gzip.open(path, "rb") as f:
            magic = f.read(4)
    except (OSError, EOFError, zlib.error) as e:
        raise TaskError(f"{path} is not a gzip-compressed MNIST file ({type(e).__name__}: {e})") from None
    if len(magic) < 4 or magic[:3] != b"\0\0\x08" or not 1 <= magic[3] <= 4:
        raise TaskError(f"{path} is gzip data but not an MNIST (IDX) file: bad magic number {magic.hex() or 'none'}")


def mnist_folder(data: str | None) -> Path:
    """The folder holding MNIST's four files, each present and checked (downloaded into the cache if missing).

    `data` None: the cache, with checksums. Otherwise the user's own folder, checked for format only.
    """
    if data is not None:
        folder = Path(data)
        missing = [name for name in MNIST_FILES if not (folder / name).is_file()]
        if missing:
            raise TaskError(f"--data {data}: missing {', '.join(missing)} (MNIST-format .gz files)")
    else:
        folder = data_dir()
        for name, checksum in MNIST_FILES.items():
            path = folder / name
            expected = checksum.partition(":")[2]
            if path.exists() and (found := _file_md5(path)) != expected:
                raise TaskError(
                    f"{path} is not the published MNIST file (md5 {found}, expected {expected}): delete it to "
                    "download it again, or pass --data FOLDER to use MNIST-format files of your own"
                )
        missing = [name for name in MNIST_FILES if not (folder / name).exists()]
        for name in missing:
            try:
                get_file([m + name for m in MNIST_MIRRORS], name, MNIST_FILES[name])
            except DownloadError as e:
                raise TaskError(
                    f"cannot download MNIST ({_reason(e)}). Download {', '.join(missing)} "
                    f"from {MNIST_MIRRORS[0]} and place them in {folder} (or set XDEZERO_DATA_DIR)"
                ) from None
    for name in MNIST_FILES:
        _check_idx(folder / name)
    return folder


def _reason(e: DownloadError) -> str:
    """What went wrong, from get_file's message 'could not download NAME (REASONS). If this machine ...'."""
    text = str(e)
    start, end = text.find("("), text.rfind("). If this machine")
    return text[start + 1 : end] if 0 <= start < end else text


@contextlib.contextmanager
def _reading_from(folder: Path) -> Iterator[None]:
    # xdezero.datasets reads from data_dir(), which follows XDEZERO_DATA_DIR; point it at `folder` meanwhile.
    old = os.environ.get("XDEZERO_DATA_DIR")
    os.environ["XDEZERO_DATA_DIR"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            del os.environ["XDEZERO_DATA_DIR"]
        else:
            os.environ["XDEZERO_DATA_DIR"] = old


def load_data(task: str, model: str, data: str | None) -> tuple[Any, Any, str]:
    """(training set, test set, description with `{n}` for the size) for `task`; MNIST files are checked first."""
    if task == "spiral":
        train_set = Spiral(train=True)
        return train_set, Spiral(train=False), "spiral ({n} points)"
    folder = mnist_folder(data)
    # The MLP takes flat rows (MNIST's default transform); the CNN keeps the (1, 28, 28) images.
    transform = Compose([ToFloat(), Normalize(0.0, 255.0)])
    if model != "cnn":
        transform = Compose([Flatten(), transform])
    with _reading_from(folder):
        try:
            train_set, test_set = MNIST(train=True, transform=transform), MNIST(train=False, transform=transform)
        except (ValueError, OSError, EOFError, zlib.error) as e:
            raise TaskError(f"cannot read MNIST from {folder}: {e}") from None
    where = "" if data is None else f" from {data}"
    return train_set, test_set, "MNIST ({n} images)" + where
