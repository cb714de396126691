"""torch.optim as the oracle for every xdezero optimizer PyTorch has: 20 steps on a small MLP, float64.

Each step computes the gradient in its own framework (xdezero on the backend under test, torch autograd on the
CPU) and updates with its own optimizer; the parameters must agree to rtol 1e-9 after every step.

Where DeZero's formula differs, DeZero's is kept and the torch side is mapped onto it:
- MomentumSGD: v ← m·v − lr·g; p ← p + v. torch SGD(momentum=m, dampening=0): b ← m·b + g; p ← p − lr·b.
  With a constant lr, v = −lr·b exactly; if lr changes between steps they differ (DeZero's v keeps the old lr).
- AdaGrad: torch Adagrad with lr_decay=0, initial_accumulator_value=0 and eps=1e-8 (torch's default is 1e-10).
- AdaDelta: torch Adadelta with lr=1 (DeZero has no lr), rho=0.95, eps=1e-6 (torch's default rho is 0.9).
- Adam: DeZero puts √(1−β₂ᵗ) into the step size, p ← p − α·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/(√v + eps), while torch divides v
  first, p ← p − α/(1−β₁ᵗ)·m/(√v/√(1−β₂ᵗ) + eps). They agree when torch's eps at step t is eps/√(1−β₂ᵗ)
  (set on the param group before each step); with a fixed eps, torch's eps weighs up to 1/√(1−β₂) ≈ 31.6
  times less early on. Adam is also checked against a NumPy transcription of DeZero's formula.
- WeightDecay(rate) is torch's weight_decay=rate; ClipGrad(max_norm) is torch.nn.utils.clip_grad_norm_.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, to_numpy
from xdezero import Parameter
from xdezero import optimizers as O
from xdezero.layers import Layer

torch = pytest.importorskip("torch")

STEPS = 20
_rng = np.random.default_rng(3)
INIT = {
    "W1": _rng.standard_normal((3, 4)) * 0.7,
    "b1": _rng.standard_normal(4) * 0.1,
    "W2": _rng.standard_normal((4, 2)) * 0.7,
    "b2": _rng.standard_normal(2) * 0.1,
}
X = _rng.standard_normal((5, 3))
Y = _rng.standard_normal((5, 2))


class MLP(Layer):
    def __init__(self, xp):
        super().__init__()
        for name, a in INIT.items():
            setattr(self, name, Parameter(asarray(xp, a.copy())))

    def loss(self, x, y):
        h = F.tanh(F.linear(x, self.W1, self.b1))
        d = F.linear(h, self.W2, self.b2) - y
        return F.sum(d * d) / len(X)


def torch_loss(p, x, y):
    d = torch.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"] - y
    return (d * d).sum() / len(X)


def ours(xp, optimizer, hooks=()):
    """The parameters after each of STEPS steps (dicts of float64 NumPy arrays)."""
    model = MLP(xp)
    optimizer.setup(model)
    for h in hooks:
        optimizer.add_hook(h)
    x, y = asarray(xp, X), asarray(xp, Y)
    history = []
    for _ in range(STEPS):
        model.cleargrads()
        model.loss(x, y).backward()
        optimizer.update()
        history.append({name: to_numpy(getattr(model, name)) for name in INIT})
    return history


def theirs(make, clip=None, before_step=None):
    """The same with a torch.optim optimizer `make(params)` (and clip_grad_norm_ when `clip`)."""
    p = {name: torch.tensor(a, requires_grad=True) for name, a in INIT.items()}
    optimizer = make(list(p.values()))
    x, y = torch.tensor(X), torch.tensor(Y)
    history = []
    for t in range(1, STEPS + 1):
        optimizer.zero_grad()
        torch_loss(p, x, y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(p.values()), clip)
        if before_step is not None:
            before_step(optimizer, t)
        optimizer.step()
        history.append({name: v.detach().numpy().copy() for name, v in p.items()})
    return history


def assert_same(got, expected):
    for t, (g, e) in enumerate(zip(got, expected), 1):
        for name in INIT:
            np.testing.assert_allclose(g[name], e[name], rtol=1e-9, atol=1e-12, err_msg=f"step {t}, {name}")


def adam_eps_schedule(eps, beta2):
    """torch's eps at step t that makes torch's Adam DeZero's: eps/√(1−β₂ᵗ)."""

    def set_eps(optimizer, t):
        optimizer.param_groups[0]["eps"] = eps / math.sqrt(1 - beta2**t)

    return set_eps


