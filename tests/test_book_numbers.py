"""With NumPy arrays, the book's training loops print DeZero's numbers.

Each loop below is written once, as the book writes it, and run on DeZero 0.0.13 (the oracle, skipped when it
is not installed) and on xdezero, from the same `np.random.seed`: weight initialisation, dropout masks,
DataLoader shuffling and the data sets all draw from NumPy's global generator in DeZero's order, so the losses
printed epoch by epoch agree. (DeZero's weights come out float64 under NumPy 2, xdezero's float32: the
numbers agree to float32 rounding, well inside rtol 1e-4.)
"""

from __future__ import annotations

import gzip
import importlib
import math
from types import SimpleNamespace

import numpy as np
import pytest

from tests.dezero_oracle import dezero_module, numpy_int_alias

RTOL = 1e-4


def _namespace(root: str) -> SimpleNamespace:
    if root == "dezero":
        dezero_module()
    top = importlib.import_module(root)
    parts = {name: importlib.import_module(f"{root}.{name}") for name in ("functions", "layers", "models")}
    parts.update({name: importlib.import_module(f"{root}.{name}") for name in ("optimizers", "datasets")})
    return SimpleNamespace(
        top=top,
        F=parts["functions"],
        L=parts["layers"],
        models=parts["models"],
        optimizers=parts["optimizers"],
        datasets=parts["datasets"],
        DataLoader=top.DataLoader,
        SeqDataLoader=top.SeqDataLoader,
    )


def _both(loop, *args):
    lib = _namespace("dezero")
    with numpy_int_alias():
        theirs = loop(lib, *args)
    ours = loop(_namespace("xdezero"), *args)
    assert len(ours) == len(theirs)
    np.testing.assert_allclose(ours, theirs, rtol=RTOL)
    return ours


def spiral_by_hand(lib, epochs=3, batch_size=30, lr=1.0):
    """Steps 48: the spiral, shuffled by hand with np.random.permutation each epoch."""
    np.random.seed(0)
    x, t = lib.datasets.get_spiral(train=True)
    model = lib.models.MLP((10, 3))
    optimizer = lib.optimizers.SGD(lr).setup(model)
    data_size = len(x)
    max_iter = math.ceil(data_size / batch_size)
    printed = []
    for _ in range(epochs):
        index = np.random.permutation(data_size)
        sum_loss = 0.0
        for i in range(max_iter):
            batch = index[i * batch_size : (i + 1) * batch_size]
            y = model(x[batch])
            loss = lib.F.softmax_cross_entropy(y, t[batch])
            model.cleargrads()
            loss.backward()
            optimizer.update()
            sum_loss += float(loss.data) * len(batch)
        printed.append(sum_loss / data_size)
    return printed


