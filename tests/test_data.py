"""Data sets (offline, on small files written here in the real formats), data loaders and transforms."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import re
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from xdezero import datasets, transforms
from xdezero.backends import is_cupy_available
from xdezero.dataloaders import DataLoader, SeqDataLoader
from xdezero.datasets import CIFAR10, CIFAR100, MNIST, Dataset, DownloadError, SinCurve, Spiral, get_file, get_spiral


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty cache folder, and a network that fails loudly if anything tries to use it."""
    monkeypatch.setenv("XDEZERO_DATA_DIR", str(tmp_path))

    def offline(url, timeout):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(datasets, "_open_url", offline)
    return tmp_path


def serve(monkeypatch, files: dict[str, bytes]):
    """Answer downloads from `files` (URL basename -> content); returns the list of requested URLs."""
    requested = []

    def fake_open(url, timeout):
        requested.append(url)
        name = url.rpartition("/")[2]
        if name not in files:
            raise urllib.error.URLError("not found (test)")
        return io.BytesIO(files[name])

    monkeypatch.setattr(datasets, "_open_url", fake_open)
    return requested


# --- toy data sets -------------------------------------------------------------------------------------


def test_spiral_shapes_classes_and_radii():
    x, t = get_spiral(train=True)
    assert x.shape == (300, 2) and x.dtype == np.float32
    assert t.shape == (300,) and t.dtype == np.int64
    assert np.bincount(t).tolist() == [100, 100, 100]
    # Point i of each arm lies at radius i/100, whatever the angular noise.
    for c in range(3):
        radii = np.sort(np.hypot(x[t == c, 0], x[t == c, 1]))
        np.testing.assert_allclose(radii, np.arange(100) / 100, atol=1e-6)
    assert not np.array_equal(np.sort(np.arange(300)), np.argsort(t, kind="stable")), "labels should be shuffled"


@pytest.mark.parametrize("train, seed", [(True, 1984), (False, 2020)])
def test_spiral_matches_the_point_by_point_recipe(train, seed):
    # The book's recipe, one point and one normal draw at a time, then a shuffle, from the same seeded stream.
    rng = np.random.RandomState(seed)
    x = np.zeros((300, 2), dtype=np.float32)
    t = np.zeros(300, dtype=np.int64)
    for j in range(3):
        for i in range(100):
            rate = i / 100
            theta = j * 4.0 + 4.0 * rate + rng.randn() * 0.2
            x[100 * j + i] = [rate * np.sin(theta), rate * np.cos(theta)]
            t[100 * j + i] = j
    order = rng.permutation(300)
    got_x, got_t = get_spiral(train)
    np.testing.assert_array_equal(got_x, x[order])
    np.testing.assert_array_equal(got_t, t[order])


def test_spiral_reseeds_the_global_generator_as_dezero_does():
    # DeZero's get_spiral seeds NumPy's global generator and draws 300 normals and a permutation from it:
    # what a program draws next (the weights) depends on that.
    np.random.seed(123)
    x1, t1 = get_spiral(True)
    after = np.random.rand(3)
    np.random.seed(1984)
    np.random.randn(300)
    np.random.permutation(300)
    np.testing.assert_array_equal(after, np.random.rand(3))
    x2, t2 = get_spiral(True)
    xt, _ = get_spiral(False)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(t1, t2)
    assert not np.array_equal(x1, xt)


def test_spiral_dataset():
    ds = Spiral(train=False)
    assert len(ds) == 300
    x, t = ds[5]
    np.testing.assert_array_equal(x, get_spiral(False)[0][5])
    assert t == get_spiral(False)[1][5]
    with pytest.raises(TypeError, match="one integer index"):
        ds[[0, 1]]


def test_dataset_transforms_and_unlabelled():
    class Squares(Dataset):
        def prepare(self):
            self.data = np.arange(5.0)

    ds = Squares(transform=lambda v: v * v)
    assert len(ds) == 5
    assert ds[3] == (9.0, None)
    spiral = Spiral(target_transform=lambda t: t + 10)
    assert spiral[0][1] == get_spiral()[1][0] + 10


