"""The `xdezero` command, run as `python -m xdezero` in a subprocess (and in-process for failure paths)."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from xdezero import cli
from xdezero.backends import is_cupy_available

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-m", "xdezero", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def accuracies(stdout: str) -> tuple[float, float]:
    match = re.search(r"training accuracy ([0-9.]+), test accuracy ([0-9.]+)", stdout)
    assert match, stdout
    return float(match[1]), float(match[2])


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


def test_train_spiral_few_epochs():
    result = run("train", "spiral", "--epochs", "4", "--hidden", "8")
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"^epoch (\d)/4  loss ([0-9.]+)  accuracy ([0-9.]+)$", result.stdout, flags=re.M)
    assert [int(e) for e, _, _ in lines] == [1, 2, 3, 4]
    assert all(0.0 <= float(acc) <= 1.0 for _, _, acc in lines)
    assert "\r" not in result.stdout, "no progress bar when stdout is not a terminal"
    train_acc, test_acc = accuracies(result.stdout)
    assert 0.0 <= train_acc <= 1.0 and 0.0 <= test_acc <= 1.0


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


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_train_spiral_on_torch():
    result = run("train", "spiral", "--epochs", "2", "--backend", "torch")
    assert result.returncode == 0, result.stderr
    assert "backend torch" in result.stdout


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "spiral.png"
    result = run("train", "spiral", "--epochs", "2", "--plot", str(target))
    assert result.returncode == 0, result.stderr
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 600 and height >= 300
    assert len(data) > 10_000


def test_plot_to_an_unwritable_place(tmp_path):
    pytest.importorskip("matplotlib")
    result = run("train", "spiral", "--epochs", "1", "--plot", str(tmp_path / "no" / "such" / "dir.png"))
    assert result.returncode == 2
    assert "cannot write" in result.stderr and "Traceback" not in result.stderr


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
    assert cli.main(["train", "spiral", "--epochs", "1", "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert "backend 'torch' is not usable: torch is not installed" in err


def test_plot_without_matplotlib_exits_2(monkeypatch, capsys, tmp_path):
    hide_module(monkeypatch, "matplotlib")
    assert cli.main(["train", "spiral", "--epochs", "1", "--plot", str(tmp_path / "x.png")]) == 2
    assert "matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "args",
    [["train", "spiral", "--backend", "tensorflow"], ["train", "spiral", "--epochs", "0"], ["train"], []],
)
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    assert "usage: xdezero" in capsys.readouterr().err


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = cli.Progress(total_epochs=2, batches=4, stream=stream)
    progress.batch(1, 2)
    progress.epoch(1, 0.5, 0.75)
    progress.batch(2, 4)
    text = stream.getvalue()
    assert "\r[" + "#" * 7 + "-" * 23 + "]  25.0%  epoch 1/2" in text
    assert "epoch 1/2  loss 0.5000  accuracy 0.7500\n" in text
    assert "] 100.0%" in text


# --- examples ------------------------------------------------------------------------------------------


def run_example(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_spiral_example():
    result = run_example("spiral.py")
    assert result.returncode == 0, result.stderr
    assert "epoch 300, loss" in result.stdout
    assert float(re.search(r"training accuracy ([0-9.]+)", result.stdout)[1]) > 0.9


def fake_mnist(folder: Path) -> None:
    """Small files in MNIST's IDX format: a bright bar whose row encodes the label, over noise."""
    import gzip

    import numpy as np

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(k.to_bytes(4, "big") for k in array.shape)
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))


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


def test_mnist_cnn_example_offline(tmp_path, monkeypatch):
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
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sitecustomize.parent), str(ROOT)]), **env)
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
