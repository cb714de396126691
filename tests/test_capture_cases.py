"""The ways a captured step could differ from the eager one, each checked on every backend against the same code
run eagerly on a second model from the same seed: a gradient edited between backward and update, a parameter or
an argument changed in place, `F.abs`, boolean masks, replaced layers, and more signatures than are kept. Each
ends in a replay with the eager numbers, or in a `CaptureError` raised after a recording call that ran eagerly
and completely (nothing wrong applied: the parameters still equal eager's)."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import warnings

import numpy as np
import pytest

import xdezero
import xdezero.functions as F
import xdezero.layers as L
from tests.helpers import asarray, fixture_device, library, to_numpy
from xdezero import CaptureError, Function, Parameter, Variable, capture, models, optimizers


def _model(xp, seed: int = 0):
    np.random.seed(seed)
    model = models.MLP((10, 3), activation=F.sigmoid)
    model(np.zeros((1, 2), np.float32))
    if library(xp) != "numpy":
        model.to_library(library(xp), device=fixture_device(xp))
    return model, optimizers.SGD(lr=0.5).setup(model)


def _batches(xp, n: int, batch: int = 12, seed: int = 1):
    rng = np.random.default_rng(seed)
    return [
        (asarray(xp, rng.standard_normal((batch, 2)).astype(np.float32)), asarray(xp, rng.integers(0, 3, batch)))
        for _ in range(n)
    ]


def _mutable(xp) -> bool:
    """Whether the backend's arrays can be written in place (JAX's and Dask's cannot)."""
    a = xp.zeros(2)
    try:
        a[...] = 1.0
    except (TypeError, ValueError, NotImplementedError, AttributeError):
        return False
    return True


def _check(xp, make, calls, refused: str | None = None, *, copy_args=None):
    """Run `make(model, optimizer)` eagerly and captured on twin models over `calls` (argument tuples): every
    result and every parameter equal after each call; with `refused`, a CaptureError matching it must come (its
    call's result equal to eager's), and the loop carries on uncaptured. Returns the captured step."""
    (me, oe), (mc, oc) = _model(xp), _model(xp)
    eager, captured = make(me, oe), capture(make(mc, oc))
    step, seen = captured, None
    for args in calls:
        expected = eager(*(copy_args(args) if copy_args else args))
        try:
            got = step(*(copy_args(args) if copy_args else args))
        except CaptureError as e:
            assert refused is not None and re.search(refused, str(e)), str(e)
            got, seen, step = e.result, str(e), make(mc, oc)
        np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-6, atol=1e-6)
        for p, q in zip(me.params(), mc.params()):
            np.testing.assert_allclose(to_numpy(q.data), to_numpy(p.data), rtol=1e-6, atol=1e-6)
    if refused is not None:
        assert seen is not None, "the step was replayed where it had to be refused"
    else:
        assert captured.recorded >= 1, "the step never replayed"
    return captured


def _loss(model, x, t):
    return F.softmax_cross_entropy(model(x), t)


def _update(model, optimizer, loss):
    model.cleargrads()
    loss.backward()
    optimizer.update()
    return loss


def _step_of(loss_of, before_update=None, after_update=None):
    """`make(model, optimizer)` for the step: the loss `loss_of(model, *args)`, cleargrads, backward,
    `before_update(model)`, update, `after_update(model)`; the step returns the loss."""

    def make(model, optimizer):
        def step(*args):
            loss = loss_of(model, *args)
            model.cleargrads()
            loss.backward()
            if before_update is not None:
                before_update(model)
            optimizer.update()
            if after_update is not None:
                after_update(model)
            return loss

        return step

    return make


# --- 1. a gradient edited between backward and update ------------------------------------------------


def test_a_gradient_assigned_between_backward_and_update_is_replayed(xp):
    def halve(model):
        for p in model.params():
            p.grad = p.grad * 0.5

    _check(xp, _step_of(_loss, before_update=halve), _batches(xp, 6))


def test_a_gradient_set_to_none_between_backward_and_update_is_replayed(xp):
    def drop(model):
        model.l0.W.grad = None  # this step leaves the first layer's weights alone

    _check(xp, _step_of(_loss, before_update=drop), _batches(xp, 6))


def test_a_gradient_changed_in_place_is_refused(xp):
    def halve_in_place(model):
        model.l1.W.grad.data *= 0.5  # in place on NumPy and torch; a new array on JAX

    _check(
        xp,
        _step_of(_loss, before_update=halve_in_place),
        _batches(xp, 4),
        refused=r"gradient of 'W' (\(.*\) )?was (changed in place|replaced with an array)",
    )