def spiral_with_dataloader(lib, epochs=3, batch_size=30, lr=1.0):
    """Step 50: Spiral data sets, DataLoader, training loss and accuracy, test loss and accuracy."""
    np.random.seed(0)
    train_set, test_set = lib.datasets.Spiral(train=True), lib.datasets.Spiral(train=False)
    train_loader = lib.DataLoader(train_set, batch_size)
    test_loader = lib.DataLoader(test_set, batch_size, shuffle=False)
    model = lib.models.MLP((10, 3))
    optimizer = lib.optimizers.SGD(lr).setup(model)
    printed = []
    for _ in range(epochs):
        sums = [0.0, 0.0]
        for x, t in train_loader:
            y = model(x)
            loss = lib.F.softmax_cross_entropy(y, t)
            acc = lib.F.accuracy(y, t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            sums[0] += float(loss.data) * len(t)
            sums[1] += float(acc.data) * len(t)
        printed += [s / len(train_set) for s in sums]
        sums = [0.0, 0.0]
        with lib.top.no_grad():
            for x, t in test_loader:
                y = model(x)
                sums[0] += float(lib.F.softmax_cross_entropy(y, t).data) * len(t)
                sums[1] += float(lib.F.accuracy(y, t).data) * len(t)
        printed += [s / len(test_set) for s in sums]
    return printed


def spiral_with_dropout(lib, epochs=3, batch_size=30):
    """An MLP with dropout after each hidden layer, trained with Adam through a DataLoader."""
    np.random.seed(0)
    train_set = lib.datasets.Spiral(train=True)
    loader = lib.DataLoader(train_set, batch_size)
    F, L = lib.F, lib.L

    class Net(lib.top.Model):
        def __init__(self):
            super().__init__()
            self.l1 = L.Linear(20)
            self.l2 = L.Linear(20)
            self.l3 = L.Linear(3)

        def forward(self, x):
            x = F.dropout(F.relu(self.l1(x)), 0.3)
            x = F.dropout(F.relu(self.l2(x)), 0.3)
            return self.l3(x)

    model = Net()
    optimizer = lib.optimizers.Adam(0.01).setup(model)
    printed = []
    for _ in range(epochs):
        total = 0.0
        for x, t in loader:
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            total += float(loss.data) * len(t)
        printed.append(total / len(train_set))
    with lib.top.test_mode():
        printed.append(float(F.softmax_cross_entropy(model(train_set.data), train_set.label).data))
    return printed


def rnn_on_sin_curve(lib, epochs=2, bptt_length=30, cell="RNN"):
    """Step 59 (RNN) and a step 60-like LSTM: one example at a time, truncated backprop every 30 steps, Adam;
    the loss compares a (1, 1) prediction with a (1,) target, as the book does."""
    np.random.seed(0)
    train_set = lib.datasets.SinCurve(train=True)
    L = lib.L

    class SimpleRNN(lib.top.Model):
        def __init__(self, hidden_size, out_size):
            super().__init__()
            self.rnn = getattr(L, cell)(hidden_size)
            self.fc = L.Linear(out_size)

        def reset_state(self):
            self.rnn.reset_state()

        def forward(self, x):
            return self.fc(self.rnn(x))

    model = SimpleRNN(10, 1)
    optimizer = lib.optimizers.Adam().setup(model)
    seqlen = len(train_set)
    printed = []
    for _ in range(epochs):
        model.reset_state()
        loss, count = 0, 0
        for i in range(seqlen):
            x, t = train_set[i]
            loss += lib.F.mean_squared_error(model(x.reshape(1, 1)), t)
            count += 1
            if count % bptt_length == 0 or count == seqlen:
                model.cleargrads()
                loss.backward()
                loss.unchain_backward()
                optimizer.update()
        printed.append(float(loss.data) / count)
    return printed


def lstm_with_seq_dataloader(lib, epochs=2, batch_size=10, bptt_length=10):
    """Step 60: SeqDataLoader batches through an LSTM."""
    np.random.seed(0)
    train_set = lib.datasets.SinCurve(train=True)
    loader = lib.SeqDataLoader(train_set, batch_size=batch_size)
    L = lib.L

    class BetterRNN(lib.top.Model):
        def __init__(self):
            super().__init__()
            self.rnn = L.LSTM(10)
            self.fc = L.Linear(1)

        def forward(self, x):
            return self.fc(self.rnn(x))

    model = BetterRNN()
    optimizer = lib.optimizers.Adam().setup(model)
    printed = []
    for _ in range(epochs):
        model.rnn.reset_state()
        loss, count = 0, 0
        for x, t in loader:
            loss += lib.F.mean_squared_error(model(x), t)
            count += 1
            if count % bptt_length == 0 or count == len(loader.index):
                model.cleargrads()
                loss.backward()
                loss.unchain_backward()
                optimizer.update()
        printed.append(float(loss.data) / count)
    return printed


def test_spiral_by_hand():
    losses = _both(spiral_by_hand)
    assert losses[-1] < losses[0]


def test_spiral_with_dataloader():
    _both(spiral_with_dataloader)


def test_dropout():
    _both(spiral_with_dropout)


@pytest.mark.parametrize("cell", ["RNN", "LSTM"])
def test_rnn_on_sin_curve(cell):
    _both(rnn_on_sin_curve, 2, 30, cell)


def test_lstm_with_seq_dataloader():
    _both(lstm_with_seq_dataloader)


# --- MNIST-format data ----------------------------------------------------------------------------------


def _idx_gz(path, array):
    """An unsigned-byte IDX file (MNIST's format), gzipped: magic 0x0000080N, N big-endian sizes, the bytes."""
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    """300 training and 100 test images in MNIST's files, where both DeZero and xdezero look for them."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = rng.integers(0, 10, size=n)
        # Learnable: a bright square whose position depends on the label, plus noise.
        images = rng.integers(0, 60, size=(n, 28, 28))
        for k, label in enumerate(labels):
            r, c = divmod(int(label), 4)
            images[k, 4 + 6 * r : 10 + 6 * r, 2 + 6 * c : 8 + 6 * c] = 250
        _idx_gz(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _idx_gz(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("XDEZERO_DATA_DIR", str(tmp_path))
    if importlib.util.find_spec("dezero") is not None:
        monkeypatch.setattr(dezero_module("utils"), "cache_dir", str(tmp_path))
    return tmp_path


def mnist_mlp(lib, epochs=2, batch_size=50):
    """Step 51: an MLP on MNIST through DataLoaders, SGD, test accuracy each epoch."""
    np.random.seed(0)
    train_set, test_set = lib.datasets.MNIST(train=True), lib.datasets.MNIST(train=False)
    train_loader = lib.DataLoader(train_set, batch_size)
    test_loader = lib.DataLoader(test_set, batch_size, shuffle=False)
    model = lib.models.MLP((100, 10), activation=lib.F.relu)
    optimizer = lib.optimizers.SGD(0.1).setup(model)
    printed = []
    for _ in range(epochs):
        total = 0.0
        for x, t in train_loader:
            loss = lib.F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            total += float(loss.data) * len(t)
        printed.append(total / len(train_set))
        correct = 0.0
        with lib.top.no_grad():
            for x, t in test_loader:
                correct += float(lib.F.accuracy(model(x), t).data) * len(t)
        printed.append(correct / len(test_set))
    return printed


def test_mnist_mlp(small_mnist):
    printed = _both(mnist_mlp)
    assert printed[-1] > 0.5  # the data can be learnt: the comparison is not between two failures
