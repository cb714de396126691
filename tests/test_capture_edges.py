"""xdezero.capture at its edges: Variables as arguments, numbers read from a batch, gradients carried between
calls, threads, a captured forward pass, flags changed after capture, aliased arguments, and many signatures.
Each captured run is checked against the same code run eagerly (two models from the same seed)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import train_step
from xdezero import CaptureError, Variable, capture, models, optimizers


def _model(seed: int = 0):
    np.random.seed(seed)
    model = models.MLP((10, 3), activation=F.sigmoid)
    model(np.zeros((1, 2), np.float32))
    return model, optimizers.SGD(lr=0.1).setup(model)


def _batches(n: int, batch: int = 12, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 2)).astype(np.float32), rng.integers(0, 3, batch)) for _ in range(n)]


def _same_params(a, b) -> bool:
    return all(np.array_equal(p.data, q.data) for p, q in zip(a.params(), b.params()))


def test_a_variable_argument_gets_its_gradient_on_every_call():
    (me, oe), (mc, oc) = _model(), _model()
    eager, captured = train_step(me, oe), capture(train_step(mc, oc))
    for x, t in _batches(5):
        xe, xc = Variable(x), Variable(x.copy())
        le, lc = eager(xe, t), captured(xc, t)
        assert xc.grad is not None, "the argument's gradient was not set"
        np.testing.assert_array_equal(xc.grad.data, xe.grad.data)
        np.testing.assert_array_equal(lc.data, le.data)
    assert captured.recorded == 1 and _same_params(me, mc)


def test_a_number_computed_from_the_batch_is_refused_with_the_call_complete():
    (me, oe), (mc, oc) = _model(), _model()

    def make(model, optimizer):
        def step(x, t, w):
            per_row = F.sum(model(x), axis=1) * Variable(w, requires_grad=False)
            loss = F.sum(per_row) / w.sum()  # a NumPy number: fixed in a replay
            model.cleargrads()
            loss.backward()
            optimizer.update()
            return loss

        return step

    eager, captured = make(me, oe), capture(make(mc, oc))
    (x, t), (x2, t2) = _batches(2)
    w1, w2 = np.ones(12, np.float32), np.full(12, 2.0, np.float32)
    eager(x, t, w1)
    captured(x, t, w1)
    expected = eager(x2, t2, w2)
    with pytest.raises(CaptureError, match=r"built with different constants \(c .*12.0.* then .*24.0") as caught:
        captured(x2, t2, w2)
    np.testing.assert_array_equal(caught.value.result.data, expected.data)  # the call ran, completely
    assert _same_params(me, mc)


def test_gradients_accumulated_over_calls_match_eager():
    """The step only adds gradients; the loop updates and clears every third call: the step starts from
    gradients present or absent, and each of the two gets its own tape."""
    (me, oe), (mc, oc) = _model(), _model()

    def make(model):
        def step(x, t):
            loss = F.softmax_cross_entropy(model(x), t)
            loss.backward()
            return loss

        return step

    eager, captured = make(me), capture(make(mc))
    for i, (x, t) in enumerate(_batches(12)):
        np.testing.assert_array_equal(captured(x, t).data, eager(x, t).data)
        if i % 3 == 2:
            for model, optimizer in ((me, oe), (mc, oc)):
                optimizer.update()
                model.cleargrads()
    assert _same_params(me, mc)
    assert captured.recorded == 2


def test_two_threads_record_their_own_steps_at_the_same_time():
    pairs = [(_model(seed), _model(seed)) for seed in (0, 1)]
    batches = _batches(6)
    barrier = threading.Barrier(2)
    errors = []

    def run(k):
        (me, oe), (mc, oc) = pairs[k]
        eager, captured = train_step(me, oe), capture(train_step(mc, oc))
        try:
            for x, t in batches:
                barrier.wait(timeout=10)  # both threads inside their steps together, recording included
                np.testing.assert_array_equal(captured(x, t).data, eager(x, t).data)
        except Exception as e:  # reported in the main thread
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(_same_params(me, mc) for (me, _), (mc, _) in pairs)


def test_backward_on_a_replayed_forward_is_refused_clearly():
    model, _ = _model()
    forward = capture(lambda x, t: F.softmax_cross_entropy(model(x), t))
    for call, (x, t) in enumerate(_batches(4)):
        loss = forward(x, t)
        model.cleargrads()
        if call < 2:  # the recording calls return the eager result, graph included
            loss.backward()
            assert all(p.grad is not None for p in model.params())
        else:
            with pytest.raises(CaptureError, match=r"call backward .* inside the captured step"):
                loss.backward()


def test_requires_grad_changed_after_capture_is_followed():
    (me, oe), (mc, oc) = _model(), _model()
    eager, captured = train_step(me, oe), capture(train_step(mc, oc))
    for call, (x, t) in enumerate(_batches(7)):
        if call == 4:
            for model in (me, mc):
                for p in model.l0.params():  # the first layer frozen
                    p.requires_grad = False
        np.testing.assert_array_equal(captured(x, t).data, eager(x, t).data)
    assert _same_params(me, mc)


def test_the_same_array_passed_twice_is_its_own_signature():
    """An autoencoder's step(x, target), recorded with (x, x): a later (noisy, x) must not read x twice."""

    def make():
        np.random.seed(3)
        model = models.MLP((4, 3))
        model(np.zeros((1, 3), np.float32))
        return model, train_step(model, optimizers.SGD(lr=0.1).setup(model), F.mean_squared_error)

    (me, eager), (mc, step) = make(), make()
    captured = capture(step)
    clean = np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32)
    noisy = clean + 1
    for x, target in [(clean, clean), (clean, clean), (noisy, clean), (noisy, clean), (clean, clean)]:
        np.testing.assert_array_equal(captured(x, target).data, eager(x, target).data)
    assert _same_params(me, mc)


def test_returning_accuracy_is_refused_with_a_message_that_says_why():
    model, optimizer = _model()

    def step(x, t):
        y = model(x)
        loss = F.softmax_cross_entropy(y, t)
        model.cleargrads()
        loss.backward()
        optimizer.update()
        return loss, F.accuracy(y, t)

    x, t = _batches(1)[0]
    with pytest.raises(CaptureError, match="no recorded operation computed"):
        capture(step)(x, t)


def test_many_signatures_are_bounded_and_warned_about():
    model, optimizer = _model()

    def step(x, t, lr):
        optimizer.lr = lr
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        optimizer.update()
        return loss

    captured = capture(step)
    x, t = _batches(1)[0]
    with pytest.warns(RuntimeWarning, match="more than 16 signatures"):
        for i in range(40):
            captured(x, t, 0.1 / (i + 1))
    assert len(captured._first) <= 16
