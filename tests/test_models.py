"""Models: Sequential, MLP, plot, VGG16 and ResNet (shapes, keys, local pretrained weights)."""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
import xdezero.utils
from tests.helpers import asarray, library, to_numpy
from xdezero import Variable, test_mode
from xdezero import models as M
from xdezero.backends import library_name
from xdezero.layers import Linear


def sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_mlp_keys_and_forward(xp):
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    model = M.MLP((4, 6, 3))
    y = model(asarray(xp, x))
    assert [k for k, _ in model.named_params()] == ["l0/W", "l0/b", "l1/W", "l1/b", "l2/W", "l2/b"]
    w = {k: to_numpy(p) for k, p in model.named_params()}
    h = sigmoid(x @ w["l0/W"] + w["l0/b"])
    h = sigmoid(h @ w["l1/W"] + w["l1/b"])
    np.testing.assert_allclose(to_numpy(y), h @ w["l2/W"] + w["l2/b"], rtol=1e-5, atol=1e-6)
    assert library_name(y.data) == library(xp)


def test_mlp_activation_is_used():
    x = np.random.default_rng(1).standard_normal((3, 2)).astype(np.float32)
    model = M.MLP((4, 2), activation=F.relu)
    y = model(x)
    w = {k: p.data for k, p in model.named_params()}
    expected = np.maximum(x @ w["l0/W"] + w["l0/b"], 0) @ w["l1/W"] + w["l1/b"]
    np.testing.assert_allclose(y.data, expected, rtol=1e-5, atol=1e-6)


def test_sequential_runs_layers_and_functions_in_order(xp):
    model = M.Sequential(Linear(4), F.relu, Linear(2))
    x = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    y = model(asarray(xp, x))
    assert [k for k, _ in model.named_params()] == ["l0/W", "l0/b", "l2/W", "l2/b"]
    W0, b0, W2, b2 = (to_numpy(p) for p in model.params())
    np.testing.assert_allclose(to_numpy(y), np.maximum(x @ W0 + b0, 0) @ W2 + b2, rtol=1e-5, atol=1e-6)


def test_sequential_rejects_non_callables():
    with pytest.raises(TypeError, match="item 1"):
        M.Sequential(Linear(2), 3)


def test_model_plot_draws_the_graph_of_forward(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(
        xdezero.models, "plot_dot_graph", lambda y, verbose, to_file: calls.append((y, verbose, to_file))
    )
    model = M.MLP((3, 2))
    target = str(tmp_path / "g.png")
    model.plot(np.ones((1, 2), np.float32), to_file=target)
    ((y, verbose, to_file),) = calls
    assert isinstance(y, Variable) and y.shape == (1, 2)
    assert verbose is True and to_file == target


# --- VGG16 / ResNet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [M.VGG16, M.ResNet50, M.ResNet101, M.ResNet152])
def test_pretrained_true_is_a_clear_error(cls):
    with pytest.raises(ValueError, match=r"does not download.*path"):
        cls(pretrained=True)


def test_pretrained_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
        M.VGG16(pretrained=str(tmp_path / "nope.npz"))


def test_resnet_rejects_unknown_depth():
    with pytest.raises(ValueError, match="50, 101, 152"):
        M.ResNet(n_layers=18)


def test_vgg16_forward_and_local_pretrained_weights(tmp_path):
    np.random.seed(0)
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    model = M.VGG16()
    with test_mode():
        y = model(x)
    assert y.shape == (1, 1000) and y.dtype == np.float32
    keys = [k for k, _ in model.named_params()]
    assert keys[:2] == ["conv1_1/W", "conv1_1/b"] and keys[-2:] == ["fc8/W", "fc8/b"] and len(keys) == 32
    assert model.fc6.W.shape == (512, 4096)
    path = tmp_path / "vgg.npz"
    model.save_weights(path)
    loaded = M.VGG16(pretrained=str(path))  # lazy layers are filled from the file
    with test_mode():
        np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(y))


