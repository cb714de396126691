"""Data sets (DeZero's `dezero.datasets`): in-memory NumPy data, indexed one example at a time.

Downloaded files are cached in `~/.xdezero` (or the folder named by the environment variable
`XDEZERO_DATA_DIR`). A download goes to a temporary file in that folder, is checked against its published
checksum, and only then renamed into place, so an interrupted or corrupt download never leaves a file that
looks cached. The data sets trust files already in the folder, as DeZero does: to use a copy fetched by other
means, put it there under its original name. `locate_mnist` checks MNIST's files (against their published
checksums in the cache folder, for format in a folder of your own) before anything reads them.

CIFAR-10/100 are distributed as Python pickles. Unpickling can run arbitrary code, so they are read with
a restricted unpickler that rebuilds only NumPy arrays, dtypes and plain containers (see `_SafeUnpickler`).

One file (about 590 lines), as DeZero's `dezero.datasets` is one module: each data set is short, and they share
the cache folder, the checked downloads and the file readers.
"""

from __future__ import annotations

import ast
import codecs
import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xdezero.transforms import Compose, Flatten, Normalize, ToFloat

__all__ = [
    "Dataset",
    "Spiral",
    "SinCurve",
    "MNIST",
    "CIFAR10",
    "CIFAR100",
    "ImageNet",
    "Shakespear",
    "DownloadError",
    "data_dir",
    "cache_path",
    "cache_dir",  # noqa: F822 (a lazy module attribute, see __getattr__)
    "get_file",
    "get_spiral",
    "load_cache_npz",
    "locate_mnist",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "save_cache_npz",
]


def __getattr__(name: str) -> Any:
    # DeZero's `cache_dir` string, read when asked so that it follows $XDEZERO_DATA_DIR.
    if name == "cache_dir":
        return str(cache_path())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- download and cache ---------------------------------------------------------------------------


class DownloadError(OSError):
    """A data file could not be downloaded, or its content failed the checksum."""


