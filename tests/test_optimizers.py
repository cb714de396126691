"""Optimizers and hooks: two steps against hand-written NumPy updates, on every backend."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest

from tests.helpers import asarray, to_numpy
from xdezero import Parameter, Variable
from xdezero import optimizers as O
from xdezero.layers import Layer

P0 = np.array([[0.5, -1.0, 2.0], [0.25, 0.0, -3.0]], dtype=np.float32)
Q0 = np.array([1.0, -2.0], dtype=np.float32)
GRADS = [  # gradients for (p, q) at step 1 and step 2
    (np.array([[0.1, -0.2, 0.3], [1.0, -1.5, 0.0]], np.float32), np.array([0.5, 2.0], np.float32)),
    (np.array([[-0.4, 0.2, 0.6], [0.0, 0.7, -2.0]], np.float32), np.array([-1.0, 0.25], np.float32)),
]


class Two(Layer):
    def __init__(self, xp):
        super().__init__()
        self.p = Parameter(asarray(xp, P0.copy()))
        self.q = Parameter(asarray(xp, Q0.copy()))


def run_steps(xp, optimizer, hooks=(), steps=2):
    model = Two(xp)
    optimizer.setup(model)
    for h in hooks:
        optimizer.add_hook(h)
    history = []
    for gp, gq in GRADS[:steps]:
        model.p.grad = Variable(asarray(xp, gp))
        model.q.grad = Variable(asarray(xp, gq))
        optimizer.update()
        history.append((to_numpy(model.p), to_numpy(model.q)))
    return model, history


# --- NumPy references, written out step by step (float64) -------------------------------------------


def ref_sgd(lr):
    def step(p, g, s, t):
        return p - lr * g

    return step


def ref_momentum(lr, momentum):
    def step(p, g, s, t):
        s["v"] = momentum * s.get("v", 0.0) - lr * g
        return p + s["v"]

    return step


def ref_adagrad(lr, eps):
    def step(p, g, s, t):
        s["h"] = s.get("h", 0.0) + g**2
        return p - lr * g / (np.sqrt(s["h"]) + eps)

    return step


def ref_adadelta(rho, eps):
    def step(p, g, s, t):
        s["msg"] = rho * s.get("msg", 0.0) + (1 - rho) * g**2
        dx = np.sqrt((s.get("msdx", 0.0) + eps) / (s["msg"] + eps)) * g
        s["msdx"] = rho * s.get("msdx", 0.0) + (1 - rho) * dx**2
        return p - dx

    return step


def ref_adam(alpha, b1, b2, eps):
    def step(p, g, s, t):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g**2
        lr = alpha * math.sqrt(1 - b2**t) / (1 - b1**t)
        return p - lr * s["m"] / (np.sqrt(s["v"]) + eps)

    return step


def reference(step, grads=GRADS):
    p, q = P0.astype(np.float64), Q0.astype(np.float64)
    sp, sq, out = {}, {}, []
    for t, (gp, gq) in enumerate(grads, start=1):
        p, q = step(p, gp.astype(np.float64), sp, t), step(q, gq.astype(np.float64), sq, t)
        out.append((p, q))
    return out


OPTIMIZERS = [
    ("SGD-default", lambda: O.SGD(), ref_sgd(0.01)),
    ("SGD", lambda: O.SGD(lr=0.5), ref_sgd(0.5)),
    ("MomentumSGD-default", lambda: O.MomentumSGD(), ref_momentum(0.01, 0.9)),
    ("MomentumSGD", lambda: O.MomentumSGD(lr=0.1, momentum=0.5), ref_momentum(0.1, 0.5)),
    ("AdaGrad-default", lambda: O.AdaGrad(), ref_adagrad(0.001, 1e-8)),
    ("AdaGrad", lambda: O.AdaGrad(lr=0.3, eps=1e-4), ref_adagrad(0.3, 1e-4)),
    ("AdaDelta-default", lambda: O.AdaDelta(), ref_adadelta(0.95, 1e-6)),
    ("AdaDelta", lambda: O.AdaDelta(rho=0.5, eps=1e-2), ref_adadelta(0.5, 1e-2)),
    ("Adam-default", lambda: O.Adam(), ref_adam(0.001, 0.9, 0.999, 1e-8)),
    ("Adam", lambda: O.Adam(alpha=0.1, beta1=0.5, beta2=0.75, eps=1e-3), ref_adam(0.1, 0.5, 0.75, 1e-3)),
]


@pytest.mark.parametrize(("make", "ref"), [o[1:] for o in OPTIMIZERS], ids=[o[0] for o in OPTIMIZERS])
def test_two_steps_match_reference(xp, make, ref):
    model, history = run_steps(xp, make())
    for (p, q), (ep, eq) in zip(history, reference(ref)):
        np.testing.assert_allclose(p, ep, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(q, eq, rtol=1e-5, atol=1e-6)
    assert p.dtype == np.float32 and q.dtype == np.float32
    assert type(model.p.data) is type(asarray(xp, P0))


def test_sgd_literal_numbers(xp):
    # p = 0.5, g = 0.1 then -0.4, lr = 0.5: 0.5 - 0.05 = 0.45, then 0.45 + 0.2 = 0.65.
    _, history = run_steps(xp, O.SGD(lr=0.5))
    assert history[0][0][0, 0] == pytest.approx(0.45)
    assert history[1][0][0, 0] == pytest.approx(0.65)


def test_momentum_literal_numbers(xp):
    # v1 = -0.1·0.1 = -0.01, p1 = 0.49; v2 = 0.5·(-0.01) - 0.1·(-0.4) = 0.035, p2 = 0.525.
    _, history = run_steps(xp, O.MomentumSGD(lr=0.1, momentum=0.5))
    assert history[0][0][0, 0] == pytest.approx(0.49)
    assert history[1][0][0, 0] == pytest.approx(0.525)


def test_adam_lr_and_step_count():
    opt = O.Adam(alpha=0.1, beta1=0.5, beta2=0.75)
    run_steps(np, opt)
    assert opt.t == 2
    assert opt.lr == pytest.approx(0.1 * math.sqrt(1 - 0.75**2) / (1 - 0.5**2))


@pytest.mark.parametrize(("make", "ref"), [o[1:] for o in OPTIMIZERS], ids=[o[0] for o in OPTIMIZERS])
def test_updates_rebind_and_never_write_in_place(make, ref):
    model = Two(np)
    opt = make().setup(model)
    p_before = model.p.data
    p_before.flags.writeable = False  # any in-place write would raise
    g = np.ones_like(P0)
    g.flags.writeable = False
    model.p.grad = Variable(g)
    model.q.grad = Variable(np.ones_like(Q0))
    opt.update()
    assert model.p.data is not p_before
    np.testing.assert_array_equal(p_before, P0)
    np.testing.assert_array_equal(g, np.ones_like(P0))


def test_parameters_without_grad_are_skipped(xp):
    model = Two(xp)
    opt = O.MomentumSGD(lr=1.0).setup(model)
    model.p.grad = Variable(asarray(xp, GRADS[0][0]))
    opt.update()
    np.testing.assert_array_equal(to_numpy(model.q), Q0)
    np.testing.assert_allclose(to_numpy(model.p), P0 - GRADS[0][0], rtol=1e-6)


def test_state_belongs_to_each_parameter_object():
    # A new target's parameters start from fresh state, even if old parameter objects are gone.
    opt = O.MomentumSGD(lr=0.1, momentum=0.5)
    run_steps(np, opt)
    gc.collect()
    _, history = run_steps(np, opt, steps=1)
    expected = reference(ref_momentum(0.1, 0.5))[0]
    np.testing.assert_allclose(history[0][0], expected[0], rtol=1e-6)


def test_update_before_setup_is_an_error():
    with pytest.raises(RuntimeError, match="setup"):
        O.SGD().update()


def test_setup_rejects_a_non_layer():
    with pytest.raises(TypeError, match="Layer"):
        O.SGD().setup(object())


# --- hooks ----------------------------------------------------------------------------------------


def test_weight_decay(xp):
    rate, lr = 0.1, 0.5
    _, history = run_steps(xp, O.SGD(lr=lr), hooks=[O.WeightDecay(rate)])
    expected = reference(lambda p, g, s, t: p - lr * (g + rate * p))
    for (p, q), (ep, eq) in zip(history, expected):
        np.testing.assert_allclose(p, ep, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(q, eq, rtol=1e-5, atol=1e-6)


def test_weight_decay_applies_once_per_parameter_with_a_shared_gradient(xp):
    model = Layer()
    model.a = Parameter(asarray(xp, np.array([1.0, 2.0], np.float32)))
    model.b = Parameter(asarray(xp, np.array([3.0, 4.0], np.float32)))
    g = np.array([0.5, 0.5], np.float32)
    shared = Variable(asarray(xp, g))
    model.a.grad = shared
    model.b.grad = shared
    opt = O.SGD(lr=1.0).setup(model)
    opt.add_hook(O.WeightDecay(0.1))
    opt.update()
    np.testing.assert_allclose(to_numpy(model.a), [1.0 - 0.6, 2.0 - 0.7], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(model.b), [3.0 - 0.8, 4.0 - 0.9], rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(shared), g)  # the gradient array itself is untouched


def test_weight_decay_counts_a_shared_parameter_once(xp):
    # One Parameter reachable through two attribute paths is one parameter: decayed and updated once.
    shared = Layer()
    shared.w = Parameter(asarray(xp, np.array([2.0], np.float32)))
    model = Layer()
    model.first = shared
    model.second = shared
    shared.w.grad = Variable(asarray(xp, np.array([0.0], np.float32)))
    opt = O.SGD(lr=1.0).setup(model)
    opt.add_hook(O.WeightDecay(0.25))
    opt.update()
    np.testing.assert_allclose(to_numpy(shared.w), [1.5], rtol=1e-6)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad(xp, max_norm):
    lr = 1.0
    _, history = run_steps(xp, O.SGD(lr=lr), hooks=[O.ClipGrad(max_norm)])
    p, q = P0.astype(np.float64), Q0.astype(np.float64)
    for (gp, gq), (hp, hq) in zip(GRADS, history):
        norm = math.sqrt(float(np.sum(gp.astype(np.float64) ** 2) + np.sum(gq.astype(np.float64) ** 2)))
        rate = min(1.0, max_norm / (norm + 1e-6))
        p, q = p - lr * rate * gp, q - lr * rate * gq
        np.testing.assert_allclose(hp, p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(hq, q, rtol=1e-5, atol=1e-6)


def test_clip_grad_leaves_gradients_under_the_norm_exactly_as_they_are(xp):
    """The factor is min(1, max_norm / (‖g‖ + 1e-6)): under max_norm, however close, the gradients are not scaled
    (not even up), as torch.nn.utils.clip_grad_norm_ leaves them; over it they shrink to the norm."""
    g = np.array([3.0, 4.0], np.float64)  # ‖g‖ = 5
    for max_norm, factor in ((5.5, 1.0), (5.0 + 1e-3, 1.0), (1e6, 1.0), (2.5, 2.5 / (5 + 1e-6))):
        p = Parameter(asarray(xp, np.zeros(2)))
        p.grad = Variable(asarray(xp, g))
        O.ClipGrad(max_norm)([p])
        if factor == 1.0:
            np.testing.assert_array_equal(to_numpy(p.grad), g, err_msg=f"max_norm {max_norm}")
        else:
            np.testing.assert_allclose(to_numpy(p.grad), g * factor, rtol=1e-12)


def test_clip_grad_keeps_gradient_arrays(xp):
    model = Two(xp)
    gp = asarray(xp, GRADS[0][0])
    model.p.grad = Variable(gp)
    model.q.grad = Variable(asarray(xp, GRADS[0][1]))
    O.ClipGrad(0.1)([model.p, model.q])
    np.testing.assert_array_equal(to_numpy(gp), GRADS[0][0])
    assert to_numpy(model.p.grad).dtype == np.float32


def test_freeze_param(xp):
    model = Layer()
    model.frozen = Two(xp)
    model.free = Two(xp)
    opt = O.SGD(lr=1.0).setup(model)
    opt.add_hook(O.FreezeParam(model.frozen))
    for p in model.params():
        p.grad = Variable(xp.ones_like(p.data))
    opt.update()
    np.testing.assert_array_equal(to_numpy(model.frozen.p), P0)
    np.testing.assert_array_equal(to_numpy(model.frozen.q), Q0)
    np.testing.assert_allclose(to_numpy(model.free.p), P0 - 1)
    np.testing.assert_allclose(to_numpy(model.free.q), Q0 - 1)


def test_freeze_single_parameter_with_stateful_optimizer(xp):
    model = Two(xp)
    opt = O.Adam(alpha=0.1).setup(model)
    opt.add_hook(O.FreezeParam(model.q))
    model.p.grad = Variable(asarray(xp, GRADS[0][0]))
    model.q.grad = Variable(asarray(xp, GRADS[0][1]))
    opt.update()
    np.testing.assert_array_equal(to_numpy(model.q), Q0)
    assert not np.allclose(to_numpy(model.p), P0)


def test_freeze_param_rejects_other_objects():
    with pytest.raises(TypeError, match="FreezeParam"):
        O.FreezeParam(3)


def test_hooks_run_in_order_added(xp):
    # Decay then clip differs from clip then decay; check the order is the order of add_hook.
    rate, max_norm = 0.5, 0.1
    _, history = run_steps(xp, O.SGD(lr=1.0), hooks=[O.WeightDecay(rate), O.ClipGrad(max_norm)], steps=1)
    gp, gq = (g.astype(np.float64) for g in GRADS[0])
    dp, dq = gp + rate * P0, gq + rate * Q0
    norm = math.sqrt(float(np.sum(dp**2) + np.sum(dq**2)))
    scale = min(1.0, max_norm / (norm + 1e-6))
    np.testing.assert_allclose(history[0][0], P0 - scale * dp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history[0][1], Q0 - scale * dq, rtol=1e-5, atol=1e-6)
