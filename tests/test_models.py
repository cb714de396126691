"""Models: Sequential, MLP, plot, VGG16 and ResNet (shapes, keys, local pretrained weights)."""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
import xdezero.utils
from tests.dezero_oracle import dezero_module
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


# --- VGG16 against DeZero 0.0.13, ResNet50 against torch, with the same weights ------------------------------


def _random_weights(ours, x, seed):
    """Our model's parameters (float64) drawn at random, BatchNorm's running statistics included; as NumPy."""
    rng = np.random.default_rng(seed)
    with test_mode():
        ours(x)  # the lazy layers take their shapes
    for key, p in ours.named_params():
        shape = p.data.shape
        if key.endswith("avg_var"):
            p.data = rng.uniform(0.5, 2.0, shape)
        elif key.endswith("gamma"):
            p.data = rng.uniform(0.5, 1.5, shape)
        else:  # He-scaled, so that the activations stay O(1) through 50 layers
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0] if len(shape) == 2 else 1
            p.data = rng.standard_normal(shape) * (np.sqrt(2.0 / fan_in) if len(shape) > 1 else 0.1)
    return {k: to_numpy(p) for k, p in ours.named_params()}


def _same_weights_in_dezero(ours, theirs_class, x, seed):
    """DeZero's model of the same class as `ours`, both holding the same random float64 weights."""
    _random_weights(ours, x, seed)
    dezero = dezero_module()
    theirs = theirs_class()
    with dezero.test_mode():
        theirs(x)
    flat = {}
    theirs._flatten_params(flat)
    ours_params = dict(ours.named_params())
    assert sorted(flat) == sorted(ours_params), "the two models name their parameters differently"
    for key, p in flat.items():
        assert p.data.shape == ours_params[key].data.shape, key
        p.data = np.array(ours_params[key].data)
    return dezero, theirs, flat


def _outputs_and_gradients(dezero, ours, theirs, flat, x, r, train):
    """Each model's output for x, and the gradients of Σ y·r for every parameter with one."""
    with xdezero.using_config("train", train), dezero.using_config("train", train):
        y_ours, y_theirs = ours(x), theirs(x)
        F.sum(y_ours * r).backward()
        dezero.functions.sum(y_theirs * r).backward()
    ours_grads = {k: to_numpy(p.grad) for k, p in ours.named_params() if p.grad is not None}
    theirs_grads = {k: p.grad.data for k, p in flat.items() if p.grad is not None}
    return to_numpy(y_ours), y_theirs.data, ours_grads, theirs_grads


def test_vgg16_forward_and_gradients_match_dezero_with_the_same_weights():
    """Outputs and every parameter's gradient as DeZero 0.0.13's VGG16 in float64 (test mode: dropout off)."""
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    r = np.random.default_rng(2).standard_normal((2, 1000))
    np.random.seed(0)
    ours = M.VGG16()
    dezero, theirs, flat = _same_weights_in_dezero(ours, dezero_module("models").VGG16, x, seed=3)
    y_ours, y_theirs, g_ours, g_theirs = _outputs_and_gradients(dezero, ours, theirs, flat, x, r, train=False)
    assert np.std(y_theirs) > 1e-3  # not a degenerate output
    np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-9, atol=1e-10)
    assert sorted(g_ours) == sorted(g_theirs) and len(g_ours) == 32
    for key in g_ours:
        np.testing.assert_allclose(g_ours[key], g_theirs[key], rtol=1e-8, atol=1e-10, err_msg=key)


def _torch_resnet50(torch, x, w, train):
    """ResNet-50 as DeZero lays it out (1×1 strided projections, bias only in conv1 and fc6), in
    torch.nn.functional; BatchNorm with momentum 0.1 = 1 - decay and eps 2e-5, its running statistics in `w`."""
    tf = torch.nn.functional

    def bn(h, name):
        mean, var = w[f"{name}/avg_mean"], w[f"{name}/avg_var"]
        return tf.batch_norm(h, mean, var, w[f"{name}/gamma"], w[f"{name}/beta"], train, 0.1, 2e-5)

    def conv(h, name, stride=1, pad=0):
        return tf.conv2d(h, w[f"{name}/W"], w.get(f"{name}/b"), stride, pad)

    def bottleneck(h, name, stride, project):
        g = tf.relu(bn(conv(h, f"{name}/conv1", stride if project else 1), f"{name}/bn1"))
        g = tf.relu(bn(conv(g, f"{name}/conv2", 1, 1), f"{name}/bn2"))
        g = bn(conv(g, f"{name}/conv3"), f"{name}/bn3")
        shortcut = bn(conv(h, f"{name}/conv4", stride), f"{name}/bn4") if project else h
        return tf.relu(g + shortcut)

    h = tf.relu(bn(conv(torch.from_numpy(x), "conv1", 2, 3), "bn1"))
    h = tf.max_pool2d(h, 3, 2)
    for block, (count, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2)), start=2):
        h = bottleneck(h, f"res{block}/a", stride, project=True)
        for i in range(1, count):
            h = bottleneck(h, f"res{block}/b{i}", 1, project=False)
    return h.mean(dim=(2, 3)) @ w["fc6/W"] + w["fc6/b"]


@pytest.mark.parametrize("train", [False, True], ids=["test_mode", "train_mode"])
def test_resnet50_forward_and_gradients_match_torch_with_the_same_weights(train):
    """Outputs, every parameter's gradient and the updated running statistics (train mode: batch statistics,
    the unbiased variance in the running average) as a torch.nn.functional ResNet-50's, in float64. DeZero
    0.0.13's own ResNet cannot be built (its bottlenecks pass Conv2d's arguments in the wrong order)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((2, 3, 40, 40))
    r = np.random.default_rng(2).standard_normal((2, 1000))
    np.random.seed(0)
    ours = M.ResNet50()
    weights = _random_weights(ours, x, seed=3)
    w = {k: torch.tensor(v, requires_grad=not k.endswith(("avg_mean", "avg_var"))) for k, v in weights.items()}
    y_theirs = _torch_resnet50(torch, x, w, train)
    (y_theirs * torch.from_numpy(r)).sum().backward()
    with xdezero.using_config("train", train):
        y_ours = ours(x)
        F.sum(y_ours * r).backward()
    assert float(y_theirs.detach().std()) > 1e-3  # not a degenerate output
    np.testing.assert_allclose(to_numpy(y_ours), y_theirs.detach().numpy(), rtol=1e-9, atol=1e-10)
    for key, p in ours.named_params():
        if key.endswith(("avg_mean", "avg_var")):
            np.testing.assert_allclose(to_numpy(p), w[key].numpy(), rtol=1e-12, atol=1e-14, err_msg=key)
        else:
            # Sums of terms up to 10³, and conv1's bias before a batch norm (exactly 0 in train mode, rounding
            # noise of 10⁻¹³ here): the absolute error is measured against the gradient's scale, at least 1.
            expected = w[key].grad.numpy()
            atol = 1e-10 * max(1.0, np.abs(expected).max())
            np.testing.assert_allclose(to_numpy(p.grad), expected, rtol=1e-8, atol=atol, err_msg=key)