def test_vgg16_preprocess():
    pil = pytest.importorskip("PIL.Image")
    image = pil.new("RGB", (40, 30), color=(200, 100, 50))
    a = M.VGG16.preprocess(image)
    assert a.shape == (3, 224, 224) and a.dtype == np.float32
    np.testing.assert_allclose(a[:, 0, 0], [50 - 103.939, 100 - 116.779, 200 - 123.68], rtol=1e-5)


def test_resnet50_structure_and_forward(tmp_path):
    np.random.seed(0)
    model = M.ResNet50()
    names = [k for k, _ in model.named_params()]
    assert names[:2] == ["conv1/W", "conv1/b"]
    assert "res2/a/conv4/W" in names and "res5/b2/bn3/gamma" in names and "res5/b3/conv1/W" not in names
    assert sum(1 for k in names if k.endswith("conv1/W")) == 1 + 3 + 4 + 6 + 3
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 1000) and y.dtype == np.float32
    path = tmp_path / "r50.npz"
    model.save_weights(path)
    with test_mode():
        expected = to_numpy(model(x))
        assert to_numpy(M.ResNet50(pretrained=str(path))(x)).tolist() == expected.tolist()


# --- SqueezeNet 1.1 -------------------------------------------------------------------------------------


def _torch_squeezenet11(x, w):
    """SqueezeNet 1.1 written directly in torch.nn.functional (the reference layout, ceil-mode pooling)."""
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional

    def conv(h, name, pad=0, stride=1):
        return tf.conv2d(h, torch.from_numpy(w[f"{name}/W"]), torch.from_numpy(w[f"{name}/b"]), stride, pad)

    def fire(h, name):
        s = tf.relu(conv(h, f"{name}/squeeze"))
        return torch.cat([tf.relu(conv(s, f"{name}/expand1x1")), tf.relu(conv(s, f"{name}/expand3x3", pad=1))], 1)

    h = tf.max_pool2d(tf.relu(conv(torch.from_numpy(x), "conv1", stride=2)), 3, 2, ceil_mode=True)
    h = tf.max_pool2d(fire(fire(h, "fire2"), "fire3"), 3, 2, ceil_mode=True)
    h = tf.max_pool2d(fire(fire(h, "fire4"), "fire5"), 3, 2, ceil_mode=True)
    for i in range(6, 10):
        h = fire(h, f"fire{i}")
    h = tf.relu(conv(h, "conv10"))
    return tf.adaptive_avg_pool2d(h, 1).flatten(1).numpy()


def test_squeezenet_matches_a_torch_squeezenet_1_1():
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64))
    model = M.SqueezeNet(num_classes=7)
    with test_mode():
        y = model(x)
    assert y.shape == (2, 7)
    w = {k: to_numpy(p) for k, p in model.named_params()}
    assert len(w) == 2 * (1 + 3 * 8 + 1)
    assert w["conv1/W"].shape == (64, 3, 3, 3) and w["fire9/expand3x3/W"].shape == (256, 64, 3, 3)
    assert w["conv10/W"].shape == (7, 512, 1, 1)
    w64 = {k: v.astype(np.float64) for k, v in w.items()}
    model64 = M.SqueezeNet(num_classes=7)
    model64(x[:1])
    for k, p in model64.named_params():
        p.data = w64[k]
    with test_mode():
        y64 = model64(x)
    np.testing.assert_allclose(to_numpy(y64), _torch_squeezenet11(x, w64), rtol=1e-10, atol=1e-12)


def test_squeezenet_trains():
    from xdezero import optimizers

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 48, 48)).astype(np.float32)
    t = np.array([0, 1, 2, 1])
    np.random.seed(0)
    model = M.SqueezeNet(num_classes=3, dropout_ratio=0.0)
    optimizer = optimizers.Adam(1e-4).setup(model)
    losses = []
    for _ in range(5):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        assert all(p.grad is not None for p in model.params())
        optimizer.update()
        losses.append(float(loss.data))
    assert losses[-1] < losses[0]


def test_squeezenet_has_no_pretrained_weights():
    with pytest.raises(NotImplementedError, match="pretrained"):
        M.SqueezeNet(pretrained=True)
