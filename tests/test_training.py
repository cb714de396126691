"""End-to-end training: an MLP learns the spiral data set, a small CNN step reduces its loss, on every backend."""

from __future__ import annotations

import numpy as np

import xdezero.functions as F
from tests.helpers import asarray, library, to_numpy
from xdezero import models, no_grad, test_mode
from xdezero import optimizers as O
from xdezero.backends import library_name
from xdezero.datasets import get_spiral
from xdezero.layers import BatchNorm, Conv2d, Linear


def test_spiral_mlp_reaches_95_percent(xp):
    # Full-batch Adam: about 0.98 after 200 steps from seed 0 (0.95 is reached near step 150).
    x_np, t_np = get_spiral(train=True)
    x, t = asarray(xp, x_np), asarray(xp, t_np)
    np.random.seed(0)
    model = models.MLP((100, 3), activation=F.sigmoid)
    optimizer = O.Adam(alpha=0.1).setup(model)
    first_loss = None
    for _ in range(200):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        optimizer.update()
        first_loss = first_loss if first_loss is not None else float(to_numpy(loss))
    with no_grad():
        y = model(x)
    accuracy = float(np.mean(np.argmax(to_numpy(y), axis=1) == t_np))
    assert accuracy >= 0.95, f"training accuracy {accuracy:.3f} (loss {first_loss:.3f} -> {float(to_numpy(loss)):.3f})"
    assert all(library_name(p.data) == library(xp) for p in model.params())
    assert all(to_numpy(p).dtype == np.float32 for p in model.params())


class SmallCNN(models.Model):
    def __init__(self):
        super().__init__()
        self.conv = Conv2d(4, kernel_size=3, pad=1)
        self.bn = BatchNorm()
        self.fc = Linear(3)

    def forward(self, x):
        h = F.pooling(F.relu(self.bn(self.conv(x))), 2, 2)
        return self.fc(F.reshape(h, (h.shape[0], -1)))


def test_small_cnn_step_reduces_loss(xp):
    rng = np.random.default_rng(0)
    x = asarray(xp, rng.standard_normal((8, 1, 6, 6)).astype(np.float32))
    t = asarray(xp, rng.integers(0, 3, size=8))
    np.random.seed(0)
    model = SmallCNN()
    optimizer = O.SGD(lr=0.1).setup(model)
    losses = []
    for _ in range(3):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        optimizer.update()
        losses.append(float(to_numpy(loss)))
    assert losses[2] < losses[1] < losses[0]
    assert model.conv.W.grad is not None and to_numpy(model.conv.W.grad).dtype == np.float32
    with test_mode(), no_grad():
        assert model(x).shape == (8, 3)
