"""Edges that the function tables keep away from: ties, bounds, kinks, pooling padding, loaders broken off early,
damaged weight files, and hyper-parameters out of range.

References are torch CPU (float64) and hand-written NumPy, never xdezero itself.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, to_numpy
from xdezero import Variable
from xdezero import optimizers as O
from xdezero.dataloaders import DataLoader, SeqDataLoader
from xdezero.layers import LSTM, RNN, BatchNorm, Conv2d, Deconv2d, EmbedID, Linear


def _torch_grad(torch, fn, x, gy):
    """d⟨fn(x), gy⟩/dx by torch autograd, float64 on the CPU."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (fn(torch, xt) * torch.tensor(gy, dtype=torch.float64)).sum().backward()
    return xt.grad.numpy()


def _our_grad(xp, fn, x, gy):
    v = Variable(asarray(xp, x))
    y = fn(v)
    F.sum(y * Variable(asarray(xp, gy))).backward()
    return to_numpy(y), to_numpy(v.grad)


# --- max/min ties: shared equally, as torch.amax/amin ------------------------------------------------------

TIES = [
    ("rows", np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]), 1, False),
    ("all", np.array([[1.0, 3.0, 3.0], [3.0, 0.0, 2.0]]), None, False),
    ("cols_keepdims", np.array([[5.0, 5.0], [5.0, 1.0], [2.0, 5.0]]), 0, True),
    ("constant_3d", np.zeros((2, 3, 4)), (0, 2), False),
    ("0d", np.array(4.0), None, False),
]


@pytest.mark.parametrize("reduction", ["max", "min"])
@pytest.mark.parametrize(("case", "x", "axis", "keepdims"), TIES, ids=[t[0] for t in TIES])
def test_max_min_ties_share_the_gradient_like_torch_amax(xp, torch, reduction, case, x, axis, keepdims):
    x = x if reduction == "max" else -x
    ours = getattr(F, reduction)
    theirs = getattr(torch, "amax" if reduction == "max" else "amin")
    dim = tuple(range(x.ndim)) if axis is None else axis
    expected_y = theirs(torch.tensor(x), dim=dim, keepdim=keepdims).numpy()
    gy = np.random.default_rng(0).uniform(0.5, 2.0, expected_y.shape)
    y, gx = _our_grad(xp, lambda v: ours(v, axis=axis, keepdims=keepdims), x, gy)
    np.testing.assert_allclose(y, expected_y)
    np.testing.assert_allclose(
        gx, _torch_grad(torch, lambda _, t: theirs(t, dim=dim, keepdim=keepdims), x, gy), rtol=1e-12
    )


def test_max_tie_gradient_sums_to_one_and_nan_gives_nan_as_in_torch(xp, torch):
    x = np.array([[2.0, 2.0, 2.0, 1.0], [1.0, np.nan, 3.0, 3.0]])
    gy = np.ones(2)
    _, gx = _our_grad(xp, lambda v: F.max(v, axis=1), x, gy)
    np.testing.assert_allclose(gx[0], [1 / 3, 1 / 3, 1 / 3, 0.0])
    expected = _torch_grad(torch, lambda torch, t: torch.amax(t, dim=1), x, gy)
    assert np.isnan(expected[1]).all() and np.isnan(gx[1]).all()


# --- clip at its bounds, relu and leaky_relu at 0: as torch --------------------------------------------------

KINKS = [
    ("clip", lambda v: F.clip(v, -1.0, 1.0), lambda torch, t: torch.clamp(t, -1.0, 1.0), [-2.0, -1.0, 0.0, 1.0, 2.0]),
    ("clip_point", lambda v: F.clip(v, 1.0, 1.0), lambda torch, t: torch.clamp(t, 1.0, 1.0), [0.0, 1.0, 2.0]),
    ("relu", F.relu, lambda torch, t: torch.relu(t), [-1.0, 0.0, -0.0, 1.0]),
    (
        "leaky_relu",
        lambda v: F.leaky_relu(v, 0.2),
        lambda torch, t: torch.nn.functional.leaky_relu(t, 0.2),
        [-1.0, 0.0, 1.0],
    ),
]