# --- 2. a parameter changed in place inside the step --------------------------------------------------


@pytest.mark.parametrize("when", ["before the forward", "after the update"])
def test_a_parameter_changed_in_place_inside_the_step_is_refused(xp, when):
    if not _mutable(xp):
        pytest.skip("immutable arrays: nothing can be changed in place")

    def clip(model):
        W = model.l0.W.data
        W[...] = xp.clip(W, -0.3, 0.3)

    def clipped_loss(model, x, t):
        clip(model)
        return _loss(model, x, t)

    if when == "before the forward":
        make = _step_of(clipped_loss)
    else:
        make = _step_of(_loss, after_update=clip)
    _check(xp, make, _batches(xp, 4), refused=r"data of 'W' (was )?changed")


# --- 3. F.abs ---------------------------------------------------------------------------------------------


def test_an_l1_penalty_follows_the_signs_of_the_weights(xp):
    """With a large step the weights cross zero: a sign frozen at recording would drift from eager."""

    def penalised(model, x, t):
        return _loss(model, x, t) + 0.5 * F.sum(F.abs(model.l0.W)) + 0.5 * F.sum(F.abs(model.l0.b))

    _check(xp, _step_of(penalised), _batches(xp, 8))


def test_an_l1_loss_on_the_batch_replays(xp):
    make = _step_of(lambda model, x, t: F.sum(F.abs(model(x) - t)) / 12)
    rng = np.random.default_rng(3)
    calls = [(x, asarray(xp, rng.standard_normal((12, 3)).astype(np.float32))) for x, _ in _batches(xp, 6)]
    _check(xp, make, calls)


# --- 4. boolean masks ------------------------------------------------------------------------------------


def test_a_boolean_mask_argument_with_another_count_of_true_values_gives_eager_numbers(xp):
    make = _step_of(lambda model, x, t, mask: F.mean(F.sum(model(x), axis=1)[mask]))
    rng = np.random.default_rng(4)
    counts = [6, 6, 6, 4, 9, 6, 4, 9, 12, 1]
    calls = []
    for (x, t), k in zip(_batches(xp, len(counts)), counts):
        mask = np.zeros(12, bool)
        mask[rng.choice(12, k, replace=False)] = True
        calls.append((x, t, asarray(xp, mask)))
    _check(xp, make, calls)


# --- 5. an argument changed in place ------------------------------------------------------------------------


def test_an_argument_changed_in_place_inside_the_step_is_refused(xp):
    def centred_loss(model, x, t):
        x -= xp.mean(x, axis=0)  # in place on NumPy and torch; a new array, computed outside xdezero, on JAX
        return _loss(model, x, t)

    make = _step_of(centred_loss)

    def copies(args):
        x, t = args
        return (asarray(xp, to_numpy(x)), t)

    _check(
        xp,
        make,
        _batches(xp, 4),
        refused=r"argument 0 of the step was changed in place|input 0 of operation .* changed between the calls",
        copy_args=copies,
    )


# --- replaced layers and parameters ----------------------------------------------------------------------


def test_a_parameter_replaced_between_calls_is_recorded_again(xp):
    make = _step_of(_loss)
    (me, oe), (mc, oc) = _model(xp), _model(xp)
    eager, captured = make(me, oe), capture(make(mc, oc))
    for k, (x, t) in enumerate(_batches(xp, 8)):
        if k == 4:  # the same new weights in both models, in a new Parameter
            for model in (me, mc):
                model.l1.W = Parameter(asarray(xp, np.full((10, 3), 0.1, np.float32)), name="W")
        le, lc = eager(x, t), captured(x, t)
        np.testing.assert_allclose(to_numpy(lc), to_numpy(le), rtol=1e-6, atol=1e-6)
        for p, q in zip(me.params(), mc.params()):
            np.testing.assert_allclose(to_numpy(q.data), to_numpy(p.data), rtol=1e-6, atol=1e-6)


# --- 8. more signatures than are kept ---------------------------------------------------------------------


