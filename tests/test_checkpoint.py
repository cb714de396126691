"""State dicts, checkpoints and exact resume: models, optimizers, data loaders and the random streams.

The exact-resume test runs in separate processes (tests/resume_script.py): N steps straight against N/2 steps,
a checkpoint in the middle of an epoch, and N/2 more in a new process that drew random numbers before loading.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import xdezero
import xdezero.functions as F
from tests.helpers import asarray, fixture_device, library, to_numpy
from xdezero import DataLoader, SeqDataLoader, Variable, models, optimizers
from xdezero.backends import uniform
from xdezero.layers import BatchNorm, Linear

SCRIPT = Path(__file__).with_name("resume_script.py")
HOST_LIBRARIES = ("numpy", "torch", "jax", "array_api_strict")


def _host_library(xp) -> str:
    name, device = library(xp), fixture_device(xp)
    on_host = device is None or getattr(device, "platform", None) == "cpu"  # JAX names its CPU device
    if name not in HOST_LIBRARIES or not on_host:
        pytest.skip(f"the resume script runs on the host libraries {HOST_LIBRARIES}")
    return name


# --- exact resume, in two processes ------------------------------------------------------------------------


def _run(*args: str) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("optimizer", ["Adam", "MomentumSGD"])
def test_resuming_in_a_new_process_gives_the_parameters_of_a_straight_run(xp, optimizer, tmp_path):
    """10 steps straight, or 5 (stopping inside the second epoch), a checkpoint, and 5 in a new process: the same
    parameters, bit for bit on NumPy (within float32 rounding elsewhere). Dropout, shuffling, Adam's moments and
    step count, momentum and a WeightDecay hook all carry over."""
    lib = _host_library(xp)
    straight, resumed, checkpoint = tmp_path / "straight.npz", tmp_path / "resumed.npz", tmp_path / "half.npz"
    _run(lib, optimizer, "10", str(straight))
    _run(lib, optimizer, "5", str(tmp_path / "first.npz"), "--checkpoint", str(checkpoint))
    _run(lib, optimizer, "5", str(resumed), "--resume", str(checkpoint))
    with np.load(straight) as a, np.load(resumed) as b, np.load(tmp_path / "first.npz") as first:
        assert sorted(a.files) == sorted(b.files) == ["l1/W", "l1/b", "l2/W", "l2/b"]
        for key in a.files:
            assert not np.array_equal(a[key], first[key])  # the second half did move the parameters
            if lib == "numpy":
                np.testing.assert_array_equal(b[key], a[key], err_msg=key)
            else:
                np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7, err_msg=key)


# --- models ---------------------------------------------------------------------------------------------------


class Small(models.Model):
    def __init__(self) -> None:
        super().__init__()
        self.fc = Linear(4, in_size=3)
        self.bn = BatchNorm()

    def forward(self, x):
        return self.bn(self.fc(x))


def _small(xp, seed: int = 0) -> Small:
    np.random.seed(seed)
    model = Small()
    model(asarray(xp, np.random.default_rng(seed).standard_normal((5, 3)), np.float32))
    return model


def test_a_model_state_dict_holds_every_parameter_and_the_running_statistics(xp):
    model, other = _small(xp, 0), _small(xp, 1)
    state = model.state_dict()
    assert list(state) == ["fc/W", "fc/b", "bn/avg_mean", "bn/avg_var", "bn/gamma", "bn/beta"]
    other.load_state_dict(state)
    for key, p in other.named_params():
        np.testing.assert_array_equal(to_numpy(p), to_numpy(state[key]), err_msg=key)
        assert type(p.data) is type(model.fc.W.data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("fc/b"), r"missing parameter\(s\) 'fc/b'"),
        (lambda s: s.update(extra=s["fc/b"]), r"unknown key\(s\) 'extra'"),
        (lambda s: s.update({"fc/W": s["fc/W"][:2]}), r"parameter 'fc/W' has shape \(3, 4\), the file has \(2, 4\)"),
        (lambda s: s.update({"bn/gamma": np.ones(4, np.float64)}), "parameter 'bn/gamma' has dtype float32"),
        (lambda s: s.update({"fc/b": "zeros"}), "parameter 'fc/b' must be an array, got str"),
    ],
    ids=["missing", "extra", "shape", "dtype", "not_an_array"],
)
def test_a_state_dict_that_does_not_fit_is_refused_and_changes_nothing(xp, edit, message):
    model = _small(xp, 0)
    before = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
    state = {k: to_numpy(v) for k, v in _small(xp, 1).state_dict().items()}
    edit(state)
    with pytest.raises((ValueError, TypeError), match=message):
        model.load_state_dict(state)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(to_numpy(value), before[key], err_msg=key)


def test_models_and_optimizers_pickle_with_their_state():
    np.random.seed(0)
    model = models.MLP((5, 2))
    optimizer = optimizers.Adam().setup(model)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    for _ in range(2):
        loss = F.sum(model(x) ** 2)
        model.cleargrads()
        loss.backward()
        optimizer.update()
    model2, optimizer2 = pickle.loads(pickle.dumps((model, optimizer)))
    assert optimizer2.target is model2 and optimizer2.t == 2
    for (k, p), (_, q) in zip(model.named_params(), model2.named_params()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=k)
        np.testing.assert_array_equal(optimizer.ms[p], optimizer2.ms[q], err_msg=k)
    for m, o in ((model, optimizer), (model2, optimizer2)):  # both go on identically
        loss = F.sum(m(x) ** 2)
        m.cleargrads()
        loss.backward()
        o.update()
    for p, q in zip(model.params(), model2.params()):
        np.testing.assert_array_equal(p.data, q.data)


# --- optimizers -----------------------------------------------------------------------------------------------


OPTIMIZERS = [
    ("SGD", lambda: optimizers.SGD(0.1)),
    ("MomentumSGD", lambda: optimizers.MomentumSGD(0.1)),
    ("AdaGrad", lambda: optimizers.AdaGrad(0.1)),
    ("AdaDelta", lambda: optimizers.AdaDelta()),
    ("Adam", lambda: optimizers.Adam(0.01)),
]


def _steps(xp, model, optimizer, n, seed):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = asarray(xp, rng.standard_normal((5, 3)), np.float32)
        loss = F.sum(model(x) ** 2)
        model.cleargrads()
        loss.backward()
        optimizer.update()


@pytest.mark.parametrize(("name", "make"), OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_an_optimizer_restored_from_its_state_dict_continues_as_the_original(xp, name, make):
    """Two steps, then the state into a fresh model and optimizer (hooks included): the next steps agree."""
    model, optimizer = _small(xp, 0), make()
    optimizer.setup(model)
    optimizer.add_hook(optimizers.WeightDecay(0.01))
    optimizer.add_hook(optimizers.ClipGrad(5.0))
    _steps(xp, model, optimizer, 2, seed=1)
    model2, optimizer2 = _small(xp, 7), make()
    optimizer2.setup(model2)
    optimizer2.add_hook(optimizers.WeightDecay(0.5))  # numbers of its own, replaced by the state's
    optimizer2.add_hook(optimizers.ClipGrad(1.0))
    model2.load_state_dict(model.state_dict())
    optimizer2.load_state_dict(optimizer.state_dict())
    assert optimizer2.hooks[0].rate == 0.01 and optimizer2.hooks[1].max_norm == 5.0
    _steps(xp, model, optimizer, 2, seed=2)
    _steps(xp, model2, optimizer2, 2, seed=2)
    for (key, p), q in zip(model.named_params(), model2.params()):
        np.testing.assert_array_equal(to_numpy(p), to_numpy(q), err_msg=key)


def test_an_optimizer_state_that_does_not_fit_is_refused_and_changes_nothing():
    model, optimizer = _small(np, 0), optimizers.Adam().setup(_small(np, 0))
    optimizer.setup(model)
    _steps(np, model, optimizer, 1, seed=1)
    state = optimizer.state_dict()
    ms_before = {k: v.copy() for k, v in state["state"]["ms"].items()}

    other = optimizers.MomentumSGD().setup(model)
    with pytest.raises(ValueError, match="the state is Adam's, this optimizer is MomentumSGD"):
        other.load_state_dict(state)
    fresh = optimizers.Adam().setup(model)
    fresh.add_hook(optimizers.WeightDecay(0.1))
    with pytest.raises(ValueError, match=r"the state's hooks are \[\], this optimizer's are \['WeightDecay'\]"):
        fresh.load_state_dict(state)
    bad = {**state, "state": {"ms": {**state["state"]["ms"], "fc/W": np.zeros((2, 2), np.float32)}, "vs": {}}}
    with pytest.raises(ValueError, match=r"ms\['fc/W'\] has shape \(2, 2\), the parameter \(3, 4\)"):
        optimizer.load_state_dict(bad)
    bad = {**state, "state": {"ms": {"nope/W": np.zeros(1)}, "vs": {}}}
    with pytest.raises(ValueError, match=r"table 'ms' holds state of parameters this model lacks: \['nope/W'\]"):
        optimizer.load_state_dict(bad)
    bad = {**state, "hyper": {**state["hyper"], "t": 1.5}}
    with pytest.raises(ValueError, match=r"t must be an integer, got 1\.5"):
        optimizer.load_state_dict(bad)
    assert optimizer.t == 1
    for key, p in model.named_params():
        if key in ms_before:
            np.testing.assert_array_equal(optimizer.ms[p], ms_before[key])
    with pytest.raises(RuntimeError, match=r"call setup\(model\) first"):
        optimizers.SGD().state_dict()


# --- data loaders ---------------------------------------------------------------------------------------------


class _Numbers:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return np.array([float(i)]), i


def _labels(loader, batches=None):
    out = []
    for k, (_, t) in enumerate(loader):
        out.append(t.tolist())
        if batches is not None and k + 1 == batches:
            break
    return out


@pytest.mark.parametrize("seeded", [False, True], ids=["global_generator", "own_seed"])
def test_a_loader_restored_mid_epoch_continues_that_epoch_from_the_next_batch(seeded):
    kw = {"seed": 3} if seeded else {}
    np.random.seed(1)
    straight = DataLoader(_Numbers(10), 3, **kw)
    expected = _labels(straight) + _labels(straight)

    np.random.seed(1)
    first = DataLoader(_Numbers(10), 3, **kw)
    seen = _labels(first) + _labels(first, batches=2)
    state = first.state_dict()
    numpy_state = np.random.get_state()
    assert state["epoch"] == 1 and state["iteration"] == 2

    np.random.seed(99)  # another process, other draws, other orders
    resumed = DataLoader(_Numbers(10), 3, **kw)
    resumed.load_state_dict(state)
    np.random.set_state(numpy_state)  # a checkpoint restores the global generator too
    rest = _labels(resumed)
    assert seen + rest == expected
    assert resumed.epoch == 2 and _labels(resumed) != []  # the next loop is a whole new epoch


def test_a_seq_loader_resumes_too():
    straight = SeqDataLoader(_Numbers(12), 3)
    expected = _labels(straight)
    first = SeqDataLoader(_Numbers(12), 3)
    seen = _labels(first, batches=1)
    resumed = SeqDataLoader(_Numbers(12), 3)
    resumed.load_state_dict(first.state_dict())
    assert seen + _labels(resumed) == expected


def test_a_loader_state_of_another_loader_is_refused_and_changes_nothing():
    loader = DataLoader(_Numbers(10), 3)
    before = loader.state_dict()
    with pytest.raises(ValueError, match=r"this loader has \{'data_size': 10, 'batch_size': 3"):
        loader.load_state_dict(DataLoader(_Numbers(11), 3).state_dict())
    with pytest.raises(ValueError, match="the state is of a SeqDataLoader"):
        loader.load_state_dict(SeqDataLoader(_Numbers(10), 3).state_dict() | {"shuffle": True})
    with pytest.raises(ValueError, match="index must be an order of the 10 examples"):
        loader.load_state_dict(before | {"index": np.zeros(10, np.int64)})
    with pytest.raises(ValueError, match="iteration 5 is past the epoch's 4 batches"):
        loader.load_state_dict(before | {"iteration": 5})
    with pytest.raises(ValueError, match="had no seed"):
        DataLoader(_Numbers(10), 3, seed=1).load_state_dict(before)
    assert loader.state_dict()["iteration"] == 0 and np.array_equal(loader.index, before["index"])


# --- checkpoints ----------------------------------------------------------------------------------------------


def test_a_checkpoint_restores_objects_and_random_streams_through_a_file_object(xp):
    model, optimizer = _small(xp, 0), optimizers.MomentumSGD(0.1)
    optimizer.setup(model)
    _steps(xp, model, optimizer, 2, seed=1)
    xdezero.seed(5)
    like = asarray(xp, np.zeros(2), np.float32)
    uniform((3,), like)
    buffer = io.BytesIO()
    xdezero.save_checkpoint(buffer, model=model, optimizer=optimizer)
    expected_numpy, expected_ours = np.random.random(4), to_numpy(uniform((4,), like))

    model2, optimizer2 = _small(xp, 9), optimizers.MomentumSGD(0.1)
    optimizer2.setup(model2)
    np.random.random(10)
    xdezero.seed(123)
    buffer.seek(0)
    xdezero.load_checkpoint(buffer, model=model2, optimizer=optimizer2)
    np.testing.assert_array_equal(np.random.random(4), expected_numpy)
    np.testing.assert_array_equal(to_numpy(uniform((4,), like)), expected_ours)
    _steps(xp, model, optimizer, 1, seed=3)
    _steps(xp, model2, optimizer2, 1, seed=3)
    for p, q in zip(model.params(), model2.params()):
        np.testing.assert_array_equal(to_numpy(p), to_numpy(q))


def test_a_checkpoint_that_does_not_fit_changes_no_object_and_no_random_stream(tmp_path):
    model, optimizer = _small(np, 0), optimizers.Adam()
    optimizer.setup(model)
    _steps(np, model, optimizer, 1, seed=1)
    loader = DataLoader(_Numbers(10), 3)
    path = tmp_path / "run.npz"
    xdezero.save_checkpoint(path, model=model, optimizer=optimizer, loader=loader)

    model2, optimizer2 = _small(np, 4), optimizers.MomentumSGD()
    optimizer2.setup(model2)
    before = {k: v.copy() for k, v in model2.state_dict().items()}
    numpy_before = np.random.get_state()[1].copy()
    with pytest.raises(ValueError, match=r"load_checkpoint: optimizer: .*the state is Adam's"):
        xdezero.load_checkpoint(path, model=model2, optimizer=optimizer2)
    for key, value in model2.state_dict().items():  # the model, loaded first, was put back
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_before)
    with pytest.raises(
        ValueError, match=r"the file holds no 'scheduler' \(it holds \['loader', 'model', 'optimizer'\]\)"
    ):
        xdezero.load_checkpoint(path, model=model2, scheduler=loader)
    with pytest.raises(TypeError, match=r"x=int has no state_dict\(\)"):
        xdezero.save_checkpoint(path, x=3)
    with pytest.raises(ValueError, match="holds no saved state"):
        model.save_weights(tmp_path / "w.npz")
        xdezero.load_checkpoint(tmp_path / "w.npz", model=model)
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a checkpoint that save_checkpoint wrote"):
        xdezero.load_checkpoint(tmp_path / "junk.npz", model=model)


# --- files: file objects, symlinks, narrow dtypes, killed writers ----------------------------------------------


def test_save_and_load_weights_take_file_objects():
    model, other = _small(np, 0), _small(np, 1)
    buffer = io.BytesIO()
    model.save_weights(buffer)
    buffer.seek(0)
    other.load_weights(buffer)
    for p, q in zip(model.params(), other.params()):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize("save", ["weights", "checkpoint"])
def test_a_save_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path, save):
    model = _small(np, 0)
    target = tmp_path / "run-7.npz"
    target.write_bytes(b"old")
    link = tmp_path / "latest.npz"
    link.symlink_to(target.name)
    if save == "weights":
        model.save_weights(link)
    else:
        xdezero.save_checkpoint(link, model=model)
    assert link.is_symlink() and os.readlink(link) == target.name
    assert target.read_bytes().startswith(b"PK")
    assert sorted(os.listdir(tmp_path)) == ["latest.npz", "run-7.npz"]


def test_a_temporary_file_left_by_a_killed_save_is_removed_by_the_next(tmp_path):
    """A writer killed with SIGKILL (no handler runs) leaves its temporary file; the next save of the same file
    removes it, and leaves alone one whose writer still runs."""
    path = tmp_path / "w.npz"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    alive = tmp_path / f".w.npz.{writer.pid}.0123456789ab.tmp"
    alive.write_bytes(b"half")
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    abandoned = tmp_path / f".w.npz.{killed.pid}.ba9876543210.tmp"
    abandoned.write_bytes(b"half")
    try:
        _small(np, 0).save_weights(path)
        assert sorted(os.listdir(tmp_path)) == sorted(["w.npz", alive.name])
    finally:
        writer.kill()
        writer.wait()


def test_a_save_killed_mid_write_leaves_the_old_file_and_the_next_save_cleans_up(tmp_path):
    path = tmp_path / "w.npz"
    _small(np, 0).save_weights(path)
    old = path.read_bytes()
    code = (
        "import os, signal, numpy as np\n"
        "from xdezero._files import atomic_write\n"
        "def write(f):\n"
        "    f.write(b'PK half')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic_write({str(path)!r}, write, 'test')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert path.read_bytes() == old and len(os.listdir(tmp_path)) == 2  # the old file and the abandoned one
    _small(np, 1).save_weights(path)
    assert os.listdir(tmp_path) == ["w.npz"]


def _bfloat16_model(xp):
    model = Linear(3, in_size=2)
    model.to_library(library(xp))
    for p in model.params():
        p.data = xp.astype(p.data, xp.bfloat16)
    return model


@pytest.mark.parametrize("save", ["weights", "checkpoint"])
def test_bfloat16_parameters_round_trip(xp, tmp_path, save):
    """torch and JAX bfloat16 parameters: written as their bit patterns, read back as bfloat16, bit for bit."""
    if library(xp) not in ("torch", "jax"):
        pytest.skip("bfloat16 arrays are tested with torch and JAX")
    model, other = _bfloat16_model(xp), _bfloat16_model(xp)
    model.W.data = xp.astype(asarray(xp, [[1.5, -2.25, 3e38], [1e-30, 0.0, -0.0]], np.float32), xp.bfloat16)
    path = tmp_path / "w.npz"
    if save == "weights":
        model.save_weights(path)
        other.load_weights(path)
    else:
        xdezero.save_checkpoint(path, model=model)
        xdezero.load_checkpoint(path, model=other)
    for p, q in zip(model.params(), other.params()):
        assert q.data.dtype == xp.bfloat16
        np.testing.assert_array_equal(to_numpy(xp.astype(p.data, xp.float32)), to_numpy(xp.astype(q.data, xp.float32)))
    float_model = Linear(3, in_size=2)
    with pytest.raises(ValueError, match="parameter 'W' has dtype float32, the file has bfloat16"):
        (float_model.load_weights if save == "weights" else lambda f: xdezero.load_checkpoint(f, model=float_model))(
            path
        )


def test_a_variable_is_not_a_checkpointable_object(tmp_path):
    with pytest.raises(TypeError, match=r"v=Variable has no state_dict\(\)"):
        xdezero.save_checkpoint(tmp_path / "c.npz", v=Variable(np.ones(1)))
    assert not os.listdir(tmp_path)


def test_time_is_not_in_a_checkpoint(tmp_path):
    """Two saves of the same state give the same bytes: nothing but the state goes in."""
    model = _small(np, 0)
    np.random.seed(3)
    xdezero.save_checkpoint(tmp_path / "a.npz", model=model)
    time.sleep(0.01)
    np.random.seed(3)
    xdezero.save_checkpoint(tmp_path / "b.npz", model=model)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


# --- captured steps -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_name", ["Adam", "MomentumSGD"])
def test_a_checkpoint_loaded_between_captured_calls_is_picked_up(optimizer_name):
    """A captured step replays reading the parameters and the optimizer's state as they are at each call: after
    load_checkpoint rewinds them, the replays repeat the calls made after the save, bit for bit."""
    np.random.seed(0)
    model = models.MLP((8, 3))
    optimizer = getattr(optimizers, optimizer_name)().setup(model)
    step = xdezero.capture(lambda x, t: _captured_step(model, optimizer, x, t))
    rng = np.random.default_rng(4)
    batches = [(rng.standard_normal((6, 2)).astype(np.float32), rng.integers(0, 3, 6)) for _ in range(6)]
    for x, t in batches[:4]:
        step(x, t)
    buffer = io.BytesIO()
    xdezero.save_checkpoint(buffer, model=model, optimizer=optimizer)
    after_save = [float(step(x, t).data) for x, t in batches[4:]]
    expected = {k: p.data.copy() for k, p in model.named_params()}
    buffer.seek(0)
    xdezero.load_checkpoint(buffer, model=model, optimizer=optimizer)
    assert [float(step(x, t).data) for x, t in batches[4:]] == after_save
    assert step.recorded == 1  # replayed, not recorded again
    for key, p in model.named_params():
        np.testing.assert_array_equal(p.data, expected[key], err_msg=key)


def _captured_step(model, optimizer, x, t):
    loss = F.softmax_cross_entropy(model(x), t)
    model.cleargrads()
    loss.backward()
    optimizer.update()
    return loss
