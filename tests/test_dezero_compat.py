"""Programs written the way DeZero's users write them, with `dezero` replaced by `xdezero`."""

from __future__ import annotations

import os

import numpy as np

import xdezero
import xdezero.functions as F
import xdezero.layers as L
from xdezero import Variable, no_grad, optimizers
from xdezero.dataloaders import DataLoader
from xdezero.datasets import SinCurve, Spiral
from xdezero.layers import Layer
from xdezero.models import MLP, Model


def test_top_level_names_like_dezero():
    # `from dezero import Model, Layer, DataLoader` and the submodules as attributes.
    assert xdezero.Model is Model
    assert xdezero.Layer is Layer
    assert xdezero.DataLoader is DataLoader
    for name in ("layers", "models", "optimizers", "functions", "datasets", "dataloaders", "utils"):
        assert hasattr(xdezero, name), name


def test_layer_as_container_with_manual_sgd():
    np.random.seed(0)
    x = np.random.rand(100, 1)
    y = np.sin(2 * np.pi * x) + np.random.rand(100, 1)

    model = Layer()
    model.l1 = L.Linear(10)
    model.l2 = L.Linear(1)

    def predict(model, x):
        return model.l2(F.sigmoid(model.l1(x)))

    lr = 0.2
    losses = []
    for _ in range(4000):
        y_pred = predict(model, x)
        loss = F.mean_squared_error(y, y_pred)
        model.cleargrads()
        loss.backward()
        for p in model.params():
            p.data -= lr * p.grad.data  # DeZero's in-place habit on NumPy arrays still works
        losses.append(float(loss.data))
    # The best straight line leaves about 0.28 (the noise alone, 1/12): going below 0.25 means the curve was fitted.
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < 0.25


class TwoLayerNet(Model):
    def __init__(self, hidden_size, out_size):
        super().__init__()
        self.l1 = L.Linear(hidden_size)
        self.l2 = L.Linear(out_size)

    def forward(self, x):
        y = F.sigmoid(self.l1(x))
        y = self.l2(y)
        return y


def test_model_subclass_with_optimizer():
    np.random.seed(0)
    x = np.random.rand(100, 1)
    y = np.sin(2 * np.pi * x) + np.random.rand(100, 1)
    model = TwoLayerNet(10, 1)
    optimizer = optimizers.MomentumSGD(0.1).setup(model)
    first = None
    for _ in range(1000):
        loss = F.mean_squared_error(y, model(x))
        model.cleargrads()
        loss.backward()
        optimizer.update()
        first = first if first is not None else float(loss.data)
    assert float(loss.data) < 0.5 * first