@pytest.mark.parametrize(("name", "ours", "theirs", "x"), KINKS, ids=[k[0] for k in KINKS])
def test_gradient_at_bounds_and_kinks_matches_torch(xp, torch, name, ours, theirs, x):
    x = np.array(x)
    gy = np.arange(1.0, len(x) + 1)
    y, gx = _our_grad(xp, ours, x, gy)
    np.testing.assert_array_equal(y, theirs(torch, torch.tensor(x)).numpy())
    np.testing.assert_array_equal(gx, _torch_grad(torch, theirs, x, gy))


def test_clip_bounds_are_inclusive():
    # The rule the torch comparison above pins down, spelled out: x == x_min or x == x_max passes gy through.
    _, gx = _our_grad(np, lambda v: F.clip(v, -1.0, 1.0), np.array([-1.0, 1.0]), np.ones(2))
    np.testing.assert_array_equal(gx, [1.0, 1.0])


# --- pooling padding: PyTorch's rule pad <= kernel // 2 ----------------------------------------------------------

POOLS = [("pooling", F.pooling), ("pooling_simple", F.pooling_simple), ("average_pooling", F.average_pooling)]


@pytest.mark.parametrize(("name", "pool"), POOLS, ids=[p[0] for p in POOLS])
@pytest.mark.parametrize(("kernel", "pad"), [(3, 2), (2, 2), (3, 3), (2, 3), ((3, 2), (1, 2)), ((2, 4), (2, 1))])
def test_pooling_rejects_pad_over_half_the_kernel(xp, torch, name, pool, kernel, pad):
    x = asarray(xp, np.zeros((1, 1, 6, 6)))
    with pytest.raises(ValueError, match=rf"^{name}: pad \(.*\) must be at most half the kernel \(.*\)"):
        pool(x, kernel, 1, pad)
    with pytest.raises(RuntimeError, match="pad should be at most half"):  # the rule we follow
        torch.nn.functional.max_pool2d(torch.zeros(1, 1, 6, 6), kernel, 1, pad)


@pytest.mark.parametrize(("kernel", "pad"), [(3, 1), (2, 1), (4, 2), ((3, 2), (1, 1)), ((5, 1), (2, 0))])
def test_pooling_accepts_pad_up_to_half_the_kernel_as_torch(xp, torch, kernel, pad):
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 7)) - 1.0  # mostly negative: padding must never win
    xt = torch.tensor(x)
    np.testing.assert_allclose(
        to_numpy(F.pooling(asarray(xp, x), kernel, 1, pad)), torch.nn.functional.max_pool2d(xt, kernel, 1, pad)
    )
    np.testing.assert_allclose(
        to_numpy(F.average_pooling(asarray(xp, x), kernel, 1, pad)),
        torch.nn.functional.avg_pool2d(xt, kernel, 1, pad, count_include_pad=True),
    )


# --- data loaders: a loop broken early does not shorten the next epoch ----------------------------------------


class _Range:
    def __init__(self, n):
        self.n = n

    def __getitem__(self, i):
        return np.array([i, i]), i

    def __len__(self):
        return self.n


def _labels(loader):
    return [t.tolist() for _, t in loader]


def test_dataloader_loop_broken_early_restarts_a_complete_epoch():
    loader = DataLoader(_Range(6), batch_size=2, shuffle=False)
    for _ in loader:
        break
    assert _labels(loader) == [[0, 1], [2, 3], [4, 5]]
    assert _labels(loader) == [[0, 1], [2, 3], [4, 5]]


def test_shuffled_dataloader_after_break_covers_every_example_once():
    loader = DataLoader(_Range(7), batch_size=3, seed=0)
    for i, _ in enumerate(loader):
        if i == 1:
            break
    batches = _labels(loader)
    assert len(batches) == 3
    assert sorted(t for batch in batches for t in batch) == list(range(7))


