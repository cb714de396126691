"""The `xdezero` command, run as `python -m xdezero` in a subprocess (and in-process for failure paths)."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import importlib.util
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import xdezero
from xdezero import _progress, cli, datasets
from xdezero.backends import is_cupy_available

ROOT = Path(__file__).resolve().parents[1]
MNIST_NAMES = list(datasets.MNIST_FILES)


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, **extra)


def run(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "xdezero", *args],
        cwd=ROOT,
        env=child_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def accuracies(stdout: str) -> tuple[float, float]:
    match = re.search(r"final weights: training accuracy ([0-9.]+), test accuracy ([0-9.]+)", stdout)
    assert match, stdout
    return float(match[1]), float(match[2])


def usage_error(capsys, argv: list[str]) -> str:
    """Run main(argv) in-process, expecting exit status 2 and nothing trained; the one error line."""
    try:
        status = cli.main(argv)
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    assert "epoch" not in out and "Traceback" not in err, (out, err)
    *downloads, line = err.splitlines()
    assert line.startswith("xdezero") and all(d.startswith("Downloading ") for d in downloads), err
    return line


def fake_mnist(folder: Path, n_train: int = 200, n_test: int = 50) -> None:
    """Small files in MNIST's IDX format: a bright bar whose row encodes the label, over noise."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(k.to_bytes(4, "big") for k in array.shape)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes(), mtime=0))


# --- info, version, training output -------------------------------------------------------------------


def test_info():
    result = run("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for key in ("xdezero", "Python", "NumPy", "array-api-compat", "backend numpy", "backend torch", "GPUs (CuPy)"):
        assert re.search(rf"^{re.escape(key)}\s", out, flags=re.M), out
    assert re.search(r"^backend numpy\s+\S+, usable$", out, flags=re.M)
    if importlib.util.find_spec("cupy") is None:
        assert re.search(r"^backend cupy\s+not installed$", out, flags=re.M)
        assert re.search(r"^GPUs \(CuPy\)\s+none", out, flags=re.M)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"xdezero {xdezero.__version__}\n"


def test_train_spiral_few_epochs():
    result = run("train", "spiral", "--epochs", "4", "--hidden", "8")
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"^epoch (\d)/4  loss ([0-9.]+)  running accuracy ([0-9.]+)$", result.stdout, flags=re.M)
    assert [int(e) for e, _, _ in lines] == [1, 2, 3, 4]
    assert all(0.0 <= float(acc) <= 1.0 for _, _, acc in lines)
    assert "\r" not in result.stdout, "no progress bar when stdout is not a terminal"
    train_acc, test_acc = accuracies(result.stdout)
    assert 0.0 <= train_acc <= 1.0 and 0.0 <= test_acc <= 1.0
    last = result.stdout.splitlines()[-1]
    assert last.startswith("done: 4 epochs") and "running accuracy above is averaged over each epoch" in last


