"""Weights on disk: .npz roundtrips on and across backends, strict validation, atomic saves."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from tests.conftest import BACKENDS
from tests.helpers import asarray, library, to_numpy
from xdezero import models
from xdezero.backends import library_name
from xdezero.layers import BatchNorm, Layer, Linear


class Net(models.Model):
    def __init__(self):
        super().__init__()
        self.l0 = Linear(4)
        self.bn = BatchNorm()
        self.l1 = Linear(3)

    def forward(self, x):
        return self.l1(self.bn(self.l0(x)))


X = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32)
KEYS = ["l0/W", "l0/b", "bn/avg_mean", "bn/avg_var", "bn/gamma", "bn/beta", "l1/W", "l1/b"]


def built(xp, seed=0):
    np.random.seed(seed)
    net = Net()
    net(asarray(xp, X))
    return net


def snapshot(model):
    return {k: to_numpy(p).copy() for k, p in model.named_params()}


def assert_same_weights(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert a[k].dtype == b[k].dtype, k


def test_file_is_plain_npz_with_slash_keys(tmp_path):
    net = built(np)
    net.save_weights(tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz", allow_pickle=False) as f:
        assert list(f.files) == KEYS
        np.testing.assert_array_equal(f["l1/W"], net.l1.W.data)
        assert f["l0/W"].dtype == np.float32


def test_npz_suffix_is_added_like_numpy(tmp_path):
    built(np).save_weights(str(tmp_path / "weights"))
    assert os.listdir(tmp_path) == ["weights.npz"]


def test_roundtrip_on_each_backend(xp, tmp_path):
    net = built(xp, seed=0)
    path = tmp_path / "w.npz"
    net.save_weights(path)
    other = built(xp, seed=1)
    assert not np.array_equal(to_numpy(other.l0.W), to_numpy(net.l0.W))
    other.load_weights(path)
    assert_same_weights(snapshot(other), snapshot(net))
    assert all(library_name(p.data) == library(xp) for p in other.params())


@pytest.mark.parametrize("target", list(BACKENDS))
def test_saved_on_one_backend_loads_on_another(xp, target, tmp_path):
    net = built(xp, seed=0)
    net.save_weights(tmp_path / "w.npz")
    other = built(BACKENDS[target], seed=1)
    other.load_weights(tmp_path / "w.npz")
    assert_same_weights(snapshot(other), snapshot(net))
    assert all(library_name(p.data) == library(BACKENDS[target]) for p in other.params())
    y_saved, y_loaded = to_numpy(net(asarray(xp, X))), to_numpy(other(asarray(BACKENDS[target], X)))
    np.testing.assert_allclose(y_loaded, y_saved, rtol=1e-5, atol=1e-6)


def test_saving_does_not_move_the_model(xp, tmp_path):
    net = built(xp)
    before = [p.data for p in net.params()]
    net.save_weights(tmp_path / "w.npz")
    assert all(p.data is b for p, b in zip(net.params(), before))


def test_load_before_first_call_fills_lazy_parameters(xp, tmp_path):
    net = built(np)
    net.save_weights(tmp_path / "w.npz")
    fresh = Net()
    assert fresh.l0.W.data is None
    fresh.load_weights(tmp_path / "w.npz")
    y = fresh(asarray(xp, X))
    assert library_name(fresh.l0.W.data) == library(xp)
    np.testing.assert_allclose(to_numpy(y), to_numpy(net(X)), rtol=1e-5, atol=1e-6)


def test_saving_a_model_that_never_ran_names_the_parameter(tmp_path):
    with pytest.raises(ValueError, match=r"'l0/W'.*first input"):
        Net().save_weights(tmp_path / "w.npz")
    assert os.listdir(tmp_path) == []


# --- untrusted files: nothing changes unless everything matches ----------------------------------


def write_with(path, **changes):
    """A copy of a valid weights file with some entries replaced (None removes one)."""
    arrays = snapshot(built(np, seed=5))
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(path, **arrays)  # np.savez pickles object arrays: the file may hold pickled data


BAD_FILES = {
    "pickled entry": ({"l1/b": np.array([{"evil": 1}, None, 3], dtype=object)}, r"'l1/b'.*pickled"),
    "missing key": ({"l1/b": None}, r"missing.*'l1/b'"),
    "extra key": ({"l2/W": np.zeros((3, 3), np.float32)}, r"unknown.*'l2/W'"),
    "wrong shape": ({"l1/W": np.zeros((4, 2), np.float32)}, r"'l1/W'.*shape \((4|\?), 3\).*\(4, 2\)"),
    "wrong dtype": ({"l1/b": np.zeros(3, np.float64)}, r"'l1/b'.*float32.*float64"),
    "wrong rank": ({"bn/gamma": np.zeros((4, 1), np.float32)}, r"'bn/gamma'.*shape"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_rejected_by_name_and_model_is_unchanged(xp, tmp_path, case):
    changes, message = BAD_FILES[case]
    path = tmp_path / "bad.npz"
    write_with(path, **changes)
    net = built(xp)
    arrays_before = [p.data for p in net.params()]
    values_before = snapshot(net)
    with pytest.raises(ValueError, match=message):
        net.load_weights(path)
    assert all(p.data is a for p, a in zip(net.params(), arrays_before))
    assert_same_weights(snapshot(net), values_before)


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "missing key"])
def test_bad_file_is_rejected_before_the_first_call_too(tmp_path, case):
    changes, message = BAD_FILES[case]
    path = tmp_path / "bad.npz"
    write_with(path, **changes)
    fresh = Net()
    before = [p.data for p in fresh.params()]  # lazy W and BatchNorm entries are None, biases exist
    with pytest.raises(ValueError, match=message):
        fresh.load_weights(path)
    assert all(p.data is b for p, b in zip(fresh.params(), before))
    assert fresh.l0.W.data is None


def test_wrong_output_size_rejected_for_a_lazy_layer(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, W=np.zeros((7, 5), np.float32), b=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"'W'.*\(\?, 4\)"):
        Linear(4).load_weights(path)
    layer = Linear(5)
    layer.load_weights(path)
    assert layer.W.shape == (7, 5)


def test_whole_file_pickle_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        pickle.dump({"l0/W": np.zeros((2, 4), np.float32)}, f)
    net = built(np)
    before = snapshot(net)
    with pytest.raises(ValueError, match="pickled"):
        net.load_weights(path)
    assert_same_weights(snapshot(net), before)


def test_single_npy_file_is_rejected(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"\.npz"):
        built(np).load_weights(path)


# --- atomic save --------------------------------------------------------------------------------


def test_crash_mid_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    old = built(np, seed=0)
    old.save_weights(path)
    old_bytes = path.read_bytes()

    real_write = np.lib.format.write_array
    calls = []

    def crash_on_third(fp, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("simulated crash: disk full")
        return real_write(fp, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", crash_on_third)
    with pytest.raises(OSError, match="simulated crash"):
        built(np, seed=1).save_weights(path)
    monkeypatch.undo()

    assert len(calls) == 3  # the crash happened in the middle of writing
    assert os.listdir(tmp_path) == ["w.npz"]  # no temporary file left behind
    assert path.read_bytes() == old_bytes
    reloaded = Net()
    reloaded.load_weights(path)
    assert_same_weights(snapshot(reloaded), snapshot(old))


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "w.npz"
    built(np, seed=0).save_weights(path)
    newer = built(np, seed=1)
    newer.save_weights(path)
    reloaded = Net()
    reloaded.load_weights(path)
    assert_same_weights(snapshot(reloaded), snapshot(newer))
    assert os.listdir(tmp_path) == ["w.npz"]


def test_any_parameter_name_can_be_saved(tmp_path):
    # Keys that collide with np.savez's own argument names still work.
    layer = Layer()
    from xdezero import Parameter

    layer.file = Parameter(np.ones(2, np.float32))
    layer.allow_pickle = Parameter(np.zeros(1, np.float32))
    layer.save_weights(tmp_path / "w.npz")
    other = Layer()
    other.file = Parameter(np.zeros(2, np.float32))
    other.allow_pickle = Parameter(np.ones(1, np.float32))
    other.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(other.file.data, [1.0, 1.0])
    np.testing.assert_array_equal(other.allow_pickle.data, [0.0])
