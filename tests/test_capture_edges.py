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


# --- constants and the Variables a step reads: wherever they occur in the step -----------------------------


def _captured_or_refused(captured, *args):
    """A captured call's result: its value, or the eager result a refusal carries (refusing is allowed,
    replaying wrongly is not)."""
    try:
        return captured(*args)
    except CaptureError as refused:
        assert "cannot be replayed" in str(refused)
        return refused.result


@pytest.mark.parametrize("where", ["first_op", "middle_op", "last_op"])
def test_a_number_from_outside_the_step_is_compared_wherever_its_op_is(where):
    """1 / w.sum() is a NumPy number, fixed into the op it scales: the first, a middle or the last op of the
    step. It differs between the two recording calls, so a replay would be wrong: each call gives the eager result
    (a refusal carries it)."""
    (me, oe), (mc, oc) = _model(), _model()

    def make(model, optimizer):
        def step(x, t, w):
            scale = 1 / w.sum()
            h = F.mul(x, scale) if where == "first_op" else x
            y = model(h)
            y = F.mul(y, scale) if where == "middle_op" else y
            loss = F.softmax_cross_entropy(y, t)
            loss = F.mul(loss, scale) if where == "last_op" else loss
            model.cleargrads()
            loss.backward()
            optimizer.update()
            return loss

        return step

    eager, captured = make(me, oe), capture(make(mc, oc))
    batches = _batches(4)
    weights = [np.full(12, k, np.float32) for k in (1.0, 2.0, 4.0, 8.0)]  # it differs in the two recordings
    for (x, t), w in zip(batches, weights):
        expected = eager(x, t, w)
        got = _captured_or_refused(captured, x, t, w)
        np.testing.assert_array_equal(got.data, expected.data)
        assert _same_params(me, mc)


@pytest.mark.parametrize("where", ["first_op", "last_op"])
def test_an_array_from_outside_the_step_is_compared_wherever_its_op_is(where):
    """An array the step builds from a Python counter (not from its arguments) changes between calls: the first
    or the last op it enters must not replay the first call's array."""
    (me, oe), (mc, oc) = _model(), _model()

    def make(model, optimizer):
        calls = [0]

        def step(x, t):
            calls[0] += 1
            weight = np.full(x.shape, 1.0 + calls[0], np.float32)  # outside xdezero's functions
            h = F.mul(x, weight) if where == "first_op" else x
            loss = F.softmax_cross_entropy(model(h), t)
            loss = F.sum(F.mul(loss, weight[:1, 0])) if where == "last_op" else loss
            model.cleargrads()
            loss.backward()
            optimizer.update()
            return loss

        return step

    eager, captured = make(me, oe), capture(make(mc, oc))
    for x, t in _batches(5):
        expected = eager(x, t)
        got = _captured_or_refused(captured, x, t)
        np.testing.assert_array_equal(got.data, expected.data)
        assert _same_params(me, mc)


def test_a_variable_picked_by_a_python_counter_is_never_replayed_in_place_of_another():
    """The step multiplies by one of three Variables, chosen by a counter: each call reads the one it picked."""
    weights = [Variable(np.array(k, np.float64)) for k in (1.0, 2.0, 3.0)]
    calls = [0]

    def step(x):
        w = weights[calls[0] % 3]
        calls[0] += 1
        return F.sum(F.mul(x, w))

    captured = capture(step)
    x = np.ones(3)
    for k in range(9):
        got = _captured_or_refused(captured, x)
        assert float(got.data) == 3.0 * (1 + k % 3), f"call {k + 1}"


def test_a_parameter_picked_by_a_python_counter_gets_its_own_gradient_and_update():
    """The same with two Parameters that an optimizer updates: each call's update goes to the one it used."""
    np.random.seed(0)
    (me, oe), (mc, oc) = _model(0), _model(0)
    (me2, oe2), (mc2, oc2) = _model(1), _model(1)

    def make(models_, optimizers_):
        calls = [0]

        def step(x, t):
            k = calls[0] % 2
            calls[0] += 1
            return train_step(models_[k], optimizers_[k])(x, t)

        return step

    eager, captured = make([me, me2], [oe, oe2]), capture(make([mc, mc2], [oc, oc2]))
    for x, t in _batches(6):
        expected = eager(x, t)
        got = _captured_or_refused(captured, x, t)
        np.testing.assert_array_equal(got.data, expected.data)
    assert _same_params(me, mc) and _same_params(me2, mc2)


def test_a_namedtuple_or_a_dict_subclass_comes_back_intact_from_every_replay():
    """A replay used to rebuild a namedtuple as `Out(generator)`: TypeError, after the update was applied."""
    import collections

    Out = collections.namedtuple("Out", "loss logits")

    def stepper(model, optimizer, wrap):
        def step(x, t):
            y = model(x)
            loss = F.softmax_cross_entropy(y, t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            return wrap(loss, y)

        return step

    for wrap in (Out, lambda loss, y: collections.OrderedDict(loss=loss, logits=y)):
        (m1, o1), (m2, o2) = _model(), _model()
        eager, captured = stepper(m1, o1, wrap), capture(stepper(m2, o2, wrap))
        for x, t in _batches(4):
            want, got = eager(x, t), captured(x, t)
            assert type(got) is type(want)
            assert list(got.keys() if isinstance(got, dict) else got._fields) == ["loss", "logits"]
            values = got.values() if isinstance(got, dict) else got
            for a, b in zip(want.values() if isinstance(want, dict) else want, values):
                np.testing.assert_array_equal(a.data, b.data)
            assert _same_params(m1, m2)
        assert captured.tapes  # it replayed


def test_a_container_a_replay_cannot_rebuild_is_refused_while_recording():
    class Pair(tuple):
        def __new__(cls, a, b):
            return super().__new__(cls, (a, b))

    model, _ = _model()
    before = [np.array(p.data) for p in model.params()]
    step = capture(lambda x: Pair(F.sum(model(x)), F.sum(model(x) * 2)))
    with pytest.raises(CaptureError, match="returns a Pair, which a replay cannot rebuild from its items"):
        step(np.ones((1, 2), np.float32))
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.params()))


def test_a_bfloat16_torch_model_is_captured_and_replays_the_eager_numbers():
    """Capture compared the data it watches through NumPy, which has no bfloat16: recording crashed."""
    torch = pytest.importorskip("torch")
    from xdezero.backends import to_library

    def make():
        model, optimizer = _model()
        for p in model.params():
            p.data = to_library(p.data, "torch").to(torch.bfloat16)
        return model, optimizer

    def stepper(model, optimizer):
        def step(x, t):
            loss = F.softmax_cross_entropy(model(x), t)
            model.cleargrads()
            loss.backward()
            optimizer.update()
            return loss

        return step

    (m1, o1), (m2, o2) = make(), make()
    eager, captured = stepper(m1, o1), capture(stepper(m2, o2))
    for x, t in _batches(5):
        x, t = torch.from_numpy(x).to(torch.bfloat16), torch.from_numpy(t)
        assert torch.equal(eager(x, t).data, captured(x, t).data)
        assert all(torch.equal(p.data, q.data) for p, q in zip(m1.params(), m2.params()))
    assert captured.tapes
