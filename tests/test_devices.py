"""Devices: arrays that do not live on the host, moves between devices and libraries, and the test harness.

Most tests here run on array-api-strict's simulated second device, `Device("device1")`, whatever the selected
backends: like a GPU's arrays, its arrays refuse implicit conversion to NumPy, refuse to meet host arrays in one
operation and (through the guard in conftest) refuse DLPack export to the host. The tests taking `xp` run on
every selected backend, the GPU ones included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from weakref import WeakKeyDictionary

import array_api_strict as strict
import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, fixture_device, to_numpy
from xdezero import DataLoader, Variable, cli, optimizers
from xdezero import layers as L
from xdezero.backends import (
    device_of,
    flat_positions,
    is_cupy_available,
    library_name,
    library_of_device,
    to_cpu,
    to_device,
    to_library,
)
from xdezero.backends import to_numpy as backends_to_numpy
from xdezero.dataloaders import SeqDataLoader

# array-api-strict moves arrays between its devices with NumPy 2's `asarray(copy=...)`: no simulated device on 1.x
pytestmark = pytest.mark.skipif(
    np.lib.NumpyVersion(np.__version__) < "2.0.0", reason="array-api-strict's devices need NumPy 2"
)

ROOT = Path(__file__).resolve().parent.parent
DEVICE1 = strict.Device("device1")
HOST = strict.Device("CPU_DEVICE")
X = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)


def on_device1(a):
    return strict.asarray(np.asarray(a), device=DEVICE1)


# --- the harness: the fixture's device and the DLPack guard ----------------------------------------------


def test_the_fixture_creates_arrays_on_its_device(xp):
    expected = fixture_device(xp)
    for a in (xp.asarray([1.0, 2.0]), xp.zeros(2), xp.ones((1, 2)), xp.arange(3), xp.full(2, 1.0)):
        if expected is not None:
            assert device_of(a) == expected
        assert library_name(a) == library_name(xp.asarray(0.0))


def test_device_arrays_refuse_every_implicit_way_to_the_host():
    a = on_device1([1.0, 2.0])
    with pytest.raises(RuntimeError, match="device"):
        np.asarray(a)
    with pytest.raises(BufferError, match="DLPack export"):
        np.from_dlpack(a)
    with pytest.raises(ValueError, match="different devices"):
        a + strict.asarray([1.0, 2.0])
    np.testing.assert_array_equal(np.from_dlpack(a.to_device(HOST)), [1.0, 2.0])  # the explicit move works


# --- moves of arrays ---------------------------------------------------------------------------------------


def test_to_cpu_moves_a_device_array_to_the_host_device():
    a = on_device1([[1.0, 2.0]])
    host = to_cpu(a)
    assert device_of(host) == HOST and library_name(host) == "array_api_strict"
    np.testing.assert_array_equal(np.from_dlpack(host), [[1.0, 2.0]])


def test_to_numpy_copies_a_device_array_to_the_host():
    values = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(backends_to_numpy(on_device1(values)), values)


def test_to_device_within_the_library_and_back():
    a = to_device(strict.asarray([1.0, 3.0]), DEVICE1)
    assert device_of(a) == DEVICE1
    assert device_of(to_device(a, "cpu")) == HOST
    with pytest.raises(TypeError, match=r"to_gpu moves NumPy, torch and JAX arrays.*to_library"):
        to_device(a, "gpu")


def test_index_arrays_on_a_device_give_flat_positions():
    rows = on_device1(np.array([2, 0]))
    np.testing.assert_array_equal(flat_positions((3, 4), (rows, slice(None))), [[8, 9, 10, 11], [0, 1, 2, 3]])


def test_labels_on_a_device_are_range_checked():
    logits = on_device1(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"out of range.*\[0, 2\]"):
        F.softmax_cross_entropy(logits, on_device1(np.array([0, 3])))


SOURCES = {
    "numpy": lambda a: a,
    "array_api_strict_device1": on_device1,
    "torch": lambda a: __import__("torch").asarray(a),
}


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("target,device", [("numpy", None), ("array_api_strict", DEVICE1), ("torch", "cpu")])
def test_to_library_keeps_values_and_dtype(source, target, device):
    if "torch" in (source, target):  # only the cases with torch need it
        pytest.importorskip("torch")
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    original = SOURCES[source](values.copy())
    moved = to_library(original, target, device=device)
    assert library_name(moved) == target
    if device is not None:
        assert device_of(moved) == device if target != "torch" else str(device_of(moved)) == device
    host = backends_to_numpy(moved)
    assert host.dtype == np.float32
    np.testing.assert_array_equal(host, values)


def test_to_library_never_shares_memory():
    a = np.ones(3)
    b = to_library(a, "numpy")
    assert not np.shares_memory(a, b)


def test_to_library_errors_name_what_is_accepted():
    with pytest.raises(ValueError, match="unknown array library 'tensorflow'; known: numpy, array_api_strict"):
        to_library(np.ones(1), "tensorflow")
    with pytest.raises(ValueError, match="library 'numpy' has no device 'device1'"):
        to_library(np.ones(1), "numpy", device="device1")


@pytest.mark.skipif(is_cupy_available(), reason="CuPy is usable here")
def test_to_library_cupy_without_a_gpu_says_so():
    pytest.importorskip("cupy")
    with pytest.raises(RuntimeError, match="CuPy sees no usable CUDA GPU"):
        to_library(np.ones(1), "cupy")


def test_library_of_device():
    torch = pytest.importorskip("torch")
    assert library_of_device(torch.device("cpu")) == "torch"
    assert library_of_device(DEVICE1) == "array_api_strict"
    assert library_of_device("cpu") == "numpy"
    with pytest.raises(ValueError, match="does not say which library"):
        library_of_device("cuda:0")
    with pytest.raises(TypeError, match="unknown kind of device 3"):
        library_of_device(3)


def test_variable_to_device_and_to_library():
    v = Variable(np.array([1.0, 2.0]))
    assert v.to_library("array_api_strict", DEVICE1) is v
    assert device_of(v.data) == DEVICE1
    v.to_device("cpu")
    assert device_of(v.data) == HOST
    np.testing.assert_array_equal(np.from_dlpack(v.data), [1.0, 2.0])


# --- layers and models on a device --------------------------------------------------------------------------


def linear(in_size=3, out_size=2):
    np.random.seed(0)
    return L.Linear(out_size, in_size=in_size)


def test_layer_to_device_moves_parameters_and_gradients():
    layer = linear()
    F.sum(layer(X)).backward()
    layer.to_library("array_api_strict").to_device(DEVICE1)
    for p in layer.params():
        assert device_of(p.data) == DEVICE1 and device_of(p.grad.data) == DEVICE1
    layer.to_device("cpu")
    assert all(device_of(p.data) == HOST for p in layer.params())


def test_layer_to_library_then_forward_matches_numpy():
    layer = linear()
    W, b = layer.W.data.copy(), layer.b.data.copy()
    layer.to_library("array_api_strict", device=DEVICE1)
    y = layer(on_device1(X))
    assert device_of(y.data) == DEVICE1
    np.testing.assert_allclose(backends_to_numpy(y.data), X @ W + b, rtol=1e-6)


@pytest.mark.parametrize("make", [optimizers.SGD, optimizers.MomentumSGD, optimizers.Adam])
def test_parameters_gradients_and_optimizer_state_stay_on_the_inputs_device(xp, make):
    layer = linear()
    W, b = layer.W.data.copy(), layer.b.data.copy()
    x = asarray(xp, X)
    optimizer = make().setup(layer)
    F.sum(layer(x)).backward()
    optimizer.update()
    device = device_of(x)
    for p in layer.params():
        assert library_name(p.data) == library_name(x)
        assert device_of(p.data) == device and device_of(p.grad.data) == device
    states = [s for store in vars(optimizer).values() if isinstance(store, WeakKeyDictionary) for s in store.values()]
    assert len(states) == {optimizers.SGD: 0, optimizers.MomentumSGD: 2, optimizers.Adam: 4}[make]
    assert all(device_of(s) == device for s in states)
    if make is optimizers.SGD:  # d(sum(xW + b))/dW = xᵀ·1, /db = N
        lr = optimizer.lr
        np.testing.assert_allclose(to_numpy(layer.W), W - lr * X.T @ np.ones((5, 2)), rtol=1e-5)
        np.testing.assert_allclose(to_numpy(layer.b), b - lr * 5, rtol=1e-5)


def test_layers_of_every_kind_follow_the_first_input(xp):
    images = asarray(xp, np.random.default_rng(1).standard_normal((2, 1, 5, 5)).astype(np.float32))
    ids = asarray(xp, np.array([0, 2, 1]))
    np.random.seed(0)
    conv, bn, embed = L.Conv2d(2, 3, pad=1), L.BatchNorm(), L.EmbedID(3, 4)
    y = F.sum(bn(conv(images))) + F.sum(embed(ids))
    y.backward()
    for layer in (conv, bn, embed):
        for p in layer.params():
            assert device_of(p.data) == device_of(images), p.name
            if p.grad is not None:
                assert device_of(p.grad.data) == device_of(images), p.name


def test_weights_round_trip_keeps_the_model_on_its_device(tmp_path):
    layer = linear().to_library("array_api_strict", DEVICE1)
    layer.save_weights(tmp_path / "w.npz")
    assert all(device_of(p.data) == DEVICE1 for p in layer.params())
    other = L.Linear(2, in_size=3).to_library("array_api_strict", DEVICE1)
    other.load_weights(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as stored:
        for key, p in other.named_params():
            assert device_of(p.data) == DEVICE1
            np.testing.assert_array_equal(backends_to_numpy(p.data), stored[key])


# --- data loaders --------------------------------------------------------------------------------------------


class Pairs:
    def __init__(self, n=5):
        self.x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        self.t = np.arange(n)

    def __getitem__(self, i):
        return self.x[i], self.t[i]

    def __len__(self):
        return len(self.t)


def test_data_loader_to_device_gives_batches_there():
    data = Pairs()
    loader = DataLoader(data, 2, shuffle=False)
    loader.to_device(DEVICE1)
    batches = list(loader)
    assert all(device_of(x) == DEVICE1 and device_of(t) == DEVICE1 for x, t in batches)
    np.testing.assert_array_equal(np.concatenate([backends_to_numpy(x) for x, _ in batches]), data.x)
    np.testing.assert_array_equal(np.concatenate([backends_to_numpy(t) for _, t in batches]), data.t)
    loader.to_cpu()
    x, t = next(iter(loader))
    assert isinstance(x, np.ndarray) and isinstance(t, np.ndarray)


def test_data_loader_to_device_with_a_library_name():
    torch = pytest.importorskip("torch")
    loader = DataLoader(Pairs(), 2, shuffle=False)
    loader.to_device("cpu", library="torch")
    x, _ = next(iter(loader))
    assert isinstance(x, torch.Tensor) and x.device == torch.device("cpu")
    np.testing.assert_array_equal(x.numpy(), Pairs().x[:2])
    loader.to_device("cpu")
    assert isinstance(next(iter(loader))[0], np.ndarray)


def test_data_loader_to_device_rejects_an_ambiguous_device():
    loader = DataLoader(Pairs(), 2)
    with pytest.raises(ValueError, match="'cuda:0' does not say which library"):
        loader.to_device("cuda:0")
    with pytest.raises(ValueError, match="unknown array library 'tensorflow'"):
        loader.to_device("cpu", library="tensorflow")
    with pytest.raises(ValueError, match="library 'array_api_strict' has no device 'device1'"):
        loader.to_device("device1", library="array_api_strict")
    assert loader.device is None  # nothing changed


def test_seq_data_loader_to_device():
    data = Pairs(6)
    loader = SeqDataLoader(data, 2)
    loader.to_device(DEVICE1)
    x, t = next(iter(loader))
    assert device_of(x) == DEVICE1
    np.testing.assert_array_equal(backends_to_numpy(t), [0, 3])  # row k starts at k * len // batch_size


# --- the command ----------------------------------------------------------------------------------------------


def test_cli_trains_on_the_simulated_device(capsys):
    assert cli.main(["train", "spiral", "--epochs", "2", "--hidden", "8", "--backend", "array_api_strict",
                     "--device", "device1", "--quiet"]) == 0  # fmt: skip
    assert "test accuracy" in capsys.readouterr().out


def test_cli_names_the_devices_of_array_api_strict(capsys):
    assert cli.main(["train", "spiral", "--backend", "array_api_strict", "--device", "device9"]) == 2
    assert "array-api-strict's devices are cpu, device1 and device2" in capsys.readouterr().err


# --- backend selection ----------------------------------------------------------------------------------------


def collect_with(backends: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XDEZERO_BACKENDS"}
    if backends is not None:
        env["XDEZERO_BACKENDS"] = backends
    test = "tests/test_devices.py::test_the_fixture_creates_arrays_on_its_device"
    # pytest-benchmark (on some GPU images) warns when it thinks pytest-xdist runs, and warnings are errors here
    options = ["--collect-only", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark"]
    command = [sys.executable, "-m", "pytest", *options, test]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("backend", ["torch_cuda", "jax_gpu"])
def test_a_gpu_backend_asked_for_without_a_gpu_is_a_usage_error(backend):
    pytest.importorskip(backend.partition("_")[0])
    if usable_gpu_backends()[backend]:
        pytest.skip(f"{backend} is usable here")
    result = collect_with(backend)
    assert result.returncode == 4, result.stdout + result.stderr  # pytest's exit code for a usage error
    assert f"XDEZERO_BACKENDS asks for '{backend}', which is not usable here: no GPU here" in result.stderr


def test_the_default_selection_leaves_out_unusable_gpu_backends_silently():
    result = collect_with(None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[array_api_strict_device]" in result.stdout
    for name, usable in usable_gpu_backends().items():
        assert (f"[{name}]" in result.stdout) == usable, name


def usable_gpu_backends() -> dict[str, bool]:
    usable = {"cupy": is_cupy_available(), "torch_cuda": False, "jax_gpu": False}
    try:
        import torch

        usable["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    try:
        import jax

        usable["jax_gpu"] = bool(jax.devices("gpu"))
    except (ImportError, RuntimeError):
        pass
    return usable