CASES = {
    "SGD": (lambda: O.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1), {}),
    "MomentumSGD": (
        lambda: O.MomentumSGD(lr=0.05, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        {},
    ),
    "AdaGrad": (
        lambda: O.AdaGrad(lr=0.1),
        lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0, initial_accumulator_value=0, eps=1e-8, foreach=False),
        {},
    ),
    "AdaDelta": (
        lambda: O.AdaDelta(rho=0.95, eps=1e-6),
        lambda p: torch.optim.Adadelta(p, lr=1.0, rho=0.95, eps=1e-6, foreach=False),
        {},
    ),
    "Adam_eps0": (
        lambda: O.Adam(alpha=0.01, eps=0.0),
        lambda p: torch.optim.Adam(p, lr=0.01, eps=0.0, foreach=False),
        {},
    ),
    "Adam_eps_mapped": (
        lambda: O.Adam(alpha=0.01, beta1=0.8, beta2=0.99, eps=1e-3),
        lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), foreach=False),
        {"before_step": adam_eps_schedule(1e-3, 0.99)},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_matches_torch_optim(xp, case):
    make_ours, make_theirs, extra = CASES[case]
    assert_same(ours(xp, make_ours()), theirs(make_theirs, **extra))


def test_weight_decay_and_clip_grad_match_torch(xp):
    got = ours(xp, O.MomentumSGD(lr=0.05, momentum=0.9), hooks=[O.WeightDecay(0.01)])
    assert_same(got, theirs(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)))
    got = ours(xp, O.SGD(lr=0.1), hooks=[O.ClipGrad(0.5)])
    assert_same(got, theirs(lambda p: torch.optim.SGD(p, lr=0.1), clip=0.5))


def test_adam_with_a_fixed_eps_differs_from_torch_as_documented(xp):
    # The mapping above is needed: with the same fixed eps the two Adams part after the first step.
    got = ours(xp, O.Adam(alpha=0.01, eps=1e-3))
    unmapped = theirs(lambda p: torch.optim.Adam(p, lr=0.01, eps=1e-3, foreach=False))
    assert not np.allclose(got[0]["W1"], unmapped[0]["W1"], rtol=1e-6, atol=0)


def test_adam_matches_a_numpy_transcription_of_dezeros_formula(xp):
    alpha, beta1, beta2, eps = 0.01, 0.9, 0.999, 1e-8
    got = ours(xp, O.Adam(alpha=alpha, beta1=beta1, beta2=beta2, eps=eps))
    p = {name: torch.tensor(a, requires_grad=True) for name, a in INIT.items()}
    m = {name: 0.0 for name in INIT}
    v = {name: 0.0 for name in INIT}
    for t in range(1, STEPS + 1):
        for q in p.values():
            q.grad = None
        torch_loss(p, torch.tensor(X), torch.tensor(Y)).backward()  # the gradient only: the update is NumPy's
        lr = alpha * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        for name, q in p.items():
            g = q.grad.numpy()
            m[name] = m[name] + (1 - beta1) * (g - m[name])
            v[name] = v[name] + (1 - beta2) * (g * g - v[name])
            with torch.no_grad():
                q -= torch.tensor(lr * m[name] / (np.sqrt(v[name]) + eps))
        for name in INIT:
            np.testing.assert_allclose(got[t - 1][name], p[name].detach().numpy(), rtol=1e-9, atol=1e-12)