def test_a_cycle_of_more_batch_sizes_than_are_kept_still_replays_most_of_them():
    """20 batch sizes in a cycle (a smaller last batch per epoch, length bucketing): the first 16 confirmed keep
    replaying; each new one used to evict the oldest before its confirming call came, so none ever replayed."""

    make = _step_of(_loss)
    (me, oe), (mc, oc) = _model(np), _model(np)
    eager, captured = make(me, oe), capture(make(mc, oc))
    replays = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(4):
            for size in range(4, 24):
                x, t = _batches(np, 1, batch=size, seed=size)[0]
                before = captured.recorded, sum(len(v) for v in captured._first.values())
                le, lc = eager(x, t), captured(x, t)
                replays += before == (captured.recorded, sum(len(v) for v in captured._first.values()))
                np.testing.assert_allclose(lc.data, le.data, rtol=1e-6, atol=1e-6)
    assert captured.recorded == 16
    assert replays >= 2 * 16 - 1, replays  # the last two cycles replay the 16 kept signatures
    (warning,) = [w for w in caught if "signatures" in str(w.message)]
    assert "first confirmed ones that keep replaying are kept" in str(warning.message)


# --- a decorator on a method -------------------------------------------------------------------------------


def test_capture_on_a_method_binds_the_instance():
    class Trainer:
        def __init__(self, seed):
            self.model, self.optimizer = _model(np, seed)

        @capture
        def step(self, x, t):
            return _update(self.model, self.optimizer, _loss(self.model, x, t))

    a, b = Trainer(0), Trainer(5)
    (ma, oa), (mb, ob) = _model(np, 0), _model(np, 5)
    for x, t in _batches(np, 5):
        np.testing.assert_array_equal(a.step(x, t).data, _update(ma, oa, _loss(ma, x, t)).data)
        np.testing.assert_array_equal(b.step(x, t).data, _update(mb, ob, _loss(mb, x, t)).data)
    assert Trainer.step.recorded == 2  # one tape per instance


# --- what an op keeps for backward is declared -----------------------------------------------------------


class _Masked(Function):
    """y = x where x > 0, else 0, with the mask kept by forward."""

    def forward(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, gy):
        return gy * Variable(self.mask, requires_grad=False)


class _DeclaredMasked(_Masked):
    saved = ("mask",)


@pytest.mark.parametrize("op", [_Masked, _DeclaredMasked])
def test_an_op_replays_what_it_declares_it_keeps_and_is_refused_otherwise(op):
    make = _step_of(lambda model, x, t: F.sum(op()(model(x)) * t))
    rng = np.random.default_rng(2)
    calls = [(x, rng.standard_normal((12, 3)).astype(np.float32)) for x, _ in _batches(np, 6)]
    _check(
        np,
        make,
        calls,
        refused=r"_Masked.forward keeps the array attribute 'mask' without declaring it" if op is _Masked else None,
    )