def test_complete_epochs_draw_one_permutation_each():
    # Re-entering `for` after a complete epoch must not reshuffle again: the orders for a seed are the
    # generator's successive permutations, as before the reset-on-iter fix.
    loader = DataLoader(_Range(7), batch_size=3, seed=4)
    rng = np.random.default_rng(4)
    for _ in range(3):
        assert [t for batch in _labels(loader) for t in batch] == rng.permutation(7).tolist()


def test_seq_dataloader_loop_broken_early_restarts_at_the_first_step():
    loader = SeqDataLoader(_Range(6), batch_size=2)
    first = _labels(loader)
    assert first[0] == [0, 3]
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert _labels(loader) == first


# --- weight files: damaged input is a ValueError naming the file, and changes nothing -----------------------


def _model():
    m = Linear(3, in_size=2)
    m.W.data = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    return m


def _good_bytes(tmp_path):
    path = tmp_path / "good.npz"
    _model().save_weights(path)
    return path.read_bytes()


def _damaged(kind, good):
    if kind == "empty":
        return b""
    if kind == "random":
        return np.random.default_rng(0).bytes(500)
    if kind.startswith("truncated"):
        return good[: int(len(good) * float(kind.split("-")[1]))]
    if kind == "corrupted":  # flip bytes inside the first array's data: the zip CRC check catches it
        data = bytearray(good)
        data[120:140] = bytes(255 - b for b in data[120:140])
        return bytes(data)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "random", "truncated-0.1", "truncated-0.5", "truncated-0.99", "corrupted"])
def test_load_weights_rejects_a_damaged_file_by_name(tmp_path, kind):
    path = tmp_path / f"{kind}.npz"
    path.write_bytes(_damaged(kind, _good_bytes(tmp_path)))
    layer = Linear(3, in_size=2)
    before = layer.W.data.copy()
    with pytest.raises(ValueError, match=rf"load_weights\('.*{kind}\.npz'\)"):
        layer.load_weights(path)
    np.testing.assert_array_equal(layer.W.data, before)


def test_load_weights_on_a_directory_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match=r"load_weights\(.*\): this is a directory"):
        Linear(3, in_size=2).load_weights(tmp_path)


def test_save_weights_into_a_missing_directory_names_the_users_path(tmp_path):
    target = tmp_path / "no" / "such" / "w.npz"
    with pytest.raises(FileNotFoundError, match=r"save_weights\('.*no/such/w\.npz'\): the directory .* does not exist"):
        _model().save_weights(target)
    assert os.listdir(tmp_path) == []


def test_failed_save_names_the_users_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    old = _model()
    old.save_weights(path)
    old_bytes = path.read_bytes()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    newer = Linear(3, in_size=2)
    with pytest.raises(PermissionError) as info:
        newer.save_weights(path)
    monkeypatch.undo()
    assert info.value.filename == str(path) and ".tmp" not in str(info.value)
    assert os.listdir(tmp_path) == ["w.npz"]
    assert path.read_bytes() == old_bytes
    assert zipfile.is_zipfile(path)


# --- hyper-parameters and sizes out of range: ValueError naming class, parameter, value and what is accepted --

