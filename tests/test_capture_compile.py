"""Captured steps compiled by their library (xdezero.tapes.compile): on JAX arrays, the replay as one `jax.jit`
function. Each is checked against the same code run eagerly on a twin model (XLA fuses operations, so the
numbers agree to float32 rounding, not bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
import xdezero.layers as L
from tests.helpers import train_step
from xdezero import capture, models, optimizers
from xdezero.backends import seed

jax = pytest.importorskip("jax", reason="compiling a captured step is JAX's (pip install jax)")
jnp = jax.numpy

OPTIMIZERS = {
    "SGD": lambda: optimizers.SGD(lr=0.1),
    "MomentumSGD": lambda: optimizers.MomentumSGD(lr=0.1),
    "AdaGrad": lambda: optimizers.AdaGrad(),
    "AdaDelta": lambda: optimizers.AdaDelta(),
    "Adam": lambda: optimizers.Adam(),
}


def _twin(optimizer: str = "SGD", dropout: bool = False):
    np.random.seed(0)
    model = models.MLP((16, 3))
    model(np.zeros((1, 2), np.float32))
    model.to_library("jax")
    opt = OPTIMIZERS[optimizer]().setup(model)
    loss = (lambda h, t: F.softmax_cross_entropy(F.dropout(h, 0.3), t)) if dropout else None
    return model, opt, train_step(model, opt, loss)


def _batches(n: int, batch: int = 20):
    rng = np.random.default_rng(1)
    return [
        (jnp.asarray(rng.standard_normal((batch, 2)).astype(np.float32)), jnp.asarray(rng.integers(0, 3, batch)))
        for _ in range(n)
    ]


def _assert_close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_compiled_step_gives_the_eager_numbers(optimizer):
    me, oe, eager = _twin(optimizer)
    mc, oc, step = _twin(optimizer)
    captured = capture(step)
    for x, t in _batches(8):
        _assert_close(captured(x, t).data, eager(x, t).data)
        for p, q in zip(me.params(), mc.params()):
            _assert_close(q.data, p.data)
    assert captured.graphs == 1 and captured.graph_notes == [], captured.graph_notes
    assert getattr(oc, "t", None) == getattr(oe, "t", None)  # Adam's step count, passed in and out


def test_an_embedding_step_compiles_and_gives_the_eager_numbers():
    """The gradient of `embed_id` scatters into fresh zeros, which a traced value cannot place by its device."""

    def twin():
        np.random.seed(0)
        model = models.Sequential(L.EmbedID(10, 4), L.Linear(3, in_size=4))
        model.to_library("jax")
        return model, train_step(model, optimizers.SGD(lr=0.1).setup(model))

    (me, eager), (mc, step) = twin(), twin()
    captured = capture(step)
    rng = np.random.default_rng(2)
    for _ in range(6):
        ids, t = jnp.asarray(rng.integers(0, 10, 12)), jnp.asarray(rng.integers(0, 3, 12))
        _assert_close(captured(ids, t).data, eager(ids, t).data)
        for p, q in zip(me.params(), mc.params()):
            _assert_close(q.data, p.data)
    assert captured.graphs == 1 and captured.graph_notes == [], captured.graph_notes


def test_a_new_learning_rate_is_traced_again():
    me, oe, eager = _twin("MomentumSGD")
    mc, oc, step = _twin("MomentumSGD")
    captured = capture(step)
    for k, (x, t) in enumerate(_batches(8)):
        if k == 5:
            oe.lr = oc.lr = 0.02
        _assert_close(captured(x, t).data, eager(x, t).data)
    for p, q in zip(me.params(), mc.params()):
        _assert_close(q.data, p.data)
    assert captured.graphs == 1


def test_a_step_that_draws_random_numbers_replays_plainly_and_says_why():
    me, _, eager = _twin("SGD", dropout=True)
    mc, _, step = _twin("SGD", dropout=True)
    captured = capture(step)
    for k, (x, t) in enumerate(_batches(6)):
        seed(k)
        le = eager(x, t)
        seed(k)
        _assert_close(captured(x, t).data, le.data)
    assert captured.graphs == 0
    (note,) = captured.graph_notes
    assert "draws random numbers" in note
    for p, q in zip(me.params(), mc.params()):
        _assert_close(q.data, p.data)


def test_a_step_that_reads_a_value_on_the_host_replays_plainly_and_says_why():
    _, _, eager = _twin()
    _, _, step = _twin()
    seen = []

    def reading(x, t):
        loss = step(x, t)
        seen.append(float(loss.data))  # only while recording: a replay runs no Python of the step
        return loss

    captured = capture(reading)
    for x, t in _batches(5):
        _assert_close(captured(x, t).data, eager(x, t).data)
    assert captured.graphs == 1  # the float() ran while recording, not in the replay: nothing stops the trace


def test_labels_out_of_range_are_refused_before_anything_is_updated():
    mc, _, step = _twin()
    captured = capture(step)
    batches = _batches(4)
    for x, t in batches:
        captured(x, t)
    before = [np.asarray(p.data).copy() for p in mc.params()]
    x, t = batches[0]
    with pytest.raises((IndexError, ValueError), match="3"):
        captured(x, t.at[0].set(3))
    for p, b in zip(mc.params(), before):
        np.testing.assert_array_equal(np.asarray(p.data), b)


def test_compiling_can_be_turned_off():
    _, _, step = _twin()
    captured = capture(step, compiled=False)
    for x, t in _batches(4):
        captured(x, t)
    assert captured.recorded == 1 and captured.graphs == 0 and captured.graph_notes == []
    with pytest.raises(TypeError, match="compiled must be True or False"):
        capture(step, compiled="yes")