def cache_path() -> Path:
    """The cache folder's path: `$XDEZERO_DATA_DIR` if set, else `~/.xdezero` (DeZero's `cache_dir`)."""
    env = os.environ.get("XDEZERO_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".xdezero"


def data_dir() -> Path:
    """The cache folder (see `cache_path`), created on first use."""
    path = cache_path()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _open_url(url: str, timeout: float) -> Any:
    """A readable binary stream for `url` (the one place that touches the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": "xdezero"})
    return urllib.request.urlopen(request, timeout=timeout)


def _new_hash(checksum: str | None) -> tuple[Any, str] | None:
    if checksum is None:
        return None
    algorithm, sep, expected = checksum.partition(":")
    if not sep or algorithm not in ("md5", "sha256"):
        raise ValueError(f"get_file: checksum must look like 'sha256:<hex>' or 'md5:<hex>', got {checksum!r}")
    return hashlib.new(algorithm, usedforsecurity=False), expected.lower()


def _download(url: str, dest: Path, checksum: str | None, timeout: float) -> None:
    """Stream `url` into a temporary file next to `dest`, verify it, then rename it to `dest`."""
    hasher = _new_hash(checksum)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, _open_url(url, timeout) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                if hasher is not None:
                    hasher[0].update(chunk)
        if hasher is not None and hasher[0].hexdigest() != hasher[1]:
            raise DownloadError(
                f"the file downloaded from {url} is corrupt: its {hasher[0].name} checksum is "
                f"{hasher[0].hexdigest()}, expected {hasher[1]}; nothing was cached, try again later"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def get_file(
    url: str | Sequence[str], file_name: str | None = None, checksum: str | None = None, timeout: float = 60.0
) -> str:
    """The local path of the file at `url`, downloading it into `data_dir()` unless already there.

    `url` may be a list of mirrors, tried in order. `checksum` ('sha256:<hex>' or 'md5:<hex>') is verified on
    download; a mismatch raises DownloadError and leaves nothing in the cache.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("get_file: no URL given")
    if file_name is None:
        file_name = urls[0].rstrip("/").rpartition("/")[2]
    _new_hash(checksum)  # reject a malformed checksum before touching the network
    dest = data_dir() / file_name
    if dest.exists():
        return str(dest)
    failures = []
    for u in urls:
        print(f"Downloading {file_name} from {u} ...", file=sys.stderr)
        try:
            _download(u, dest, checksum, timeout)
            return str(dest)
        except DownloadError as e:
            failures.append(str(e))
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            failures.append(f"{u}: {reason}")
    raise DownloadError(
        f"could not download {file_name} ({'; '.join(failures)}). If this machine is offline, fetch the file "
        f"elsewhere and place it at {dest} (set XDEZERO_DATA_DIR to use another folder)."
    )


# --- Dataset -----------------------------------------------------------------------------------------


def _identity(x: Any) -> Any:
    return x


class Dataset:
    """Examples `(transform(data[i]), target_transform(label[i]))`; subclasses fill `data`/`label` in `prepare`."""

    data: Any  # the examples (an array, or anything indexable), None until `prepare` fills it
    label: Any  # their labels, None for a data set without labels

    def __init__(
        self,
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.train: bool = train
        self.transform: Callable[[Any], Any] = _identity if transform is None else transform
        self.target_transform: Callable[[Any], Any] = _identity if target_transform is None else target_transform
        self.data = None
        self.label = None
        self.prepare()

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        """Example `index` as (x, t), t None when the data set has no labels."""
        if not isinstance(index, int | np.integer):
            raise TypeError(
                f"{type(self).__name__}[index] takes one integer index (use a DataLoader for batches), "
                f"got {type(index).__name__}"
            )
        x = self.transform(self.data[index])
        if self.label is None:
            return x, None
        return x, self.target_transform(self.label[index])

    def __len__(self) -> int:
        """The number of examples."""
        if self.data is None:
            return 0
        return len(self.data)

    def prepare(self) -> None:
        """Load `self.data` (and `self.label`, or leave it None); called once by `__init__`."""


# --- toy data sets -------------------------------------------------------------------------------------


def get_spiral(train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Three interleaved spirals of 100 points each: x float32 (300, 2), t int64 (300,), shuffled.

    As in DeZero, this seeds NumPy's global generator (1984 for the training set, 2020 for the test set)
    and draws from it, so the data and every number drawn after it (weights, shuffling) are DeZero's.
    """
    np.random.seed(1984 if train else 2020)
    rng = np.random
    num_data, num_class = 100, 3
    rate = np.arange(num_data) / num_data
    theta = np.arange(num_class)[:, None] * 4.0 + 4.0 * rate + rng.randn(num_class, num_data) * 0.2
    radius = np.broadcast_to(rate, theta.shape)
    x = np.stack([radius * np.sin(theta), radius * np.cos(theta)], axis=-1).reshape(-1, 2).astype(np.float32)
    t = np.repeat(np.arange(num_class, dtype=np.int64), num_data)
    order = rng.permutation(num_data * num_class)
    return x[order], t[order]


class Spiral(Dataset):
    """The spiral data set of `get_spiral` (300 points, 3 classes)."""

    data: np.ndarray  # float32 (300, 2) points
    label: np.ndarray  # int64 (300,) classes

    def prepare(self) -> None:
        """Draw the spiral points (see `get_spiral`)."""
        self.data, self.label = get_spiral(self.train)


class SinCurve(Dataset):
    """999 consecutive pairs (y[k], y[k+1]) of sin plus uniform noise in ±0.05 (train) or of cos (test).

    The noise is drawn from NumPy's global generator in both cases, as in DeZero (seed it with
    `np.random.seed` for a fixed data set, and the numbers drawn after it stay DeZero's).
    """

    data: np.ndarray  # float64 (999, 1) values y[k]
    label: np.ndarray  # float64 (999, 1) values y[k + 1]

    def prepare(self) -> None:
        """Sample the noisy curve."""
        x = np.linspace(0, 2 * np.pi, 1000)
        noise = np.random.uniform(-0.05, 0.05, size=x.shape)
        if self.train:
            y = np.sin(x) + noise
        else:
            y = np.cos(x)
        self.data = y[:-1, None]
        self.label = y[1:, None]


# --- MNIST -------------------------------------------------------------------------------------------

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# The published files and their checksums.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
}


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_idx_header(path: Path) -> None:
    """A gzip-compressed IDX file of unsigned bytes (magic 0x0000080N), or ValueError naming the file."""
    try:
        with gzip.open(path, "rb") as f:
            magic = f.read(4)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path} is not a gzip-compressed MNIST file ({type(e).__name__}: {e})") from None
    if len(magic) < 4 or magic[:3] != b"\0\0\x08" or not 1 <= magic[3] <= 4:
        raise ValueError(f"{path} is gzip data but not an MNIST (IDX) file: bad magic number {magic.hex() or 'none'}")


def locate_mnist(folder: str | os.PathLike[str] | None = None, *, test_only: bool = False) -> Path:
    """The folder holding MNIST's four files (`MNIST_FILES`), each checked before anything reads it; with
    `test_only`, only the test split's two (what an evaluation reads: the 60,000 training images are not fetched).

    Without `folder`: the cache folder (`data_dir()`), where every file must be the published one: files
    already there, downloaded or placed by hand, are checked against their MD5; missing ones are downloaded
    from `MNIST_MIRRORS` and checked. With `folder`: MNIST-format files of your own (a subset, Fashion-MNIST,
    generated data), checked for format only. `MNIST(folder=...)` reads such a folder.

    Raises FileNotFoundError (a file missing from `folder`), ValueError (not the published file, or not a
    gzip-compressed IDX file) or DownloadError (the message says what to download and where to put it).
    """
    names = [name for name in MNIST_FILES if not test_only or name.startswith("t10k-")]
    if folder is not None:
        folder = Path(folder)
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: missing {', '.join(missing)} (MNIST-format .gz files)")
    else:
        folder = data_dir()
        for name in names:
            path = folder / name
            algorithm, _, expected = MNIST_FILES[name].partition(":")
            if path.exists() and (found := _file_digest(path, algorithm)) != expected:
                raise ValueError(
                    f"{path} is not the published MNIST file ({algorithm} {found}, expected {expected}): "
                    "delete it to download it again"
                )
        missing = [name for name in names if not (folder / name).exists()]
        for name in missing:
            try:
                get_file([m + name for m in MNIST_MIRRORS], name, MNIST_FILES[name])
            except DownloadError as e:
                raise DownloadError(
                    f"cannot download MNIST ({_reason(e)}). Download {', '.join(missing)} "
                    f"from {MNIST_MIRRORS[0]} and place them in {folder} (or set XDEZERO_DATA_DIR)"
                ) from None
    for name in names:
        _check_idx_header(folder / name)
    return folder


def _reason(e: DownloadError) -> str:
    """What went wrong, from get_file's message 'could not download NAME (REASONS). If this machine ...'."""
    text = str(e)
    start, end = text.find("("), text.rfind("). If this machine")
    return text[start + 1 : end] if 0 <= start < end else text


# Stateless, so one shared instance serves as the default argument.
_MNIST_TRANSFORM = Compose([Flatten(), ToFloat(), Normalize(0.0, 255.0)])
_CIFAR_TRANSFORM = Compose([ToFloat(), Normalize(mean=127.5, std=127.5)])


def _read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (the MNIST format: magic 0x0000080N, N big-endian uint32 sizes, data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = 0x800 + ndim
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise ValueError(f"{path} is not an IDX file of {ndim}-d unsigned bytes (bad magic number)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated or corrupt: header says shape {shape}, found {data.size} bytes")
    return data.reshape(shape)


class MNIST(Dataset):
    """MNIST digits: data uint8 (N, 1, 28, 28), label uint8 (N,); 60000 train / 10000 test examples.

    The default transform (DeZero's) flattens each image to 784 float32 values in [0, 1]; `transform=None`
    gives the raw uint8 images. The files are downloaded into the cache folder on first use; `folder` reads
    MNIST-format files of your own instead (see `locate_mnist`, which checks a folder before use).
    """

    data: np.ndarray  # uint8 (N, 1, 28, 28) images
    label: np.ndarray  # uint8 (N,) digits

    def __init__(
        self,
        train: bool = True,
        transform: Callable[[Any], Any] | None = _MNIST_TRANSFORM,
        target_transform: Callable[[Any], Any] | None = None,
        *,
        folder: str | os.PathLike[str] | None = None,
    ) -> None:
        self.folder: Path | None = None if folder is None else Path(folder)
        super().__init__(train, transform, target_transform)

    def prepare(self) -> None:
        """Read the split's images and labels (downloaded into the cache folder unless `folder` is given)."""
        prefix = "train" if self.train else "t10k"
        paths: dict[str, str | Path] = {}
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            if self.folder is None:
                paths[kind] = get_file([m + name for m in MNIST_MIRRORS], name, MNIST_FILES[name])
            elif not (self.folder / name).is_file():
                raise FileNotFoundError(f"MNIST: no {name} in {self.folder}")
            else:
                paths[kind] = self.folder / name
        images = _read_idx(paths["images-idx3"], 3)
        labels = _read_idx(paths["labels-idx1"], 1)
        if len(images) != len(labels):
            raise ValueError(f"MNIST: {len(images)} images but {len(labels)} labels")
        self.data = images.reshape(-1, 1, images.shape[1], images.shape[2])
        self.label = labels

    def show(self, row: int = 10, col: int = 10) -> None:
        """Show a random row × col grid of images with matplotlib."""
        import matplotlib.pyplot as plt

        h, w = self.data.shape[2:]
        picks = np.random.default_rng().integers(0, len(self.data), size=row * col)
        grid = self.data[picks, 0].reshape(row, col, h, w).transpose(0, 2, 1, 3).reshape(row * h, col * w)
        plt.imshow(grid, cmap="gray", interpolation="nearest")
        plt.axis("off")
        plt.show()

    @staticmethod
    def labels() -> dict[int, str]:
        """{class id: name}: the digits' names."""
        return {i: str(i) for i in range(10)}


# --- CIFAR -------------------------------------------------------------------------------------------


def _numpy_reconstructors() -> dict[tuple[str, str], Any]:
    # The functions NumPy's own pickles name, looked up through live objects so that both the NumPy 1 names
    # (numpy.core.multiarray) and the NumPy 2 ones (numpy._core.multiarray) map to them without deprecation.
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, 'latin1'): a pure conversion.
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Rebuilds only NumPy arrays/dtypes/scalars and builtin containers; any other global is refused."""

    _allowed = _numpy_reconstructors()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a data file: only NumPy arrays and plain containers "
                "are allowed (the file may be corrupt or malicious)"
            ) from None


def _load_pickle(stream: Any) -> dict[str, Any]:
    obj = _SafeUnpickler(stream, encoding="bytes").load()
    if not isinstance(obj, dict):
        raise ValueError(f"expected a pickled dict in the CIFAR archive, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class CIFAR10(Dataset):
    """CIFAR-10 images: data uint8 (N, 3, 32, 32), label int64 (N,); 50000 train / 10000 test examples.

    The default transform maps each pixel to float32 in [-1, 1]; `transform=None` gives the raw uint8 images.
    """

    data: np.ndarray  # uint8 (N, 3, 32, 32) images
    label: np.ndarray  # int64 (N,) classes

    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    checksum = "md5:c58f30108f718f92721af3b95e74349a"
    train_members: tuple[str, ...] = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))
    test_members: tuple[str, ...] = ("cifar-10-batches-py/test_batch",)

    def __init__(
        self,
        train: bool = True,
        transform: Callable[[Any], Any] | None = _CIFAR_TRANSFORM,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(train, transform, target_transform)

    def _label_key(self) -> str:
        return "labels"

    def prepare(self) -> None:
        """Read the split's batches from the archive (downloaded into the cache folder on first use)."""
        path = get_file(self.url, checksum=self.checksum)
        members = self.train_members if self.train else self.test_members
        data: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        with tarfile.open(path, "r:gz") as tar:
            for member in members:
                try:
                    stream = tar.extractfile(member)
                except KeyError:
                    stream = None
                if stream is None:
                    raise ValueError(f"{path} has no file {member}; the archive is not the official one")
                batch = _load_pickle(io.BytesIO(stream.read()))
                data.append(np.asarray(batch["data"], dtype=np.uint8))
                labels.append(np.asarray(batch[self._label_key()], dtype=np.int64))
        self.data = np.concatenate(data).reshape(-1, 3, 32, 32)
        self.label = np.concatenate(labels)

    @staticmethod
    def labels() -> dict[int, str]:
        """{class id: name} for the 10 classes."""
        names = "airplane automobile bird cat deer dog frog horse ship truck".split()
        return dict(enumerate(names))


class CIFAR100(CIFAR10):
    """CIFAR-100: like CIFAR10 with 100 'fine' labels or 20 'coarse' ones (`label_type`)."""

    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    checksum = "md5:eb9058c3a382ffc7106e4002c42a8d85"
    train_members: tuple[str, ...] = ("cifar-100-python/train",)
    test_members: tuple[str, ...] = ("cifar-100-python/test",)

    def __init__(
        self,
        train: bool = True,
        transform: Callable[[Any], Any] | None = _CIFAR_TRANSFORM,
        target_transform: Callable[[Any], Any] | None = None,
        label_type: str = "fine",
    ) -> None:
        if label_type not in ("fine", "coarse"):
            raise ValueError(f"CIFAR100: label_type must be 'fine' or 'coarse', got {label_type!r}")
        self.label_type: str = label_type
        super().__init__(train, transform, target_transform)

    def _label_key(self) -> str:
        return self.label_type + "_labels"


# --- ImageNet labels, Shakespeare text ---------------------------------------------------------------

_IMAGENET_LABELS_URL = (
    "https://gist.githubusercontent.com/yrevar/942d3a0ac09ec9e5eb3a/raw/"
    "238f720ff059c1f82f368259d1ca4ffa5dd8f9f5/imagenet1000_clsidx_to_labels.txt"
)


class ImageNet(Dataset):
    """ImageNet's 1000 class names (`ImageNet.labels()`, as used with VGG16); the images are not distributed."""

    def __init__(self) -> None:
        raise NotImplementedError(
            "ImageNet: the images cannot be downloaded automatically; ImageNet.labels() gives the class names"
        )

    @staticmethod
    def labels() -> dict[int, str]:
        """{class id: name} for the 1000 ImageNet classes (downloaded once into the cache folder)."""
        path = get_file(_IMAGENET_LABELS_URL)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            # The file is a Python dict literal: parsed as a literal, never executed.
            labels = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"ImageNet.labels: {path} is not a dict literal of class names ({e})") from None
        valid = isinstance(labels, dict) and all(isinstance(k, int) and isinstance(v, str) for k, v in labels.items())
        if not valid:
            raise ValueError(f"ImageNet.labels: {path} does not map class ids to names")
        return labels


class Shakespear(Dataset):
    """Tiny Shakespeare as character ids: data[k] is the id of character k, label[k] that of character k + 1.

    `char_to_id` numbers the characters in their order of first appearance; `id_to_char` is its inverse.
    (DeZero's spelling of the name.)
    """

    data: np.ndarray  # int64 ids of characters 0 .. n - 2
    label: np.ndarray  # int64 ids of characters 1 .. n - 1

    url = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    file_name = "shakespear.txt"

    def prepare(self) -> None:
        """Read the text (downloaded into the cache folder on first use) and number its characters."""
        path = get_file(self.url, self.file_name)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if len(text) < 2:
            raise ValueError(f"Shakespear: {path} holds {len(text)} characters; at least 2 are needed")
        self.char_to_id: dict[str, int] = {}
        for c in text:
            self.char_to_id.setdefault(c, len(self.char_to_id))
        self.id_to_char: dict[int, str] = {i: c for c, i in self.char_to_id.items()}
        ids = np.fromiter((self.char_to_id[c] for c in text), dtype=np.int64, count=len(text))
        self.data = ids[:-1]
        self.label = ids[1:]


# --- cached arrays ------------------------------------------------------------------------------------


def _cache_npz(url: str, train: bool) -> Path:
    return cache_path() / (url.rstrip("/").rpartition("/")[2] + (".train.npz" if train else ".test.npz"))


def load_cache_npz(url: str, train: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(data, label) saved by `save_cache_npz` for the file named at the end of `url`, or (None, None)."""
    path = _cache_npz(url, train)
    if not path.exists():
        return None, None
    with np.load(path, allow_pickle=False) as loaded:
        return loaded["data"], loaded["label"]


def save_cache_npz(data: Any, label: Any, url: str, train: bool = False) -> str:
    """Save (data, label) compressed in the cache folder, named after the end of `url` (kept if there)."""
    path = _cache_npz(url, train)
    if path.exists():
        return str(path)
    data_dir()
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, data=np.asarray(data), label=np.asarray(label))
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return str(path)