BAD = [
    (lambda: Linear(0), r"Linear: out_size must be a positive integer \(>= 1\), got 0"),
    (lambda: Linear(-3), r"Linear: out_size .* got -3"),
    (lambda: Linear(2, in_size=0), r"Linear: in_size .* got 0"),
    (lambda: Conv2d(0, 3), r"Conv2d: out_channels .* got 0"),
    (lambda: Conv2d(2, 0), r"Conv2d: kernel_size must be positive, got 0$"),
    (lambda: Deconv2d(2, (3, -1)), r"Deconv2d: kernel_size must be positive, got \(3, -1\)"),
    (lambda: EmbedID(0, 4), r"EmbedID: in_size .* got 0"),
    (lambda: RNN(0), r"RNN: hidden_size .* got 0"),
    (lambda: LSTM(-1), r"LSTM: hidden_size .* got -1"),
    (lambda: BatchNorm(decay=1.5), r"BatchNorm: decay must be a number in \[0, 1\], got 1.5"),
    (lambda: BatchNorm(eps=-1e-5), r"BatchNorm: eps must be a finite number >= 0, got -1e-05"),
    (lambda: BatchNorm(eps=math.nan), r"BatchNorm: eps .* got nan"),
    (lambda: O.SGD(lr=math.nan), r"SGD: lr must be a number in \[0, inf\), got nan"),
    (lambda: O.SGD(lr=-0.1), r"SGD: lr .* got -0.1"),
    (lambda: O.SGD(lr=math.inf), r"SGD: lr .* got inf"),
    (lambda: O.MomentumSGD(momentum=-0.1), r"MomentumSGD: momentum must be a number in \[0, 1\), got -0.1"),
    (lambda: O.MomentumSGD(momentum=1.0), r"MomentumSGD: momentum .* got 1.0"),
    (lambda: O.MomentumSGD(lr=-1), r"MomentumSGD: lr .* got -1"),
    (lambda: O.AdaGrad(lr=-1), r"AdaGrad: lr .* got -1"),
    (lambda: O.AdaGrad(eps=-1e-8), r"AdaGrad: eps .* got -1e-08"),
    (lambda: O.AdaDelta(rho=1.5), r"AdaDelta: rho must be a number in \[0, 1\], got 1.5"),
    (lambda: O.AdaDelta(eps=math.nan), r"AdaDelta: eps .* got nan"),
    (lambda: O.Adam(alpha=-1), r"Adam: alpha must be a number in \[0, inf\), got -1"),
    (lambda: O.Adam(beta1=1.0), r"Adam: beta1 must be a number in \[0, 1\), got 1.0"),
    (lambda: O.Adam(beta2=math.nan), r"Adam: beta2 .* got nan"),
    (lambda: O.Adam(eps=-1.0), r"Adam: eps .* got -1.0"),
    (lambda: O.Adam(alpha="0.1"), r"Adam: alpha .* got '0.1'"),
    (lambda: O.WeightDecay(-1e-4), r"WeightDecay: rate .* got -0.0001"),
    (lambda: O.ClipGrad(0.0), r"ClipGrad: max_norm must be a number in \(0, inf\], got 0.0"),
    (lambda: O.ClipGrad(math.nan), r"ClipGrad: max_norm .* got nan"),
    (lambda: F.dropout(np.ones(3), 1.0), r"dropout: dropout_ratio must be in \[0, 1\), got 1.0"),
    (lambda: F.dropout(np.ones(3), -0.1), r"dropout: dropout_ratio .* got -0.1"),
    (lambda: F.dropout(np.ones(3), math.nan), r"dropout: dropout_ratio .* got nan"),
]


@pytest.mark.parametrize(("make", "message"), BAD, ids=[m for _, m in BAD])
def test_out_of_range_arguments_are_rejected_with_a_clear_message(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_non_integer_sizes_are_a_type_error():
    with pytest.raises(TypeError, match=r"Linear: out_size must be a positive integer, got 2.5 of type float"):
        Linear(2.5)
    with pytest.raises(TypeError, match=r"EmbedID: out_size .* got True of type bool"):
        EmbedID(3, True)


def test_edge_values_that_are_valid_are_accepted():
    O.SGD(lr=0)
    O.MomentumSGD(momentum=0.0)
    O.AdaDelta(rho=1.0)
    O.Adam(beta1=0.0, eps=0.0)
    O.ClipGrad(math.inf)
    O.WeightDecay(0.0)
    BatchNorm(decay=0.0, eps=0.0)
    BatchNorm(decay=1)
    Linear(np.int64(3), in_size=np.int32(2))
    Conv2d(1, (1, 2))
    F.dropout(np.ones(3), 0.0)