def test_spiral_mlp_with_dataloader_and_saved_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    max_epoch, batch_size, hidden_size, lr = 30, 30, 10, 1.0
    np.random.seed(0)
    train_set = Spiral(train=True)
    train_loader = DataLoader(train_set, batch_size)
    model = MLP((hidden_size, 3))
    optimizer = optimizers.SGD(lr).setup(model)
    optimizer.add_hook(optimizers.WeightDecay(1e-4))

    if os.path.exists("my_mlp.npz"):
        model.load_weights("my_mlp.npz")  # pragma: no cover - the file does not exist yet

    for _epoch in range(max_epoch):
        sum_loss, sum_acc = 0.0, 0.0
        for x, t in train_loader:
            y = model(x)
            loss = F.softmax_cross_entropy(y, t)
            acc = F.accuracy(y, t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            sum_loss += float(loss.data) * len(t)
            sum_acc += float(acc.data) * len(t)
        avg_loss = sum_loss / len(train_set)
    assert avg_loss < 1.0

    model.save_weights("my_mlp.npz")
    with no_grad():
        y = model(train_set.data)
    restored = MLP((hidden_size, 3))
    restored.load_weights("my_mlp.npz")
    with no_grad():
        y2 = restored(train_set.data)
    np.testing.assert_array_equal(y.data, y2.data)
    assert float(F.accuracy(y2, train_set.label).data) == float(F.accuracy(y, train_set.label).data)


class SimpleRNN(Model):
    def __init__(self, hidden_size, out_size):
        super().__init__()
        self.rnn = L.RNN(hidden_size)
        self.fc = L.Linear(out_size)

    def reset_state(self):
        self.rnn.reset_state()

    def forward(self, x):
        h = self.rnn(x)
        y = self.fc(h)
        return y


def test_rnn_truncated_bptt_on_sin_curve():
    np.random.seed(0)
    train_set = SinCurve(train=True)
    model = SimpleRNN(10, 1)
    optimizer = optimizers.Adam().setup(model)
    bptt_length = 30
    seqlen = 300
    epoch_losses = []
    for _epoch in range(3):
        model.reset_state()
        loss, count, total = 0, 0, 0.0
        for x, t in (train_set[i] for i in range(seqlen)):
            x = x.reshape(1, 1)
            y = model(x)
            loss += F.mean_squared_error(y, t.reshape(1, 1))
            count += 1
            if count % bptt_length == 0 or count == seqlen:
                model.cleargrads()
                loss.backward()
                loss.unchain_backward()
                optimizer.update()
                total += float(loss.data)
                loss = 0
        epoch_losses.append(total)
    assert epoch_losses[-1] < epoch_losses[0]


def test_variables_and_parameters_as_inputs():
    model = MLP((5, 2), activation=F.relu)
    x = Variable(np.random.randn(4, 3).astype(np.float32))
    y = model(x)
    assert isinstance(y, Variable) and y.shape == (4, 2)
    assert len(list(model.params())) == 4


def test_core_simple_gradients_are_arrays_updated_in_place_as_in_steps_28_29():
    # Steps 28-29 take DeZero's simple core (`from dezero.core_simple import Variable`) and update
    # `x.data -= x.grad / f''(x)`: the gradient must be a NumPy array. Newton's method on y = x⁴ - 2x²
    # from x = 2, checked against the same iteration written with NumPy (y' = 4x³ - 4x, y'' = 12x² - 4).
    from xdezero.core_simple import Variable as SimpleVariable
    from xdezero.core_simple import setup_variable

    setup_variable()
    x = SimpleVariable(np.array(2.0))
    expected = np.array(2.0)
    for _ in range(10):
        y = x**4 - 2 * x**2
        x.cleargrad()
        y.backward()
        assert type(x.grad) is np.ndarray
        x.data -= x.grad / (12 * x.data**2 - 4)
        expected = expected - (4 * expected**3 - 4 * expected) / (12 * expected**2 - 4)
        np.testing.assert_allclose(x.data, expected, rtol=1e-15)
    assert repr(x) == f"variable({expected})"


def test_core_simple_accumulates_along_shared_paths_and_frees_intermediate_gradients():
    # y = (x²)² + (x²)²: the square is used twice, so its gradient must be summed before it flows to x;
    # dy/dx = 8x³. Intermediate gradients are dropped unless retain_grad=True.
    from xdezero.core_simple import Variable as SimpleVariable

    x = SimpleVariable(np.array(3.0))
    a = x**2
    y = a**2 + a**2
    y.backward()
    assert x.grad == 8 * 3.0**3
    assert a.grad is None and y.grad is None
    x.cleargrad()
    y = a**2 + a**2
    y.backward(retain_grad=True)
    assert a.grad == 4 * 9.0 and y.grad == 1.0
    assert x.grad == 8 * 3.0**3
    with np.testing.assert_raises_regex(TypeError, "NumPy array"):
        SimpleVariable(1.0)


def test_utils_compare_the_memoryview_of_a_raw_array_with_a_parameter():
    # DeZero's oracle tests compare Chainer's running statistics, raw NumPy arrays whose `.data` is a memoryview,
    # with BatchNorm's Parameters: `array_allclose(cl.avg_mean.data, l.avg_mean.data)`.
    from xdezero.utils import array_allclose, array_equal

    np.random.seed(0)
    x = np.random.randn(20, 10).astype(np.float32)
    bn = L.BatchNorm()
    bn(x)
    expected = 0.1 * x.mean(axis=0)  # decay 0.9 from zeros, computed here by NumPy
    assert array_allclose(expected.data, bn.avg_mean.data)
    assert array_allclose(bn.avg_mean, expected.data)
    assert array_equal(bn.avg_mean.data.copy().data, bn.avg_mean.data)
    assert not array_allclose((expected + 1).data, bn.avg_mean.data)
