"""xdezero.capture: a captured training step gives what eager steps give, records again when it must, and
refuses a step it cannot replay."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import xdezero
import xdezero.functions as F
import xdezero.layers as L
from tests.helpers import asarray, fixture_device, library, to_numpy, train_step
from xdezero import CaptureError, Variable, capture, models, optimizers
from xdezero.backends import library_name

OPTIMIZERS = {
    "SGD": lambda: optimizers.SGD(lr=0.1),
    "MomentumSGD": lambda: optimizers.MomentumSGD(lr=0.1),
    "Adam": lambda: optimizers.Adam(alpha=0.01),
}


class SmallCNN(models.Model):
    def __init__(self):
        super().__init__()
        self.conv1 = L.Conv2d(4, kernel_size=3, pad=1, in_channels=1)
        self.conv2 = L.Conv2d(6, kernel_size=3, pad=1, in_channels=4)
        self.fc = L.Linear(3, in_size=6 * 4 * 4)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = F.pooling(h, 2, 2)
        return self.fc(F.reshape(h, (h.shape[0], -1)))


class DropoutMLP(models.Model):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = L.Linear(16, in_size=2), L.Linear(3, in_size=16)

    def forward(self, x):
        return self.l2(F.dropout(F.sigmoid(self.l1(x)), 0.3))


MODELS = {
    "mlp": (lambda: models.MLP((10, 3), activation=F.sigmoid), (2,)),
    "cnn": (SmallCNN, (1, 8, 8)),
    "dropout": (DropoutMLP, (2,)),
}


def _setup(xp, model_name: str, optimizer_name: str):
    """A model (weights drawn from NumPy's global generator, then moved to xp) and its step function."""
    make, in_shape = MODELS[model_name]
    np.random.seed(0)
    model = make()
    model(np.zeros((1, *in_shape), dtype=np.float32))  # lazily shaped layers draw their weights now
    if library(xp) != "numpy":
        model.to_library(library(xp), device=fixture_device(xp))
    return model, train_step(model, OPTIMIZERS[optimizer_name]().setup(model))


def _batches(xp, model_name: str, n: int = 20, batch: int = 12):
    in_shape = MODELS[model_name][1]
    rng = np.random.default_rng(1)
    return [
        (
            asarray(xp, rng.standard_normal((batch, *in_shape)).astype(np.float32)),
            asarray(xp, rng.integers(0, 3, batch)),
        )
        for _ in range(n)
    ]


def _run_both(xp, model_name: str, optimizer_name: str, batches):
    eager_model, eager_step = _setup(xp, model_name, optimizer_name)
    captured_model, step = _setup(xp, model_name, optimizer_name)
    captured = capture(step)
    eager_losses, captured_losses = [], []
    for x, t in batches:
        np.random.seed(len(eager_losses))  # dropout draws its masks from NumPy's generator: the same for both
        eager_losses.append(to_numpy(eager_step(x, t)))
        np.random.seed(len(captured_losses))
        captured_losses.append(to_numpy(captured(x, t)))
    return eager_model, captured_model, captured, eager_losses, captured_losses


def _assert_same(xp, eager, captured):
    if library(xp) == "numpy":
        np.testing.assert_array_equal(eager, captured)  # the same code on the same arrays
    else:
        np.testing.assert_allclose(eager, captured, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_twenty_captured_steps_equal_eager_steps(xp, model_name, optimizer_name):
    if model_name == "dropout" and library(xp) != "numpy":
        pytest.skip("dropout masks of other libraries come from generators the two runs do not share")
    batches = _batches(xp, model_name)
    eager_model, captured_model, captured, eager_losses, captured_losses = _run_both(
        xp, model_name, optimizer_name, batches
    )
    assert captured.recorded == 1  # replayed from the third call on
    for e, c in zip(eager_losses, captured_losses):
        _assert_same(xp, e, c)
    for p, q in zip(eager_model.params(), captured_model.params()):
        _assert_same(xp, to_numpy(p.data), to_numpy(q.data))
        _assert_same(xp, to_numpy(p.grad), to_numpy(q.grad))  # the gradients a replay leaves behind


def test_the_loss_of_a_replay_is_a_plain_variable():
    _, step = _setup(np, "mlp", "SGD")
    captured = capture(step)
    x, t = _batches(np, "mlp", n=1)[0]
    for _ in range(3):
        loss = captured(x, t)
    assert isinstance(loss, Variable) and loss.creator is None and loss.shape == ()


def test_a_new_shape_or_config_records_again():
    _, step = _setup(np, "mlp", "SGD")
    captured = capture(step)
    small, large = _batches(np, "mlp", n=3, batch=12), _batches(np, "mlp", n=3, batch=7)
    for x, t in small + large:
        captured(x, t)
    assert captured.recorded == 2
    with xdezero.test_mode():
        for x, t in small:
            captured(x, t)
    assert captured.recorded == 3


def test_replay_matches_eager_across_shape_changes():
    batches = _batches(np, "mlp", n=4, batch=12) + _batches(np, "mlp", n=4, batch=5) + _batches(np, "mlp", n=4)
    _, _, _, eager_losses, captured_losses = _run_both(np, "mlp", "MomentumSGD", batches)
    np.testing.assert_array_equal(eager_losses, captured_losses)


def test_branching_on_array_values_is_refused():
    model, _ = _setup(np, "mlp", "SGD")

    def step(x, t):
        y = model(x)
        if float(x.sum()) > 0:  # Python control flow on a value: a replay cannot follow it
            y = F.sigmoid(y)
        return F.softmax_cross_entropy(y, t)

    captured = capture(step)
    x = np.ones((4, 2), dtype=np.float32)
    captured(x * 5, np.zeros(4, dtype=np.int64))
    with pytest.raises(CaptureError, match=r"operation \d+ was .* the first time and .* the second|operations the"):
        captured(x * -5, np.zeros(4, dtype=np.int64))


def test_arrays_computed_outside_functions_are_refused():
    model, _ = _setup(np, "mlp", "SGD")

    def step(x, t):
        doubled = x * 2  # NumPy, not an xdezero function: a replay would reuse the first array
        return F.softmax_cross_entropy(model(doubled), t)

    captured = capture(step)
    x, t = _batches(np, "mlp", n=2)[0]
    captured(x, t)
    with pytest.raises(CaptureError, match=r"input 0 of operation 0 \(Linear\) is an array that changed"):
        captured(x + 1, t)


def test_a_step_returning_a_number_is_refused():
    model, _ = _setup(np, "mlp", "SGD")
    captured = capture(lambda x, t: float(F.softmax_cross_entropy(model(x), t).data))
    x, t = _batches(np, "mlp", n=1)[0]
    with pytest.raises(CaptureError, match="must return Variables or arrays"):
        captured(x, t)


def test_gradients_replaced_outside_the_recorded_ops_are_refused():
    model, _ = _setup(np, "mlp", "SGD")
    optimizer = optimizers.SGD(lr=0.1).setup(model)

    def step(x, t):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        for p in model.params():
            p.grad = Variable(p.grad.data / 2)  # what a communicator's allreduce_grad does
        optimizer.update()
        return loss

    x, t = _batches(np, "mlp", n=1)[0]
    with pytest.raises(CaptureError, match="replaced with an array not computed by xdezero"):
        capture(step)(x, t)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="expected a function"):
        capture(3)
    _, step = _setup(np, "mlp", "SGD")
    x, _ = _batches(np, "mlp", n=1)[0]
    with pytest.raises(TypeError, match="arrays, Variables or hashable values, got list"):
        capture(step)(x, [0, 1])


def test_a_captured_step_holds_no_more_memory_than_eager_steps():
    batches = _batches(np, "cnn", n=6, batch=32)

    def held_after(steps) -> int:
        tracemalloc.start()
        try:
            kept = [steps(x, t) for x, t in batches]  # the caller keeps every returned loss
            current, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(kept) == len(batches)
        return current

    _, eager = _setup(np, "cnn", "SGD")
    _, step = _setup(np, "cnn", "SGD")
    captured = capture(step)
    eager_bytes = held_after(eager)
    captured_bytes = held_after(captured)
    assert captured_bytes <= eager_bytes, (captured_bytes, eager_bytes)


def test_decorator_form_and_name():
    @capture
    def train_step(x, t):
        return F.sum(x * t)

    assert train_step.__name__ == "train_step"
    x = np.ones(3)
    for _ in range(3):
        np.testing.assert_array_equal(train_step(x, x + 1).data, 6.0)


def test_in_place_parameter_updates_are_refused():
    """DeZero's early training loops update parameters by hand: a replay would not repeat that."""
    model, _ = _setup(np, "mlp", "SGD")

    def step(x, t):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        for p in model.params():
            p.data -= 0.1 * p.grad.data
        return loss

    x, t = _batches(np, "mlp", n=1)[0]
    with pytest.raises(CaptureError, match=r"changed in place \(p.data -= lr \* p.grad.data\) not computed by xdezero"):
        capture(step)(x, t)


def test_assigning_parameter_data_computed_outside_functions_is_refused():
    model, _ = _setup(np, "mlp", "SGD")

    def step(x, t):
        loss = F.softmax_cross_entropy(model(x), t)
        model.l1.b.data = model.l1.b.data * 0.5  # NumPy arithmetic on the data, then an assignment
        return loss

    x, t = _batches(np, "mlp", n=1)[0]
    with pytest.raises(CaptureError, match="was assigned an array not computed by xdezero"):
        capture(step)(x, t)


class BatchNormMLP(models.Model):
    def __init__(self):
        super().__init__()
        self.l1, self.bn, self.l2 = L.Linear(16, in_size=2), L.BatchNorm(), L.Linear(3, in_size=16)

    def forward(self, x):
        return self.l2(F.relu(self.bn(self.l1(x))))


def test_batch_norm_running_statistics_follow_replays_and_test_mode_reads_them():
    MODELS["batchnorm"] = (BatchNormMLP, (2,))
    try:
        batches = _batches(np, "batchnorm", n=12)
        eager_model, captured_model, _, eager_losses, captured_losses = _run_both(np, "batchnorm", "SGD", batches)
    finally:
        del MODELS["batchnorm"]
    np.testing.assert_array_equal(eager_losses, captured_losses)
    for name in ("avg_mean", "avg_var"):
        np.testing.assert_array_equal(getattr(eager_model.bn, name).data, getattr(captured_model.bn, name).data)
    evaluate = capture(lambda x: captured_model(x))
    x = batches[0][0]
    with xdezero.test_mode():
        for _ in range(3):
            evaluate(x)
        captured_model.bn.avg_mean.data = captured_model.bn.avg_mean.data + 1.0  # the statistics move on
        got = evaluate(x)  # a replay: it must read the statistics as they are now
        np.testing.assert_array_equal(got.data, captured_model(x).data)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_parameters_made_with_numpy_follow_the_first_input_while_recording(xp, model_name):
    """A layer moves its NumPy-made parameters to the library of its first input (as `xdezero train --backend
    cupy --capture` relies on): while recording, that move is a placement, not an assignment to refuse."""
    if library(xp) == "numpy":
        pytest.skip("the parameters are NumPy's already: nothing moves")
    steps = []
    for _ in range(2):
        np.random.seed(0)
        model = (
            SmallCNN() if model_name == "cnn" else models.Sequential(L.Linear(10, in_size=2), L.Linear(3, in_size=10))
        )
        steps.append((model, train_step(model, optimizers.SGD(lr=0.1).setup(model))))
    (eager_model, eager), (captured_model, step) = steps
    captured = capture(step)
    for x, t in _batches(xp, model_name, n=5):
        _assert_same(xp, to_numpy(eager(x, t)), to_numpy(captured(x, t)))
    assert captured.recorded == 1
    for p, q in zip(eager_model.params(), captured_model.params()):
        assert library_name(q.data) == library(xp)  # moved by the first captured call
        _assert_same(xp, to_numpy(p.data), to_numpy(q.data))


def test_lazily_shaped_parameters_created_while_recording():
    eager_model = models.MLP((10, 3), activation=F.sigmoid)  # no weights until the first input
    lazy_model = models.MLP((10, 3), activation=F.sigmoid)
    eager = train_step(eager_model, optimizers.SGD(lr=0.1).setup(eager_model))
    captured = capture(train_step(lazy_model, optimizers.SGD(lr=0.1).setup(lazy_model)))
    for x, t in _batches(np, "mlp", n=6):
        np.random.seed(0)  # the first call draws the weights: the same for both
        expected = eager(x, t).data
        np.random.seed(0)
        np.testing.assert_array_equal(expected, captured(x, t).data)
    for p, q in zip(eager_model.params(), lazy_model.params()):
        np.testing.assert_array_equal(p.data, q.data)


def test_a_recurrent_step_carrying_its_state_is_refused():
    """An RNN keeps its hidden state in the layer between calls (Python state a replay would not update):
    truncated BPTT runs eagerly."""
    np.random.seed(0)
    rnn, fc = L.RNN(8, in_size=1), L.Linear(1, in_size=8)

    def step(x, t):
        return F.mean_squared_error(fc(rnn(x)), t)

    captured = capture(step)
    x = np.ones((1, 1))
    captured(x, x)
    with pytest.raises(
        CaptureError, match=r"cannot be replayed: it ran \d+ operations the first time and \d+ the second"
    ):
        captured(x, x)


class BagOfEmbeddings(models.Model):
    """Mean of the embeddings of a row's ids, then a linear layer: ids are a step argument."""

    def __init__(self):
        super().__init__()
        self.embed = L.EmbedID(20, 4)
        self.fc = L.Linear(3, in_size=4)

    def forward(self, ids):
        return self.fc(F.sum(self.embed(ids), axis=1) / ids.shape[1])


def _embedding_batches(xp, n: int = 20):
    rng = np.random.default_rng(2)
    return [(asarray(xp, rng.integers(0, 20, (6, 5))), asarray(xp, rng.integers(0, 3, 6))) for _ in range(n)]


@pytest.mark.parametrize("optimizer_name", ["SGD", "Adam"])
def test_embed_id_with_new_ids_every_step_is_replayed(xp, optimizer_name):
    models_and_steps = []
    for _ in range(2):
        np.random.seed(0)
        model = BagOfEmbeddings()
        if library(xp) != "numpy":
            model.to_library(library(xp), device=fixture_device(xp))
        models_and_steps.append((model, train_step(model, OPTIMIZERS[optimizer_name]().setup(model))))
    (eager_model, eager), (captured_model, step) = models_and_steps
    captured = capture(step)
    for ids, t in _embedding_batches(xp):
        _assert_same(xp, to_numpy(eager(ids, t)), to_numpy(captured(ids, t)))
    assert captured.recorded == 1  # the ids are read from each call's arguments, not fixed in the op
    for p, q in zip(eager_model.params(), captured_model.params()):
        _assert_same(xp, to_numpy(p.data), to_numpy(q.data))


def test_a_replayed_embed_id_still_checks_its_ids():
    np.random.seed(0)
    model = BagOfEmbeddings()
    captured = capture(train_step(model, optimizers.SGD(lr=0.1).setup(model)))
    batches = _embedding_batches(np)
    for ids, t in batches[:3]:
        captured(ids, t)
    bad = batches[3][0].copy()
    bad[0, 0] = 20  # one past the vocabulary
    with pytest.raises(ValueError, match="embed_id"):
        captured(bad, batches[3][1])
    bad[0, 0] = -1  # NumPy's take would read the last row: refused as in eager calls
    with pytest.raises(ValueError, match="embed_id"):
        captured(bad, batches[3][1])


def test_rows_picked_by_an_index_argument_are_replayed_with_each_calls_rows(xp):
    """x[rows] with `rows` an argument of the step: the index and its backward's scatter follow each call."""
    np.random.seed(0)
    eager_model, captured_model = (models.MLP((5, 3), activation=F.sigmoid) for _ in range(2))
    for model in (eager_model, captured_model):
        model(np.zeros((1, 2), dtype=np.float32))
        if library(xp) != "numpy":
            model.to_library(library(xp), device=fixture_device(xp))

    def step_of(model, optimizer):
        def step(x, t, rows):
            loss = F.softmax_cross_entropy(model(x)[rows], t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            return loss

        return step

    for p, q in zip(eager_model.params(), captured_model.params()):
        q.data = p.data  # the same starting weights (arrays are rebound by the updates, never written into)
    eager = step_of(eager_model, optimizers.SGD(lr=0.1).setup(eager_model))
    captured = capture(step_of(captured_model, optimizers.SGD(lr=0.1).setup(captured_model)))
    rng = np.random.default_rng(3)
    for x, _ in _batches(xp, "mlp", n=8):
        rows = asarray(xp, rng.integers(0, 12, 7))  # repeated rows accumulate in backward
        t = asarray(xp, rng.integers(0, 3, 7))
        _assert_same(xp, to_numpy(eager(x, t, rows)), to_numpy(captured(x, t, rows)))
    assert captured.recorded == 1
    for p, q in zip(eager_model.params(), captured_model.params()):
        _assert_same(xp, to_numpy(p.data), to_numpy(q.data))