def test_every_op_of_xdezero_declares_the_arrays_its_forward_keeps():
    """Attributes a forward sets hold arrays unless they are shapes or numbers (named below); the arrays must be
    declared in `saved`, or a captured step's replay would hand backward the recorded ones."""
    not_arrays = {
        "shapes",
        "x_shape",
        "kept_shape",
        "input_shape",
        "b_shape",
        "x_hw",
        "kernel",
        "axes",
        "n",
        "x_dtype",
        "outsize",
    }
    undeclared = []
    for path in sorted(pathlib.Path(xdezero.__file__).parent.rglob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text())):
            if not isinstance(cls, ast.ClassDef):
                continue
            for node in cls.body:
                if isinstance(node, ast.FunctionDef) and node.name == "forward":
                    kept = {
                        t.attr
                        for n in ast.walk(node)
                        if isinstance(n, ast.Assign | ast.AnnAssign | ast.AugAssign)
                        for target in (n.targets if isinstance(n, ast.Assign) else [n.target])
                        for t in ast.walk(target)
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
                    }
                    op = getattr(importlib.import_module(_module_name(path)), cls.name)
                    if not issubclass(op, Function):  # a Layer's forward
                        continue
                    declared = op.saved
                    undeclared += [f"{path.name}: {cls.name}.{a}" for a in sorted(kept - not_arrays - set(declared))]
    assert not undeclared, undeclared


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(pathlib.Path(xdezero.__file__).parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# --- more found by comparing captured and eager steps ------------------------------------------------------


@pytest.mark.parametrize("loss", ["sigmoid_cross_entropy", "binary_cross_entropy"])
def test_zero_one_targets_are_read_from_each_call(xp, loss):
    """The first two calls share their targets: a cast of the targets outside any op was frozen into the replay."""
    lossf = getattr(F, loss)
    make = _step_of(lambda m, x, t: lossf(F.sigmoid(m(x)) if loss == "binary_cross_entropy" else m(x), t))
    xs = [x for x, _ in _batches(xp, 5)]
    targets = [np.zeros((12, 3), np.int64)] * 2 + [np.ones((12, 3), np.int64)] * 2 + [np.eye(12, 3, dtype=np.int64)]
    _check(xp, make, [(x, asarray(xp, t)) for x, t in zip(xs, targets)])


def test_an_index_that_changes_between_calls_is_refused(xp):
    calls = {}  # per model: the uncaptured step that takes over after the refusal goes on counting

    def make(model, optimizer):
        def step(x):
            calls[id(model)] = calls.get(id(model), 0) + 1
            return _update(model, optimizer, F.sum(model(x)[:, calls[id(model)] // 2 % 3]))

        return step

    _check(xp, make, [(x,) for x, _ in _batches(xp, 6)], refused=r"GetItem\) was built with different constants")


def test_a_hidden_state_carried_between_calls_is_refused_with_a_capture_error():
    def rnn():
        np.random.seed(0)
        model = models.Sequential(L.RNN(4, in_size=2), L.Linear(1, in_size=4))
        optimizer = optimizers.SGD(0.1).setup(model)
        return model, lambda x, t: _update(model, optimizer, F.mean_squared_error(model(x), t))

    (me, eager), (mc, step) = rnn(), rnn()
    captured = capture(step)
    (x1, _), (x2, _) = _batches(np, 2)
    np.testing.assert_array_equal(captured(x1, x1[:, :1]).data, eager(x1, x1[:, :1]).data)
    with pytest.raises(CaptureError, match=r"backward pass reaches .*an operation of an earlier call") as caught:
        captured(x2, x2[:, :1])
    # the refused call ran eagerly and completely, through the first call's graph
    np.testing.assert_array_equal(caught.value.result.data, eager(x2, x2[:, :1]).data)
    for p, q in zip(me.params(), mc.params()):
        np.testing.assert_array_equal(q.data, p.data)


def test_a_result_a_replay_cannot_give_is_refused_with_the_calls_result():
    def make(model, optimizer):
        return lambda x, t: float(_update(model, optimizer, _loss(model, x, t)).data)

    _check(np, make, _batches(np, 3), refused=r"must return Variables or arrays .* got float")


def test_a_constant_from_the_batch_is_caught_when_the_first_two_calls_share_their_batch(xp):
    """`w` is computed from the batch outside xdezero's functions: two recordings on one batch cannot see that."""

    def make(model, optimizer):
        def step(x, t):
            w = Variable(asarray(xp, to_numpy(x)[:, :1] > 0, np.float32), requires_grad=False)
            return _update(model, optimizer, F.sum(model(x) * w))

        return step

    batches = _batches(xp, 4)
    _check(xp, make, [batches[0], batches[0], batches[1], batches[2]], refused=r"changed between the calls")


def test_a_step_called_on_one_batch_every_time_still_replays(xp):
    """Full-batch training (the book's spiral): the arguments never change, so neither do constants from them."""
    batch = _batches(xp, 1)[0]
    captured = _check(xp, _step_of(_loss), [batch] * 6)
    assert captured.recorded == 1


def test_numbers_that_compare_equal_but_differ_are_signatures_of_their_own():
    make = _step_of(lambda m, x, t, c: _loss(m, x, t) * c)
    (x, t), (x2, t2) = _batches(np, 2)
    captured = _check(np, make, [(x, t, 1.0), (x2, t2, 1.0), (x, t, 1.0), (x2, t2, -0.0), (x, t, True), (x, t, 1)])
    assert len(captured.tapes) + len(captured._first) == 4


def test_a_recurrent_layers_hidden_state_is_set_by_every_replay():
    def rnn():
        np.random.seed(0)
        layer = L.RNN(4, in_size=2)
        model = models.Sequential(layer, L.Linear(1, in_size=4))
        optimizer = optimizers.SGD(0.1).setup(model)
        return layer, lambda x, t: _update(model, optimizer, F.mean_squared_error(model(x), t))

    (re_, eager), (rc, step) = rnn(), rnn()
    captured = capture(step)
    for x, _ in _batches(np, 5):
        re_.reset_state()
        rc.reset_state()
        np.testing.assert_array_equal(captured(x, x[:, :1]).data, eager(x, x[:, :1]).data)
        np.testing.assert_array_equal(rc.h.data, re_.h.data)
    assert captured.recorded == 1


def test_a_parameter_replaced_inside_the_step_is_refused():
    def make(model, optimizer):
        def step(x, t):
            loss = _update(model, optimizer, _loss(model, x, t))
            model.l1.b = Parameter(model.l1.b.data.copy(), name="b")
            return loss

        return step

    _check(np, make, _batches(np, 3), refused=r"Linear.b was given a new Parameter during the step")
