"""`xdezero train --checkpoint/--resume`, Ctrl-C and SIGTERM, and what `--save` records for `xdezero eval`.

A resumed run must print what the run never stopped prints: the remaining epochs' lines and the same final line
(compared as printed). The real-signal tests stop a separate process wherever the signal lands; the in-process
tests raise the signal from the progress display after a chosen batch, so that it lands exactly there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import xdezero
from tests.test_cli import ROOT, child_env, fake_mnist, run, usage_error
from xdezero import _progress, cli, datasets
from xdezero import distributed as dist

SPIRAL = ["train", "spiral", "--hidden", "10"]


def numbers(text: str) -> list[str]:
    """The epoch lines and the final line as printed, the seconds taken left out."""
    lines = [line for line in text.splitlines() if line.startswith(("epoch", "done"))]
    return [re.sub(r" in [0-9.]+ s;", ";", line) for line in lines]


def straight(capsys, argv: list[str]) -> list[str]:
    assert cli.main(argv) == 0
    return numbers(capsys.readouterr().out)


def signal_at(monkeypatch, batch: int, signum: int = signal.SIGINT, times: int = 1) -> None:
    """Raise `signum` (`times` times) in this process as the command's progress display ends its `batch`-th batch
    (counted from 1 over the whole run): the signal lands between two steps, exactly there."""
    count = [0]

    class Signalling(_progress.Progress):
        def batch(self, loss: float) -> None:
            super().batch(loss)
            count[0] += 1
            if count[0] == batch:
                for _ in range(times):
                    signal.raise_signal(signum)

    monkeypatch.setattr(cli, "Progress", Signalling)


# --- stopped and resumed, in separate processes, by real signals --------------------------------------------


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_run_stopped_by_a_signal_resumes_to_the_numbers_of_the_run_never_stopped(tmp_path, signum, status):
    # 150 steps an epoch: the signal, sent once the first epoch is printed, lands inside a later one.
    args = [*SPIRAL, "--epochs", "10", "--batch-size", "2"]
    whole = run(*args)
    assert whole.returncode == 0, whole.stderr
    checkpoint = tmp_path / "c.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "xdezero", *args, "--checkpoint", str(checkpoint)],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = [process.stdout.readline(), process.stdout.readline()]
        assert first[1].startswith("epoch  1/10"), first
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == status, (out, err)
    name, path = signal.Signals(signum).name, re.escape(str(checkpoint))
    stopped = re.fullmatch(
        rf"xdezero: stopped by {name} (in epoch (\d+) after batch (\d+) of 150|after epoch (\d+) of 10); "
        rf"wrote {path}: go on with the same arguments and --resume {path}\n",
        err,
    )
    assert stopped, err
    assert "done:" not in out
    resumed = run(*args, "--resume", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr
    epoch, batch = (int(stopped[2]), int(stopped[3]) + 1) if stopped[2] else (int(stopped[4]) + 1, 1)
    assert resumed.stdout.startswith(f"resuming from {checkpoint} at epoch {epoch}, batch {batch} of 150\n")
    assert numbers("".join(first) + out + resumed.stdout) == numbers(whole.stdout)


# --- exactly where the signal lands, in-process ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "where", "extra"),
    [
        (15, "in epoch 2 after batch 5 of 10", ["--optimizer", "momentum"]),
        (10, "after epoch 1 of 4", ["--optimizer", "adam"]),  # an epoch's last step: the epoch ends first
        (23, "in epoch 3 after batch 3 of 10", ["--optimizer", "adam", "--capture"]),
    ],
)
def test_stopped_between_two_steps_and_resumed_exactly(tmp_path, capsys, monkeypatch, batch, where, extra):
    argv = [*SPIRAL, "--epochs", "4", *extra]
    expected = straight(capsys, argv)
    checkpoint = str(tmp_path / "c.npz")
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal_at(monkeypatch, batch)
    assert cli.main([*argv, "--checkpoint", checkpoint]) == 130
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers, "handlers put back"
    out, err = capsys.readouterr()
    then = f"wrote {checkpoint}: go on with the same arguments and --resume {checkpoint}"
    assert err == f"xdezero: stopped by SIGINT {where}; {then}\n"
    monkeypatch.undo()
    np.random.seed(123)  # the checkpoint's random state wins over whatever this process drew
    assert cli.main([*argv, "--resume", checkpoint]) == 0
    resumed = capsys.readouterr().out
    assert resumed.startswith(f"resuming from {checkpoint} at epoch ")
    assert numbers(out + resumed) == expected


def test_a_second_signal_exits_at_once_saving_nothing(tmp_path, capsys, monkeypatch):
    checkpoint, weights = tmp_path / "c.npz", tmp_path / "w.npz"
    signal_at(monkeypatch, 5, times=2)
    argv = [*SPIRAL, "--epochs", "3", "--checkpoint", str(checkpoint), "--save", str(weights)]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err == "\nxdezero: SIGINT again: stopped at once, nothing saved\n"
    assert not checkpoint.exists() and not weights.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_without_checkpoint_or_save_ctrl_c_stops_at_once(capsys, monkeypatch):
    signal_at(monkeypatch, 5)
    assert cli.main([*SPIRAL, "--epochs", "3"]) == 130
    assert capsys.readouterr().err == "\nxdezero: interrupted\n"


def test_save_writes_the_weights_of_a_stopped_run(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "w.npz"
    signal_at(monkeypatch, 25, signum=signal.SIGTERM)
    assert cli.main([*SPIRAL, "--epochs", "5", "--save", str(weights)]) == 143
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == f"wrote {weights} and {tmp_path / 'w.json'}" and "done:" not in out
    assert err == "xdezero: stopped by SIGTERM in epoch 3 after batch 5 of 10\n"
    assert json.loads((tmp_path / "w.json").read_text())["hidden"] == 10
    monkeypatch.undo()
    assert cli.main(["eval", str(weights)]) == 0
    assert capsys.readouterr().out.startswith("test accuracy ")


def test_a_cnn_on_mnist_resumes_mid_epoch(tmp_path, capsys, monkeypatch):
    fake_mnist(tmp_path / "data", n_train=100, n_test=20)
    argv = ["train", "mnist", "--model", "cnn", "--hidden", "8", "--optimizer", "adam", "--epochs", "3"]
    argv += ["--batch-size", "20", "--data", str(tmp_path / "data")]
    expected = straight(capsys, argv)
    checkpoint = str(tmp_path / "c.npz")
    signal_at(monkeypatch, 7)
    assert cli.main([*argv, "--checkpoint", checkpoint]) == 130
    out = capsys.readouterr().out
    monkeypatch.undo()
    assert cli.main([*argv, "--resume", checkpoint]) == 0
    resumed = capsys.readouterr().out
    assert resumed.startswith(f"resuming from {checkpoint} at epoch 2, batch 3 of 5\ntraining CNN(8) on MNIST")
    assert numbers(out + resumed) == expected


# --- checkpoints written, runs trained further -----------------------------------------------------------------


def test_checkpoints_are_written_every_n_epochs_and_after_the_last(tmp_path, capsys, monkeypatch):
    written = []
    save = dist.save_checkpoint

    def recording(comm, path, **objects):
        written.append((objects["loader"].epoch, objects["loader"].iteration))
        save(comm, path, **objects)

    monkeypatch.setattr(dist, "save_checkpoint", recording)
    checkpoint = tmp_path / "c"
    assert cli.main([*SPIRAL, "--epochs", "5", "--checkpoint", str(checkpoint), "--checkpoint-every", "2"]) == 0
    assert written == [(2, 0), (4, 0), (5, 0)]
    assert "wrote" not in capsys.readouterr().out
    state = xdezero.read_checkpoint(tmp_path / "c.npz")  # .npz appended, as to --save's file
    assert len(state["run"]["losses"]) == 5
    assert state["run"]["settings"] == {
        "task": "spiral",
        "model": "mlp",
        "hidden": 10,
        "activation": "relu",
        "optimizer": "sgd",
        "lr": 1.0,
        "batch_size": 30,
        "seed": 0,
        "data": None,
        "backend": "numpy",
        "epochs": 5,
    }


def test_a_finished_run_trains_further_with_more_epochs(tmp_path, capsys):
    expected = straight(capsys, [*SPIRAL, "--epochs", "5", "--optimizer", "adam"])
    first, second = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
    assert cli.main([*SPIRAL, "--epochs", "3", "--optimizer", "adam", "--checkpoint", first]) == 0
    out = capsys.readouterr().out
    # --resume with --checkpoint: the checkpoints go on in the file --checkpoint names
    assert cli.main([*SPIRAL, "--epochs", "5", "--optimizer", "adam", "--resume", first, "--checkpoint", second]) == 0
    resumed = capsys.readouterr().out
    assert resumed.startswith(f"resuming from {first} at epoch 4, batch 1 of 10\n")
    assert numbers(resumed) == expected[3:]
    assert [line.replace("/3", "/5") for line in numbers(out)[:3]] == expected[:3]
    assert xdezero.read_checkpoint(second)["loader"]["epoch"] == 5
    assert xdezero.read_checkpoint(first)["loader"]["epoch"] == 3
    line = usage_error(capsys, [*SPIRAL, "--epochs", "5", "--optimizer", "adam", "--resume", second])
    assert (
        line
        == f"xdezero: error: --resume {second}: that run has completed 5 epochs; to train it further ask for "
        + ("more (--epochs 6 or above)")
    )


def test_quiet_resume_prints_only_the_result(tmp_path, capsys):
    checkpoint = str(tmp_path / "c.npz")
    assert cli.main([*SPIRAL, "--epochs", "2", "--checkpoint", checkpoint, "--quiet"]) == 0
    assert cli.main([*SPIRAL, "--epochs", "3", "--resume", checkpoint, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 2 and out.splitlines()[1].startswith("done: 3 epochs")


# --- what --resume refuses ---------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path, capsys) -> str:
    path = str(tmp_path / "c.npz")
    assert cli.main([*SPIRAL, "--epochs", "2", "--checkpoint", path, "--quiet"]) == 0
    capsys.readouterr()
    return path


@pytest.mark.parametrize(
    ("args", "made", "given"),
    [
        (["--hidden", "12"], "--hidden 10", "--hidden 12"),
        (["--optimizer", "momentum", "--lr", "1"], "--optimizer sgd", "--optimizer momentum"),
        (["--optimizer", "adam"], "--optimizer sgd --lr 1", "--optimizer adam --lr 0.01"),
        (["--seed", "3", "--batch-size", "20"], "--batch-size 30 --seed 0", "--batch-size 20 --seed 3"),
        (["--activation", "tanh"], "--activation relu", "--activation tanh"),
    ],
)
def test_resume_refuses_a_run_made_with_other_arguments(checkpoint, capsys, args, made, given):
    line = usage_error(capsys, [*SPIRAL, "--epochs", "4", "--resume", checkpoint, *args])
    assert line.startswith(f"xdezero: error: --resume {checkpoint} continues a run made with {made}, not {given}: ")
    assert "only --epochs and how it runs may differ" in line


def test_resume_allows_other_epochs_and_runtime_options(checkpoint, capsys, tmp_path):
    argv = [*SPIRAL, "--epochs", "3", "--resume", checkpoint, "--capture", "--device", "cpu", "--threads", "2"]
    assert cli.main([*argv, "--save", str(tmp_path / "w"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("done: 3 epochs")


def test_resume_refuses_a_checkpoint_of_another_task(tmp_path, capsys, monkeypatch):
    fake_mnist(tmp_path / "data", n_train=40, n_test=10)
    path = str(tmp_path / "m.npz")
    argv = ["train", "mnist", "--hidden", "10", "--epochs", "1", "--batch-size", "20", "--data", str(tmp_path / "data")]
    assert cli.main([*argv, "--checkpoint", path, "--quiet"]) == 0
    capsys.readouterr()
    line = usage_error(capsys, [*SPIRAL, "--epochs", "3", "--resume", path])
    made = (
        f"'train mnist' --lr 0.1 --batch-size 20 --data {tmp_path / 'data'}, not 'train spiral' --lr 1 --batch-size 30:"
    )
    assert f"continues a run made with {made} give the arguments of that run" in line
    monkeypatch.chdir(tmp_path)  # --data is compared as an absolute path
    assert cli.main([*argv[:-1], "data", "--epochs", "2", "--resume", path, "--quiet"]) == 0
    capsys.readouterr()
    fake_mnist(tmp_path / "other", n_train=40, n_test=10)
    line = usage_error(capsys, [*argv[:-1], "other", "--epochs", "2", "--resume", path])
    assert f"made with --data {tmp_path / 'data'}, not --data {tmp_path / 'other'}" in line


def test_resume_of_a_missing_or_damaged_file_is_one_line(tmp_path, capsys):
    missing = tmp_path / "none.npz"
    assert (
        usage_error(capsys, [*SPIRAL, "--resume", str(missing)]) == f"xdezero: error: --resume {missing}: no such file"
    )
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    line = usage_error(capsys, [*SPIRAL, "--resume", str(tmp_path / "junk.npz")])
    assert line.startswith(f"xdezero: error: --resume {tmp_path / 'junk.npz'}: not a checkpoint")
    weights = tmp_path / "w.npz"
    assert cli.main([*SPIRAL, "--epochs", "1", "--save", str(weights), "--quiet"]) == 0
    capsys.readouterr()
    line = usage_error(capsys, [*SPIRAL, "--resume", str(weights)])
    assert line.startswith(f"xdezero: error: --resume {weights}: this .npz holds no saved state")
    model = xdezero.models.MLP((3, 3))
    model(np.zeros((1, 2), np.float32))
    xdezero.save_checkpoint(tmp_path / "other.npz", model=model)
    line = usage_error(capsys, [*SPIRAL, "--resume", str(tmp_path / "other.npz")])
    assert line.endswith("not a checkpoint written by 'xdezero train --checkpoint' (it holds ['model'])")


def test_checkpoint_options_are_checked_first(tmp_path, capsys):
    line = usage_error(capsys, [*SPIRAL, "--checkpoint-every", "2"])
    assert line == "xdezero: error: --checkpoint-every 2 needs --checkpoint FILE, the file to write"
    line = usage_error(capsys, [*SPIRAL, "--checkpoint", str(tmp_path / "w"), "--save", str(tmp_path / "w.npz")])
    assert "--save and --checkpoint both name" in line
    line = usage_error(capsys, [*SPIRAL, "--checkpoint", "/no/such/dir/c.npz"])
    assert (
        "argument --checkpoint: cannot write '/no/such/dir/c.npz': the directory '/no/such/dir' does not exist" in line
    )
    assert "argument --checkpoint-every" in usage_error(capsys, [*SPIRAL, "--checkpoint-every", "0"])


# --- eval: the data recorded, the test split only ------------------------------------------------------------------


def test_eval_tests_on_the_recorded_data_folder_and_reads_only_its_test_split(tmp_path, capsys, monkeypatch):
    fake_mnist(tmp_path / "data", n_train=100, n_test=30)
    monkeypatch.chdir(tmp_path)
    weights = str(tmp_path / "mlp.npz")
    argv = ["train", "mnist", "--hidden", "10", "--epochs", "1", "--batch-size", "50", "--data", "data"]
    assert cli.main([*argv, "--save", weights]) == 0
    _, test_acc = re.search(r"training accuracy ([0-9.]+), test accuracy ([0-9.]+)", capsys.readouterr().out).groups()
    assert json.loads((tmp_path / "mlp.json").read_text())["data"] == str(tmp_path / "data")
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / "data" / name).unlink()  # eval must not need them
    monkeypatch.chdir(ROOT)
    assert cli.main(["eval", weights]) == 0
    assert capsys.readouterr().out == (
        f"test accuracy {test_acc} on the test split, MNIST (30 images) from {tmp_path / 'data'}, weights {weights}\n"
    )
    shutil.move(tmp_path / "data", tmp_path / "moved")
    line = usage_error(capsys, ["eval", weights])
    assert line == (
        f"xdezero: error: {tmp_path / 'mlp.json'} says the weights were trained on --data {tmp_path / 'data'}, which "
        "no longer exists: pass --data DIR to evaluate them on the test split of another folder"
    )
    assert cli.main(["eval", weights, "--data", str(tmp_path / "moved")]) == 0
    assert capsys.readouterr().out.startswith(f"test accuracy {test_acc} on the test split, MNIST (30 images) from")


def test_eval_on_mnist_downloads_only_the_test_split(tmp_path, capsys, monkeypatch):
    cache, served = tmp_path / "cache", tmp_path / "served"
    fake_mnist(served, n_train=40, n_test=20)
    files = {name: (served / name).read_bytes() for name in datasets.MNIST_FILES}
    monkeypatch.setattr(datasets, "MNIST_FILES", {n: f"md5:{hashlib.md5(b).hexdigest()}" for n, b in files.items()})
    monkeypatch.setenv("XDEZERO_DATA_DIR", str(cache))
    cache.mkdir()
    model = xdezero.models.MLP((10, 10))
    model(np.zeros((1, 784), np.float32))
    model.save_weights(tmp_path / "w.npz")
    record = {"task": "mnist", "model": "mlp", "hidden": 10, "activation": "relu", "data": None}
    (tmp_path / "w.json").write_text(json.dumps(record))
    asked = []

    def urlopen(request, timeout=None):
        asked.append(request.full_url.rpartition("/")[2])
        return io.BytesIO(files[asked[-1]])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert cli.main(["eval", str(tmp_path / "w.npz")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test accuracy ") and "on the test split, MNIST (20 images), weights" in out
    assert sorted(asked) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(asked)


# --- the progress bar of a resumed epoch, several processes ---------------------------------------------------------


def test_the_bar_of_a_resumed_epoch_starts_at_the_batches_done():
    pytest.importorskip("tqdm")
    from tests.test_cli import Terminal

    stream = Terminal()
    progress = _progress.Progress(total_epochs=3, batches=8, stream=stream, bar=True)
    progress.start_epoch(2, done=5)
    progress.batch(0.5)
    progress.end_epoch(2, 0.5, 0.75)
    assert re.search(r"epoch 2/3: +62%\|.*\| 5/8 \[", stream.getvalue()), stream.getvalue()


MPIEXEC = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py and mpiexec (pip install mpich)"
)
def test_a_job_of_two_processes_resumes_as_the_job_never_stopped(tmp_path):
    args = [*SPIRAL, "--epochs", "4", "--batch-size", "25"]

    def mpirun(*extra: str) -> subprocess.CompletedProcess:
        command = [MPIEXEC, "-n", "2", sys.executable, "-m", "xdezero", *args, *extra]
        result = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result

    whole = mpirun()
    checkpoint = str(tmp_path / "c.npz")
    # Stopped after epoch 2 (a shorter run, checkpointed at its end), then resumed for the last two.
    args[args.index("--epochs") + 1] = "2"
    first = mpirun("--checkpoint", checkpoint)
    args[args.index("--epochs") + 1] = "4"
    resumed = mpirun("--resume", checkpoint)
    assert resumed.stdout.startswith(f"resuming from {checkpoint} at epoch 3, batch 1 of 12\n")
    assert numbers(resumed.stdout) == numbers(whole.stdout)[2:]
    assert [line.replace("/2", "/4") for line in numbers(first.stdout)[:2]] == numbers(whole.stdout)[:2]
    one = run(*args, "--resume", checkpoint)
    assert (
        one.returncode == 2
        and one.stderr == f"xdezero: error: --resume {checkpoint} was written by 2 process(es); " + ("this job has 1\n")
    )