def test_sin_curve():
    np.random.seed(0)
    train, test = SinCurve(train=True), SinCurve(train=False)
    assert len(train) == 999 and train.data.shape == (999, 1) and train.label.shape == (999, 1)
    np.testing.assert_array_equal(train.data[1:], train.label[:-1])
    grid = np.linspace(0, 2 * np.pi, 1000)
    # DeZero's noise: uniform in ±0.05 from NumPy's global generator, drawn for the test set too.
    np.random.seed(0)
    noise = np.random.uniform(-0.05, 0.05, size=1000)
    np.testing.assert_array_equal(train.data[:, 0], (np.sin(grid) + noise)[:-1])
    np.random.uniform(-0.05, 0.05, size=1000)
    after = np.random.rand()
    np.random.seed(0)
    SinCurve(train=True)
    SinCurve(train=False)
    assert np.random.rand() == after
    np.testing.assert_allclose(test.label[:, 0], np.cos(grid[1:]))


# --- downloads ---------------------------------------------------------------------------------------


def md5(content: bytes) -> str:
    return "md5:" + hashlib.md5(content).hexdigest()


def test_get_file_downloads_verifies_and_caches(data_dir, monkeypatch):
    content = b"payload" * 1000
    requested = serve(monkeypatch, {"f.bin": content})
    path = get_file("https://example.invalid/f.bin", checksum=md5(content))
    assert Path(path).read_bytes() == content
    assert get_file("https://example.invalid/f.bin", checksum=md5(content)) == path
    assert len(requested) == 1, "a cached file must not be downloaded again"
    assert sorted(p.name for p in data_dir.iterdir()) == ["f.bin"]


def test_get_file_sha256_and_mirrors(data_dir, monkeypatch):
    content = b"abc"
    requested = serve(monkeypatch, {"g.bin": content})
    path = get_file(
        ["https://down.invalid/x/nothing", "https://up.invalid/g.bin"],
        "g.bin",
        "sha256:" + hashlib.sha256(content).hexdigest(),
    )
    assert Path(path).read_bytes() == content
    assert len(requested) == 2


def test_checksum_mismatch_leaves_no_cache(data_dir, monkeypatch):
    serve(monkeypatch, {"f.bin": b"corrupt"})
    with pytest.raises(DownloadError, match="checksum"):
        get_file("https://example.invalid/f.bin", checksum=md5(b"the real content"))
    assert list(data_dir.iterdir()) == [], "neither the file nor a temporary file may be left behind"


def test_interrupted_download_leaves_no_cache(data_dir, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, *args):
            raise ConnectionResetError("connection reset (test)")

    monkeypatch.setattr(datasets, "_open_url", lambda url, timeout: Broken())
    with pytest.raises(DownloadError, match="connection reset"):
        get_file("https://example.invalid/f.bin")
    assert list(data_dir.iterdir()) == []


def test_offline_error_says_where_to_put_the_file(data_dir):
    with pytest.raises(DownloadError, match="offline") as info:
        get_file("https://example.invalid/f.bin")
    assert str(data_dir / "f.bin") in str(info.value)