def test_quiet_prints_only_the_result():
    result = run("train", "spiral", "--epochs", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("done: 2 epochs")


def test_train_spiral_is_reproducible():
    a = run("train", "spiral", "--epochs", "3", "--seed", "5")
    b = run("train", "spiral", "--epochs", "3", "--seed", "5")
    strip = re.compile(r" in [0-9.]+ s")
    assert strip.sub("", a.stdout) == strip.sub("", b.stdout)


@pytest.mark.slow
def test_train_spiral_defaults_reach_95_percent():
    result = run("train", "spiral")
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^epoch ", result.stdout, flags=re.M)) == 300
    train_acc, _ = accuracies(result.stdout)
    assert train_acc >= 0.95


@pytest.mark.parametrize(("optimizer", "lr"), [("momentum", "lr=0.1"), ("adam", "lr=0.01")])
def test_optimizers_train(optimizer, lr):
    result = run("train", "spiral", "--epochs", "8", "--optimizer", optimizer)
    assert result.returncode == 0, result.stderr
    assert f"with {optimizer} {lr}," in result.stdout.splitlines()[0]
    losses = [float(x) for x in re.findall(r"^epoch \d/8  loss ([0-9.]+)", result.stdout, flags=re.M)]
    assert losses[-1] < 0.9 * losses[0], losses


# --- backends, devices, threads -------------------------------------------------------------------------

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


@needs_torch
def test_torch_on_spiral_uses_one_thread_unless_told():
    result = run("train", "spiral", "--epochs", "2", "--backend", "torch", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("backend torch on cpu, 1 thread")
    result = run("train", "spiral", "--epochs", "1", "--backend", "torch", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("backend torch, 2 threads")


@needs_torch
def test_threads_are_restored_after_an_in_process_run(capsys):
    import torch

    before = torch.get_num_threads()
    target = 1 if before > 1 else 2
    assert cli.main(["train", "spiral", "--epochs", "1", "--backend", "torch", "--threads", str(target)]) == 0
    assert f", {target} thread" in capsys.readouterr().out
    assert torch.get_num_threads() == before


@needs_torch
@pytest.mark.parametrize(
    ("device", "message"),
    [("bogus", "not a torch device"), ("cuda:7", "CUDA GPU"), ("cpu:x", "not a torch device")],
)
def test_bad_torch_device(capsys, device, message):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    err = usage_error(capsys, ["train", "spiral", "--backend", "torch", "--device", device])
    assert f"--device {device}" in err and message in err


def test_numpy_runs_on_the_cpu_only(capsys):
    err = usage_error(capsys, ["train", "spiral", "--device", "cuda"])
    assert "backend numpy runs on the CPU only" in err


@pytest.mark.skipif(is_cupy_available(), reason="CuPy is usable here")
def test_unusable_backend_exits_2_with_one_line():
    result = run("train", "spiral", "--epochs", "1", "--backend", "cupy")
    assert result.returncode == 2
    assert result.stderr.startswith("xdezero: error: backend 'cupy' is not usable")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def hide_module(monkeypatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


def test_missing_library_exits_2(monkeypatch, capsys):
    hide_module(monkeypatch, "torch")
    err = usage_error(capsys, ["train", "spiral", "--epochs", "1", "--backend", "torch"])
    assert "backend 'torch' is not usable: torch is not installed" in err


# --- every bad argument: one line, exit 2, before training ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "argument --seed: expected an integer from 0 to 4294967295, got '-1'"),
        (["--seed", str(2**32)], "argument --seed"),
        (["--lr", "nan"], "argument --lr: expected a positive finite number, got 'nan'"),
        (["--lr", "inf"], "argument --lr: expected a positive finite number, got 'inf'"),
        (["--lr", "-0.1"], "argument --lr"),
        (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
        (["--epochs", "-3"], "argument --epochs"),
        (["--hidden", "0"], "argument --hidden: expected a positive integer, got '0'"),
        (["--batch-size", "0"], "argument --batch-size"),
        (["--threads", "0"], "argument --threads"),
        (["--backend", "tensorflow"], "argument --backend: invalid choice"),
        (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice"),
        (["--plot", "/no/such/dir/p.png"], "the directory '/no/such/dir' does not exist"),
        (["--save", "/no/such/dir/w.npz"], "the directory '/no/such/dir' does not exist"),
        (["--plot", "spiral.bmpx"], "cannot tell the image format of 'spiral.bmpx': end the name with one of"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(capsys, args, message):
    if "--plot" in args:
        pytest.importorskip("matplotlib")
    err = usage_error(capsys, ["train", "spiral", *args])
    assert message in err and err.rstrip().endswith("(see 'xdezero train spiral -h')")


@pytest.mark.parametrize("args", [[], ["train"], ["train", "cifar"], ["eval"]])
def test_incomplete_commands_exit_2(capsys, args):
    assert "xdezero" in usage_error(capsys, args)


def test_a_bad_argument_is_one_line_in_a_real_process():
    result = run("train", "spiral", "--seed", "-1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_plot_without_matplotlib_exits_2(monkeypatch, capsys, tmp_path):
    hide_module(monkeypatch, "matplotlib")
    err = usage_error(capsys, ["train", "spiral", "--epochs", "1", "--plot", str(tmp_path / "x.png")])
    assert "matplotlib" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("name", "magic"), [("spiral.png", b"\x89PNG\r\n\x1a\n"), ("spiral.svg", b"<?xml"), ("spiral.pdf", b"%PDF-")]
)
def test_plot_writes_the_format_its_name_says(tmp_path, name, magic):
    pytest.importorskip("matplotlib")
    target = tmp_path / name
    result = run("train", "spiral", "--epochs", "2", "--plot", str(target))
    assert result.returncode == 0, result.stderr
    data = target.read_bytes()
    assert data.startswith(magic), data[:20]
    if name.endswith(".png"):
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 600 and height >= 300
    if name.endswith(".svg"):
        assert b"<svg" in data[:1000]


# --- progress --------------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_only_on_a_real_terminal_with_tqdm(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setenv("TERM", "xterm")
    assert _progress.wants_bar(Terminal())
    assert not _progress.wants_bar(io.StringIO())
    monkeypatch.setenv("TERM", "dumb")
    assert not _progress.wants_bar(Terminal())
    monkeypatch.setenv("TERM", "xterm")
    hide_module(monkeypatch, "tqdm")
    assert not _progress.wants_bar(Terminal()), "without tqdm: plain lines"


def test_progress_bar_shows_rate_and_eta():
    pytest.importorskip("tqdm")
    stream = Terminal()
    progress = _progress.Progress(total_epochs=2, batches=4, stream=stream, bar=True)
    progress.start_epoch(1)
    for _ in range(4):
        progress.batch(0.5)
    progress.end_epoch(1, 0.5, 0.75)
    text = stream.getvalue()
    assert re.search(r"epoch 1/2: +\d+%\|.*\| \d/4 \[\d\d:\d\d<[0-9:?]+, +[0-9.?]+ ?batch/s", text), text
    assert text.endswith("epoch 1/2  loss 0.5000  running accuracy 0.7500\n")


def test_quiet_progress_prints_nothing():
    stream = Terminal()
    progress = _progress.Progress(total_epochs=1, batches=2, stream=stream, bar=True, quiet=True)
    progress.start_epoch(1)
    progress.batch(1.0)
    progress.end_epoch(1, 1.0, 0.5)
    assert stream.getvalue() == ""


def run_on_a_terminal(*args: str, env: dict | None = None) -> str:
    """Run `python -m xdezero ARGS` with stdout and stderr on a pseudo-terminal of 100 columns; what it shows."""
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "xdezero", *args],
        cwd=ROOT,
        env=child_env(**{"TERM": "xterm", **(env or {})}),
        stdin=subprocess.DEVNULL,
        stdout=child_fd,
        stderr=child_fd,
    )
    os.close(child_fd)
    chunks = []
    while True:
        ready, _, _ = select.select([main_fd], [], [], 60)
        if not ready:
            process.kill()
            break
        try:
            chunk = os.read(main_fd, 1 << 16)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert process.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode()


def test_progress_bar_on_a_pseudo_terminal():
    pytest.importorskip("tqdm")
    shown = run_on_a_terminal("train", "spiral", "--epochs", "2")
    assert re.search(r"\repoch 1/2: +\d+%\|", shown), shown
    assert "batch/s" in shown and "/10 [" in shown
    assert "epoch 2/2  loss" in shown and "final weights" in shown
    plain = run_on_a_terminal("train", "spiral", "--epochs", "2", env={"TERM": "dumb"})
    assert "batch/s" not in plain and "epoch 2/2  loss" in plain


# --- MNIST: your own files, the cache, downloads ---------------------------------------------------------


def test_train_mnist_mlp_on_generated_files_then_eval(tmp_path):
    fake_mnist(tmp_path / "data")
    weights = tmp_path / "mlp"
    result = run(
        "train", "mnist", "--data", str(tmp_path / "data"), "--epochs", "2", "--hidden", "20", "--batch-size", "50",
        "--save", str(weights),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"MNIST (200 images) from {tmp_path / 'data'}" in result.stdout
    assert result.stdout.splitlines()[-1] == f"wrote {weights}.npz and {weights}.json"
    assert json.loads((tmp_path / "mlp.json").read_text())["model"] == "mlp"
    _, test_acc = accuracies(result.stdout)
    evaluated = run("eval", f"{weights}.npz", "--data", str(tmp_path / "data"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.startswith(f"test accuracy {test_acc:.4f} on the test split, MNIST (50 images) from")


def test_train_mnist_cnn_then_eval_in_process(tmp_path, capsys):
    fake_mnist(tmp_path / "data", n_train=100, n_test=20)
    data, weights = str(tmp_path / "data"), str(tmp_path / "cnn.npz")
    argv = ["train", "mnist", "--model", "cnn", "--hidden", "16", "--optimizer", "adam", "--epochs", "1"]
    assert cli.main([*argv, "--batch-size", "50", "--data", data, "--save", weights]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"training CNN(16) on MNIST (100 images) from {data}") and "with adam lr=0.001" in out
    _, test_acc = accuracies(out)
    assert cli.main(["eval", weights, "--data", data]) == 0
    assert capsys.readouterr().out.startswith(f"test accuracy {test_acc:.4f}")


def test_eval_of_spiral_weights(tmp_path, capsys):
    weights = str(tmp_path / "spiral.npz")
    assert cli.main(["train", "spiral", "--epochs", "3", "--save", weights]) == 0
    _, test_acc = accuracies(capsys.readouterr().out)
    assert cli.main(["eval", weights]) == 0
    assert capsys.readouterr().out == f"test accuracy {test_acc:.4f} on the test split, spiral (300 points), " + (
        f"weights {weights}\n"
    )


def test_eval_needs_the_sidecar(tmp_path, capsys):
    weights = tmp_path / "w.npz"
    assert cli.main(["train", "spiral", "--epochs", "1", "--save", str(weights), "--quiet"]) == 0
    capsys.readouterr()
    (tmp_path / "w.json").unlink()
    assert "has no w.json beside it" in usage_error(capsys, ["eval", str(weights)])
    (tmp_path / "w.json").write_text("{not json")
    assert "w.json is damaged" in usage_error(capsys, ["eval", str(weights)])
    assert "no such weights file" in usage_error(capsys, ["eval", str(tmp_path / "nothing.npz")])


def test_own_data_missing_or_junk(tmp_path, capsys):
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    err = usage_error(capsys, ["train", "mnist", "--data", str(tmp_path)])
    assert "missing t10k-labels-idx1-ubyte.gz" in err
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>404 Not Found</html>")
    err = usage_error(capsys, ["train", "mnist", "--data", str(tmp_path)])
    assert f"{tmp_path / 't10k-labels-idx1-ubyte.gz'} is not a gzip-compressed MNIST file" in err
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"PK\x03\x04 a zip, not IDX"))
    assert "bad magic number" in usage_error(capsys, ["train", "mnist", "--data", str(tmp_path)])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    monkeypatch.setenv("XDEZERO_DATA_DIR", str(folder))
    return folder


def test_files_placed_by_hand_are_checked(cache, capsys):
    fake_mnist(cache)  # MNIST-format, but not the published files
    err = usage_error(capsys, ["train", "mnist", "--epochs", "1"])
    assert f"{cache / MNIST_NAMES[0]} is not the published MNIST file (md5 " in err
    (cache / MNIST_NAMES[0]).write_bytes(b"junk")
    err = usage_error(capsys, ["train", "mnist", "--epochs", "1"])
    assert f"{cache / MNIST_NAMES[0]} is not the published MNIST file" in err and "BadGzipFile" not in err


def serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """Answer urlopen from `files` (by the URL's last part); the URLs asked for."""
    asked = []

    def urlopen(request, timeout=None):
        url = request.full_url
        asked.append(url)
        return io.BytesIO(files[url.rpartition("/")[2]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_mnist_is_downloaded_once_and_verified(cache, tmp_path, monkeypatch, capsys):
    fake_mnist(tmp_path / "served")
    files = {name: (tmp_path / "served" / name).read_bytes() for name in MNIST_NAMES}
    checksums = {name: f"md5:{hashlib.md5(data).hexdigest()}" for name, data in files.items()}
    monkeypatch.setattr(datasets, "MNIST_FILES", checksums)
    asked = serve(monkeypatch, files)
    argv = ["train", "mnist", "--epochs", "1", "--hidden", "10", "--batch-size", "50", "--quiet"]
    assert cli.main(argv) == 0
    assert "final weights" in capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == sorted(MNIST_NAMES)
    assert len(asked) == 4
    assert cli.main(argv) == 0
    assert len(asked) == 4, "the second run reads the cache"


def test_a_corrupt_download_is_refused_and_not_cached(cache, tmp_path, monkeypatch, capsys):
    fake_mnist(tmp_path / "served")
    files = {name: (tmp_path / "served" / name).read_bytes() for name in MNIST_NAMES}
    checksums = {name: f"md5:{hashlib.md5(data).hexdigest()}" for name, data in files.items()}
    files[MNIST_NAMES[1]] = files[MNIST_NAMES[1]][:-5]  # truncated in transit
    monkeypatch.setattr(datasets, "MNIST_FILES", checksums)
    serve(monkeypatch, files)
    err = usage_error(capsys, ["train", "mnist", "--epochs", "1"])
    assert f"cannot download MNIST (the file downloaded from {datasets.MNIST_MIRRORS[0]}" in err and "corrupt" in err
    assert MNIST_NAMES[1] not in [p.name for p in cache.iterdir()]
    assert not list(cache.glob("*.part"))


def test_offline_says_what_to_download_and_where(cache, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    err = usage_error(capsys, ["train", "mnist", "--epochs", "1"])
    assert "network is unreachable" in err
    assert f"Download {', '.join(MNIST_NAMES)} from {datasets.MNIST_MIRRORS[0]} and place them in {cache}" in err
    assert list(cache.iterdir()) == []


# --- examples ------------------------------------------------------------------------------------------


def run_example(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=ROOT,
        env=child_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_spiral_example():
    result = run_example("spiral.py")
    assert result.returncode == 0, result.stderr
    assert "epoch 300, loss" in result.stdout
    assert float(re.search(r"training accuracy ([0-9.]+)", result.stdout)[1]) > 0.9


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("spiral.py", ["--seed", "-1"]),
        ("spiral.py", ["--lr", "nan"]),
        ("spiral.py", ["--epochs", "0"]),
        ("spiral.py", ["--hidden", "0"]),
        ("train_mnist_cnn.py", ["--lr", "inf"]),
        ("train_mnist_cnn.py", ["--epochs", "-1"]),
        ("train_mnist_cnn.py", ["--seed", "-1"]),
    ],
)
def test_examples_check_their_arguments(name, args):
    result = run_example(name, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"{name}: error: argument {args[0]}") and result.stderr.count("\n") == 1


def test_mnist_cnn_example_trains_on_cached_files(tmp_path):
    fake_mnist(tmp_path)
    result = run_example(
        "train_mnist_cnn.py", "--epochs", "2", "--batch-size", "50", env={"XDEZERO_DATA_DIR": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    lines = re.findall(
        r"^epoch (\d): loss ([0-9.]+), train accuracy ([0-9.]+), test accuracy ([0-9.]+)", result.stdout, re.M
    )
    assert [int(e) for e, *_ in lines] == [1, 2]
    assert float(lines[1][1]) < float(lines[0][1]), "the loss should go down"


def test_mnist_cnn_example_offline(tmp_path):
    # No network in the subprocess: every mirror is an unresolvable host.
    sitecustomize = tmp_path / "site" / "sitecustomize.py"
    sitecustomize.parent.mkdir()
    sitecustomize.write_text(
        "import urllib.request, urllib.error\n"
        "def _offline(*a, **k):\n"
        "    raise urllib.error.URLError('network is unreachable')\n"
        "urllib.request.urlopen = _offline\n"
    )
    env = {"XDEZERO_DATA_DIR": str(tmp_path / "data")}
    path = [str(sitecustomize.parent), str(ROOT), os.environ.get("PYTHONPATH", "")]
    full = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)), **env)
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_mnist_cnn.py"), "--epochs", "1"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "MNIST is not available" in result.stderr and "network is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert list((tmp_path / "data").iterdir()) == []


# --- packaging and docs -----------------------------------------------------------------------------------


def test_classifiers_requires_python_and_nox_name_the_same_pythons():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    classified = sorted(
        c.rpartition(":: ")[2]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    noxfile = (ROOT / "noxfile.py").read_text()
    pythons = re.search(r"^PYTHONS = \[(.*?)\]", noxfile, flags=re.M)[1]
    assert classified == sorted(re.findall(r'"(3\.\d+)"', pythons))
    assert project["requires-python"] == f">={classified[0]}"
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_py_typed_ships():
    import tomllib

    assert (ROOT / "xdezero" / "py.typed").exists()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["xdezero"]


def test_sdist_ships_the_package_and_no_half_test_suite(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("setuptools")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import tarfile

    (sdist,) = tmp_path.glob("xdezero-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "xdezero/py.typed", "xdezero/cli.py"} <= names
    assert not [n for n in names if n.startswith("tests/")], "tests need the repository (examples, scripts)"


def test_the_command_reference_names_every_option():
    import argparse

    text = (ROOT / "docs" / "cli.md").read_text()
    options, parsers = set(), [cli._parser()]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            options.update(o for o in action.option_strings if o.startswith("--") and o != "--help")
    # --communicator belongs to docs/distributed.md
    missing = sorted(o for o in options - {"--communicator"} if not re.search(rf"{o}(?![\w-])", text))
    assert not missing, f"docs/cli.md does not mention {missing}"


def test_the_cnn_has_its_own_default_width(tmp_path, capsys):
    fake_mnist(tmp_path, n_train=20, n_test=10)
    assert cli.main(["train", "mnist", "--model", "cnn", "--epochs", "1", "--data", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("training CNN(128) on MNIST (20 images)")


def _epoch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("epoch", "done"))]


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs_torch)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_capture_prints_what_eager_training_prints(capsys, optimizer, backend):
    # On torch the parameters are made with NumPy and follow the first batch to torch inside the first call.
    argv = ["train", "spiral", "--epochs", "8", "--batch-size", "70", "--optimizer", optimizer, "--backend", backend]
    outputs = []
    for extra in ([], ["--capture"]):
        assert cli.main([*argv, *extra]) == 0
        outputs.append([re.sub(r"in [0-9.]+ s", "in T s", line) for line in _epoch_lines(capsys.readouterr().out)])
    assert outputs[0] == outputs[1]
    assert len(outputs[0]) == 9


def test_capture_of_the_mnist_cnn_prints_what_eager_training_prints(tmp_path, capsys):
    fake_mnist(tmp_path / "data", n_train=120, n_test=20)
    data = str(tmp_path / "data")
    argv = ["train", "mnist", "--model", "cnn", "--epochs", "2", "--batch-size", "50", "--hidden", "16", "--data", data]
    outputs = []
    for extra in ([], ["--capture"]):
        assert cli.main([*argv, *extra]) == 0
        outputs.append([re.sub(r"in [0-9.]+ s", "in T s", line) for line in _epoch_lines(capsys.readouterr().out)])
    assert outputs[0] == outputs[1]


# --- rough edges of the first hour ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "spiral", "--epoch", "3"], r"^xdezero train spiral: error: unrecognized arguments: --epoch 3 \(see"),
        (
            ["train", "spiral", "--model", "cnn"],
            r"unrecognized arguments: --model cnn \(see 'xdezero train spiral -h'\)",
        ),
        (["train", "spiral", "--hid", "3"], "unrecognized arguments: --hid 3"),
        (["eval", "w.npz", "--epochs", "3"], r"^xdezero eval: error: unrecognized arguments: --epochs 3"),
        (
            ["train", "spiral", "--batch-size", "100000"],
            r"--batch-size 100000 is larger than the 300 training examples: give at most 300",
        ),
        (["train", "spiral", "--backend", "jax", "--threads", "2"], "--threads sets torch's and NumPy's CPU threads"),
    ],
    ids=["abbreviation", "option_of_another_task", "abbreviated_hidden", "eval_option", "batch_size", "jax_threads"],
)
def test_bad_arguments_are_one_line_naming_the_command_that_was_given(capsys, argv, message):
    line = usage_error(capsys, argv)
    assert re.search(message, line), line


def test_eval_of_a_folder_or_of_the_sidecar_says_which_file_to_name(capsys, tmp_path):
    assert re.search(
        rf"{re.escape(str(tmp_path))} is a directory: name the \.npz file", usage_error(capsys, ["eval", str(tmp_path)])
    )
    line = usage_error(capsys, ["eval", str(tmp_path / "w.json")])
    assert line.endswith(f"is the description beside the weights: name the weights, {tmp_path / 'w.npz'}"), line


def test_a_data_dir_that_is_a_file_or_missing_is_named_as_the_variable(capsys, tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("XDEZERO_DATA_DIR", str(afile))
    line = usage_error(capsys, ["train", "mnist", "--epochs", "1"])
    assert f"XDEZERO_DATA_DIR={afile} is not a folder" in line and "--data" not in line, line


def test_one_epoch_is_said_in_the_singular_and_quiet_output_points_to_nothing_above(capsys, tmp_path):
    assert cli.main(["train", "spiral", "--epochs", "1", "-q", "--save", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("done: 1 epoch in ") and "above" not in out[0], out
    assert out[1] == f"wrote {tmp_path / 'w.npz'} and {tmp_path / 'w.json'}"


def test_threads_limit_numpys_blas_and_are_restored(capsys, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = threadpoolctl.threadpool_info()
    seen = []

    class Watching(_progress.Progress):
        def batch(self, loss):
            super().batch(loss)
            seen.append({p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"})

    monkeypatch.setattr(cli, "Progress", Watching)
    assert cli.main(["train", "spiral", "--epochs", "1", "--threads", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("backend numpy, 1 BLAS thread")
    assert all(s <= {1} for s in seen)
    assert threadpoolctl.threadpool_info() == before


def test_output_cut_short_by_its_reader_ends_quietly():
    process = subprocess.Popen(
        [sys.executable, "-m", "xdezero", "train", "spiral", "--epochs", "50"],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.readline()
    process.stdout.close()  # as `| head -1` does
    with process.stderr:
        err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in err, err