def test_bad_checksum_spec():
    with pytest.raises(ValueError, match="sha256"):
        get_file("https://example.invalid/f.bin", checksum="crc32:1234")


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("XDEZERO_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.data_dir() == tmp_path / ".xdezero"
    assert (tmp_path / ".xdezero").is_dir()


# --- MNIST -------------------------------------------------------------------------------------------


def idx_gz(array: np.ndarray) -> bytes:
    """`array` (uint8) in the IDX format MNIST is published in, gzipped."""
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def mnist_files(n: int, prefix: str):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return (
        images,
        labels,
        {
            f"{prefix}-images-idx3-ubyte.gz": idx_gz(images),
            f"{prefix}-labels-idx1-ubyte.gz": idx_gz(labels),
        },
    )


def test_mnist_from_cache(data_dir):
    images, labels, files = mnist_files(7, "t10k")
    for name, content in files.items():
        (data_dir / name).write_bytes(content)
    ds = MNIST(train=False)
    assert len(ds) == 7
    assert ds.data.shape == (7, 1, 28, 28) and ds.data.dtype == np.uint8
    np.testing.assert_array_equal(ds.data[:, 0], images)
    np.testing.assert_array_equal(ds.label, labels)
    x, t = ds[2]  # default transform: flat float32 in [0, 1]
    assert x.shape == (784,) and x.dtype == np.float32
    np.testing.assert_allclose(x, images[2].ravel() / 255.0, rtol=1e-6)
    assert t == labels[2]
    raw = MNIST(train=False, transform=None)
    assert raw[2][0].shape == (1, 28, 28) and raw[2][0].dtype == np.uint8
    assert MNIST.labels()[3] == "3"


def test_mnist_download_checks_checksums(data_dir, monkeypatch):
    _, _, files = mnist_files(3, "train")
    monkeypatch.setattr(datasets, "MNIST_FILES", {name: md5(content) for name, content in files.items()})
    requested = serve(monkeypatch, files)
    ds = MNIST(train=True)
    assert len(ds) == 3 and len(requested) == 2
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(files)


def test_mnist_real_checksums_reject_other_content(data_dir, monkeypatch):
    _, _, files = mnist_files(3, "train")
    serve(monkeypatch, files)  # not the official files: the published MD5s must reject them
    with pytest.raises(DownloadError, match="checksum"):
        MNIST(train=True)
    assert list(data_dir.iterdir()) == []


def test_mnist_corrupt_cached_file(data_dir):
    _, _, files = mnist_files(3, "t10k")
    for name, content in files.items():
        (data_dir / name).write_bytes(content)
    (data_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03rubbish"))
    with pytest.raises(ValueError, match="magic"):
        MNIST(train=False)


def test_mnist_offline(data_dir):
    with pytest.raises(DownloadError, match=r"t10k-images-idx3-ubyte\.gz"):
        MNIST(train=False)


def all_mnist_files(n: int = 5) -> dict[str, bytes]:
    return {**mnist_files(n, "train")[2], **mnist_files(n, "t10k")[2]}


def test_mnist_files_table_is_the_published_one():
    # The four files of yann.lecun.com/exdb/mnist, with the MD5s that torchvision's MNIST checks too.
    assert datasets.MNIST_FILES == {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    }


def test_locate_mnist_checks_files_placed_by_hand_in_the_cache(data_dir, monkeypatch):
    files = all_mnist_files()
    for name, content in files.items():
        (data_dir / name).write_bytes(content)
    # Not the published files: refused, before anything reads them, naming the file and both checksums.
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is not the published MNIST file \(md5 "):
        datasets.locate_mnist()
    monkeypatch.setattr(datasets, "MNIST_FILES", {name: md5(content) for name, content in files.items()})
    assert datasets.locate_mnist() == data_dir
    (data_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz is not the published MNIST file"):
        datasets.locate_mnist()


def test_locate_mnist_downloads_what_is_missing_with_checksums(data_dir, monkeypatch):
    files = all_mnist_files()
    monkeypatch.setattr(datasets, "MNIST_FILES", {name: md5(content) for name, content in files.items()})
    (data_dir / "train-images-idx3-ubyte.gz").write_bytes(files["train-images-idx3-ubyte.gz"])
    requested = serve(monkeypatch, files)
    assert datasets.locate_mnist() == data_dir
    assert sorted(url.rpartition("/")[2] for url in requested) == sorted(set(files) - {"train-images-idx3-ubyte.gz"})
    assert all(url.startswith(datasets.MNIST_MIRRORS[0]) for url in requested)


def test_locate_mnist_offline_says_what_to_download_and_where(data_dir):
    # data_dir's fixture answers every URL with an error, as an offline machine would.
    names = ", ".join(datasets.MNIST_FILES)
    advice = f"Download {names} from {datasets.MNIST_MIRRORS[0]} and place them in {data_dir}"
    with pytest.raises(DownloadError, match=re.escape(advice)):
        datasets.locate_mnist()
    assert list(data_dir.iterdir()) == []


def test_locate_mnist_in_a_folder_of_ones_own_checks_the_format(tmp_path):
    files = all_mnist_files()
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    assert datasets.locate_mnist(tmp_path) == tmp_path  # no checksums for one's own files
    images, labels, _ = mnist_files(5, "t10k")
    ds = MNIST(train=False, transform=None, folder=tmp_path)
    np.testing.assert_array_equal(ds.data[:, 0], images)
    np.testing.assert_array_equal(ds.label, labels)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>404</html>")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is not a gzip-compressed MNIST file"):
        datasets.locate_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"PK\x03\x04 a zip"))
    with pytest.raises(ValueError, match="bad magic number"):
        datasets.locate_mnist(str(tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing t10k-images-idx3-ubyte\.gz"):
        datasets.locate_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no t10k-images-idx3-ubyte\.gz in"):
        MNIST(train=False, folder=tmp_path)


# --- CIFAR -------------------------------------------------------------------------------------------


def cifar_tar(members: dict[str, dict]) -> bytes:
    """A .tar.gz holding each dict pickled with bytes keys, like the official python version."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, batch in members.items():
            payload = pickle.dumps({k.encode(): v for k, v in batch.items()}, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_cifar10(data_dir):
    rng = np.random.default_rng(1)
    batches = {}
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batches[f"cifar-10-batches-py/{name}"] = {
            "data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8),
            "labels": [i, (i + 1) % 10],
            "batch_label": b"batch",
            "filenames": [b"a.png", b"b.png"],
        }
    (data_dir / "cifar-10-python.tar.gz").write_bytes(cifar_tar(batches))
    train, test = CIFAR10(train=True), CIFAR10(train=False, transform=None)
    assert len(train) == 10 and len(test) == 2
    assert train.data.shape == (10, 3, 32, 32) and train.data.dtype == np.uint8
    np.testing.assert_array_equal(train.data[2].ravel(), batches["cifar-10-batches-py/data_batch_2"]["data"][0])
    assert train.label.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    x, t = train[0]
    assert x.dtype == np.float32 and x.shape == (3, 32, 32) and t == 0
    np.testing.assert_allclose(x, train.data[0] / 127.5 - 1.0, rtol=1e-6)
    assert test.label.tolist() == [5, 6]
    assert CIFAR10.labels()[0] == "airplane"


def test_cifar100_label_types(data_dir):
    rng = np.random.default_rng(2)
    batches = {
        f"cifar-100-python/{name}": {
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "fine_labels": list(range(n)),
            "coarse_labels": [k % 20 + 1 for k in range(n)],
        }
        for name, n in (("train", 4), ("test", 3))
    }
    (data_dir / "cifar-100-python.tar.gz").write_bytes(cifar_tar(batches))
    assert CIFAR100(train=True).label.tolist() == [0, 1, 2, 3]
    assert CIFAR100(train=False, label_type="coarse").label.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="label_type"):
        CIFAR100(label_type="medium")


def test_cifar_pickle_cannot_run_code(data_dir):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    batch = pickle.dumps({b"data": Exploit(), b"labels": [0]}, protocol=2)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(batch)
        tar.addfile(info, io.BytesIO(batch))
    (data_dir / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load .*print"):
        CIFAR10(train=False)


def test_safe_unpickler_reads_numpy_1_names():
    # Pickles written by NumPy 1 (as the official CIFAR files are) name numpy.core.multiarray.
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    payload = pickle.dumps({b"data": array, b"x": np.float64(2.5)}, protocol=2)
    payload = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    loaded = datasets._load_pickle(io.BytesIO(payload))
    np.testing.assert_array_equal(loaded["data"], array)
    assert loaded["x"] == 2.5


# --- DataLoader --------------------------------------------------------------------------------------


class Range(Dataset):
    def __init__(self, n, labelled=True):
        self.n, self.labelled = n, labelled
        super().__init__()

    def prepare(self):
        self.data = np.arange(self.n * 2, dtype=np.float32).reshape(self.n, 2)
        self.label = np.arange(self.n) if self.labelled else None


def test_dataloader_batches_in_order_with_last_partial_batch():
    loader = DataLoader(Range(10), batch_size=4, shuffle=False)
    assert len(loader) == 3
    batches = list(loader)
    assert [x.shape for x, _ in batches] == [(4, 2), (4, 2), (2, 2)]
    assert [t.tolist() for _, t in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(batches[2][0], [[16, 17], [18, 19]])
    # The loader resets at the end of an epoch: the next loop sees the same batches again.
    assert [t.tolist() for _, t in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_dataloader_next_and_manual_reset():
    loader = DataLoader(Range(5), batch_size=2, shuffle=False)
    assert loader.next()[1].tolist() == [0, 1]
    assert next(loader)[1].tolist() == [2, 3]
    loader.reset()
    assert next(loader)[1].tolist() == [0, 1]


def test_dataloader_shuffle_covers_each_example_once_per_epoch():
    loader = DataLoader(Range(23), batch_size=5, seed=0)
    epochs = [np.concatenate([t for _, t in loader]) for _ in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(23))
    assert not np.array_equal(epochs[0], np.arange(23))
    assert not np.array_equal(epochs[0], epochs[1]), "each epoch should have a new order"
    for x, t in DataLoader(Range(23), batch_size=5, seed=0):
        np.testing.assert_array_equal(x[:, 0], 2 * t)  # examples stay paired with their labels


def test_dataloader_seed_and_global_rng():
    def order(loader):
        return np.concatenate([t for _, t in loader]).tolist()

    assert order(DataLoader(Range(50), 8, seed=3)) == order(DataLoader(Range(50), 8, seed=3))
    # Without a seed, each epoch's order is np.random.permutation from the global generator, as in DeZero:
    # one drawn when the loader is made, the next when an epoch ends.
    np.random.seed(7)
    loader = DataLoader(Range(50), 8)
    first, second = order(loader), order(loader)
    np.random.seed(7)
    assert first == np.random.permutation(50).tolist()
    assert second == np.random.permutation(50).tolist()
    before = np.random.get_state()[1].copy()
    order(DataLoader(Range(50), 8, seed=1))  # a seeded loader leaves the global generator alone
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_dataloader_unlabelled():
    x, t = next(DataLoader(Range(3, labelled=False), 2, shuffle=False))
    assert x.shape == (2, 2) and t is None


@pytest.mark.parametrize("bad", [0, -3])
def test_dataloader_bad_batch_size(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        DataLoader(Range(3), batch_size=bad)
    with pytest.raises(ValueError, match="batch_size"):
        SeqDataLoader(Range(3), batch_size=bad)


def test_dataloader_batch_size_type():
    with pytest.raises(TypeError, match="batch_size"):
        DataLoader(Range(3), batch_size=2.5)


@pytest.mark.skipif(is_cupy_available(), reason="needs a machine without a usable CuPy GPU")
def test_dataloader_gpu_without_cupy_is_a_clear_error():
    loader = DataLoader(Range(3), 2, gpu=True)
    with pytest.raises(RuntimeError, match="CuPy"):
        next(loader)
    loader.to_cpu()
    assert next(loader)[0].shape == (2, 2)
    loader.to_gpu()
    assert loader.gpu


def test_seq_dataloader():
    loader = SeqDataLoader(Range(10), batch_size=3)
    assert len(loader) == 4
    labels = [t.tolist() for _, t in loader]
    # Row k walks its own stretch starting at k * (10 // 3), one step per iteration.
    assert labels == [[0, 3, 6], [1, 4, 7], [2, 5, 8], [3, 6, 9]]
    assert [t.tolist() for _, t in loader] == labels
    with pytest.raises(ValueError, match="larger than the data set"):
        SeqDataLoader(Range(2), batch_size=3)


def test_dataloader_with_sin_curve():
    x, t = next(SeqDataLoader(SinCurve(), batch_size=30))
    assert x.shape == (30, 1) and t.shape == (30, 1)


# --- transforms --------------------------------------------------------------------------------------


def test_compose_flatten_astype():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = transforms.Compose([transforms.Flatten(), transforms.ToFloat()])(a)
    assert out.shape == (24,) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.arange(24))
    assert transforms.Compose()(a) is a
    assert transforms.ToInt()(np.array([1.7, -2.2])).tolist() == [1, -2]
    assert transforms.ToInt()(np.array([1.7])).dtype == np.int64
    assert transforms.AsType(np.float16)(a).dtype == np.float16
    flat = transforms.Flatten()(a)
    flat[0] = 99
    assert a[0, 0, 0] == 0, "Flatten must copy"


def test_normalize():
    a = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    out = transforms.Normalize(2.0, 4.0)(a)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (np.arange(12).reshape(3, 2, 2) - 2.0) / 4.0)
    per_channel = transforms.Normalize(mean=[0.0, 1.0, 2.0], std=[1.0, 2.0, 4.0])(a)
    assert per_channel.dtype == np.float32
    expected = (np.arange(12).reshape(3, 2, 2) - np.array([0, 1, 2])[:, None, None]) / np.array([1, 2, 4])[
        :, None, None
    ]
    np.testing.assert_allclose(per_channel, expected)
    np.testing.assert_allclose(transforms.Normalize([1.0], [2.0])(a), (a - 1.0) / 2.0)
    with pytest.raises(ValueError, match="per-channel"):
        transforms.Normalize(mean=[0.0, 1.0])(a)


def test_random_horizontal_flip_on_arrays():
    a = np.arange(6).reshape(1, 2, 3)
    always, never = transforms.RandomHorizontalFlip(p=1.0), transforms.RandomHorizontalFlip(p=0.0)
    np.testing.assert_array_equal(always(a), a[:, :, ::-1])
    assert never(a) is a
    flip = transforms.RandomHorizontalFlip(seed=0)
    flips = sum(not np.array_equal(flip(a), a) for _ in range(400))
    assert 140 < flips < 260
    with pytest.raises(ValueError, match="probability"):
        transforms.RandomHorizontalFlip(p=2.0)


def test_image_transforms():
    Image = pytest.importorskip("PIL.Image")
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 6, 8), dtype=np.uint8)  # C, H, W
    img = transforms.ToPIL()(pixels)
    assert img.size == (8, 6) and img.mode == "RGB"
    back = transforms.ToArray(np.uint8)(img)
    np.testing.assert_array_equal(back, pixels)
    assert transforms.ToArray()(img).dtype == np.float32
    assert transforms.ToArray()(pixels) is pixels
    with pytest.raises(TypeError, match="PIL image"):
        transforms.ToArray()([1, 2])
    crop = transforms.CenterCrop((4, 2))(img)
    np.testing.assert_array_equal(transforms.ToArray(np.uint8)(crop), pixels[:, 2:4, 2:6])
    with pytest.raises(ValueError, match="cannot crop"):
        transforms.CenterCrop(10)(img)
    assert transforms.Resize(4)(img).size == (4, 4)
    assert transforms.Resize((5, 3), Image.Resampling.NEAREST)(img).size == (5, 3)
    bgr = transforms.ToArray(np.uint8)(transforms.Convert("BGR")(img))
    np.testing.assert_array_equal(bgr, pixels[::-1])
    assert transforms.Convert("L")(img).mode == "L"
    flipped = transforms.RandomHorizontalFlip(p=1.0)(img)
    np.testing.assert_array_equal(transforms.ToArray(np.uint8)(flipped), pixels[:, :, ::-1])
    gray = transforms.ToPIL()(pixels[:1])
    assert gray.mode == "L" and transforms.ToArray(np.uint8)(gray).shape == (1, 6, 8)


# --- DeZero's other data names: Shakespear, ImageNet labels, the npz cache, cache_dir, show_progress -------


def test_shakespear_from_a_cached_file(data_dir):
    import xdezero.datasets as D

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    (data_dir / "shakespear.txt").write_text(text, encoding="utf-8")
    ds = D.Shakespear()
    # Ids in order of first appearance, as DeZero numbers them.
    first_seen = list(dict.fromkeys(text))
    assert ds.char_to_id == {c: i for i, c in enumerate(first_seen)}
    assert ds.id_to_char == dict(enumerate(first_seen))
    assert len(ds) == len(text) - 1
    assert "".join(ds.id_to_char[int(i)] for i in ds.data) == text[:-1]
    assert "".join(ds.id_to_char[int(i)] for i in ds.label) == text[1:]
    x, t = ds[3]
    assert (ds.id_to_char[int(x)], ds.id_to_char[int(t)]) == (text[3], text[4])


def test_imagenet_labels_from_a_cached_file(data_dir):
    import xdezero.datasets as D

    (data_dir / "imagenet1000_clsidx_to_labels.txt").write_text(
        "{0: 'tench, Tinca tinca',\n 1: 'goldfish, Carassius auratus',\n 999: 'toilet tissue'}", encoding="utf-8"
    )
    assert D.ImageNet.labels() == {0: "tench, Tinca tinca", 1: "goldfish, Carassius auratus", 999: "toilet tissue"}
    with pytest.raises(NotImplementedError, match="labels"):
        D.ImageNet()


def test_imagenet_labels_are_parsed_never_run(data_dir):
    import xdezero.datasets as D

    (data_dir / "imagenet1000_clsidx_to_labels.txt").write_text("__import__('os').getcwd()", encoding="utf-8")
    with pytest.raises(ValueError, match="dict literal"):
        D.ImageNet.labels()


def test_npz_cache_round_trip(data_dir):
    import xdezero.datasets as D

    url = "https://example.org/files/cifar-10-python.tar.gz"
    assert D.load_cache_npz(url, train=True) == (None, None)
    data, label = np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2), np.array([3, 1])
    path = D.save_cache_npz(data, label, url, train=True)
    assert path == str(data_dir / "cifar-10-python.tar.gz.train.npz")
    got_data, got_label = D.load_cache_npz(url, train=True)
    np.testing.assert_array_equal(got_data, data)
    np.testing.assert_array_equal(got_label, label)
    assert D.load_cache_npz(url, train=False) == (None, None)
    assert D.save_cache_npz(data[:1], label[:1], url, train=True) == path  # an existing cache is kept
    assert len(D.load_cache_npz(url, train=True)[0]) == 2
    assert [p.name for p in data_dir.iterdir()] == ["cifar-10-python.tar.gz.train.npz"]  # no temporary left


def test_cache_dir_follows_the_environment(data_dir):
    import xdezero.datasets as D
    import xdezero.utils as U

    assert D.cache_dir == U.cache_dir == str(data_dir)


def test_show_progress(capsys):
    import xdezero.utils as U

    U.show_progress(1, 25, 100)
    U.show_progress(10, 25, 100)
    out = capsys.readouterr().out
    assert out == "\r[" + "#" * 7 + "." * 23 + "] 25.00%" + "\r[" + "#" * 30 + "] 100.00%"


def test_shakespear_downloads_once_into_the_cache(data_dir, monkeypatch):
    import xdezero.datasets as D

    requested = serve(monkeypatch, {"input.txt": b"To be, or not to be\n"})
    assert "".join(D.Shakespear().id_to_char[int(i)] for i in D.Shakespear().label) == "o be, or not to be\n"
    assert requested == [D.Shakespear.url]  # the second data set read the cached copy
    assert (data_dir / "shakespear.txt").read_bytes() == b"To be, or not to be\n"
