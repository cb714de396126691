"""The fused-kernel table (xdezero/backends/_fused.py): which implementation runs, for which library.

There is no GPU here: the CuPy kernels themselves are not run. What is tested: the portable path is taken on
every installed library; a library with a table entry gets that entry (a fake library stands in for CuPy);
every hot composite really goes through the table under its name; and the CuPy table, built against a fake
`cupy` module, passes each kernel as many arguments as its parameter list declares and returns what the
portable code returns (one array or a tuple of the same length).
"""

from __future__ import annotations

import math
import re
import sys
import types

import numpy as np
import pytest

import xdezero.backends._cupy as cupy_kernels
import xdezero.backends._fused as fused_table
import xdezero.functions as F
from xdezero import Parameter, optimizers
from xdezero.backends import fused, library_name
from xdezero.layers import Linear


@pytest.fixture
def table():
    """The table as it was before the test, restored after it."""
    saved_table, saved_loaded = dict(fused_table.TABLE), set(fused_table._LOADED)
    yield fused_table
    fused_table.TABLE.clear()
    fused_table.TABLE.update(saved_table)
    fused_table._LOADED.clear()
    fused_table._LOADED.update(saved_loaded)
    fused_table._BY_TYPE.clear()


def _portable_double(xp, x):
    return x * 2


class FakeArray:
    """An array of a library called `fakelib` (library_name reads the module of the type)."""

    __module__ = "fakelib"

    def __init__(self, value):
        self.value = value


def test_portable_path_on_every_installed_library(xp, table):
    x = xp.asarray([1.0, -2.0])
    table.register(library_name(x), "sigmoid", None)  # CuPy and NumPy have their own sigmoid: not this time
    y = fused("sigmoid", _portable_double, xp, x)
    assert [float(v) for v in y] == [2.0, -4.0]


def test_fake_library_gets_its_table_entry(table):
    calls = []

    def impl(portable, xp, x):
        calls.append((portable, xp, x))
        return "fused result"

    table.register("fakelib", "sigmoid", impl)
    x = FakeArray(3)
    assert fused("sigmoid", _portable_double, "fake namespace", x) == "fused result"
    assert calls == [(_portable_double, "fake namespace", x)]
    # Another composite of the same library, and the same composite for NumPy, stay portable.
    assert fused("sgd", lambda xp, a: "portable", None, x) == "portable"
    assert fused("sigmoid", _portable_double, np, np.array([1.0]))[0] == 2.0
    # Removing the entry brings the portable path back (the per-type cache is cleared).
    table.register("fakelib", "sigmoid", None)
    assert fused("sigmoid", lambda xp, a: "portable", None, x) == "portable"


def test_register_refuses_an_unknown_composite(table):
    with pytest.raises(ValueError, match=r"unknown composite 'sigmoid_typo'.*sigmoid, sigmoid_grad"):
        table.register("fakelib", "sigmoid_typo", lambda *a: None)


def _train_step(model, optimizer, x, t):
    loss = F.softmax_cross_entropy(F.sigmoid(model(x)), t)
    model.cleargrads()
    loss.backward()
    optimizer.update()


@pytest.mark.parametrize(
    "make_optimizer, composite",
    [
        (lambda: optimizers.SGD(lr=0.1), "sgd"),
        (lambda: optimizers.MomentumSGD(lr=0.1), "momentum_sgd"),
        (lambda: optimizers.Adam(), "adam"),
    ],
)
def test_hot_composites_go_through_the_table(table, make_optimizer, composite):
    """Each composite reaches the table under its name, with arguments its portable code accepts."""
    seen = []

    def spy(name):
        def impl(portable, xp, *args):
            seen.append(name)
            return portable(xp, *args)

        return impl

    for name in table.LAUNCHES:
        table.register("numpy", name, spy(name))
    rng = np.random.default_rng(0)
    model = Linear(3, in_size=4)
    optimizer = make_optimizer().setup(model)
    _train_step(model, optimizer, rng.standard_normal((5, 4)), np.array([0, 1, 2, 1, 0]))
    assert set(seen) == {"sigmoid", "sigmoid_grad", "softmax_cross_entropy", "softmax_cross_entropy_grad", composite}
    assert seen.count(composite) == 2  # W and b

    seen.clear()
    mean, var = Parameter(np.zeros(4)), Parameter(np.ones(4))
    F.batch_norm(rng.standard_normal((6, 4)), np.ones(4), np.zeros(4), mean, var)
    assert seen == ["batch_norm_statistics"]


def test_table_entry_results_are_used(table):
    """What the table returns is what the op returns (the dispatch does not fall back silently)."""
    table.register("numpy", "sigmoid", lambda portable, xp, x: np.full_like(x, 7.0))
    table.register("numpy", "sgd", lambda portable, xp, p, g, lr: p - 2 * lr * g)
    assert F.sigmoid(np.array([0.0, 1.0])).data.tolist() == [7.0, 7.0]
    model = Linear(1, nobias=True, in_size=1)
    model.W.data = np.array([[1.0]])
    model.W.grad = None
    y = F.sum(model(np.array([[3.0]])))
    y.backward()
    optimizers.SGD(lr=0.5).setup(model).update()
    assert model.W.data.tolist() == [[1.0 - 2 * 0.5 * 3.0]]


# --- the CuPy table against a fake cupy module ----------------------------------------------------------


def _params(spec: str) -> list[str]:
    return [p.split()[-1] for p in spec.split(",") if p.strip()]


class _FakeKernel:
    """Records its parameter lists; a call checks the argument count and returns float64 outputs shaped like
    the broadcast of the array inputs (the reduction: summed over `axis`)."""

    def __init__(self, in_params, out_params, *body, name):
        self.ins, self.outs, self.body, self.name = _params(in_params), _params(out_params), body, name
        self.raw = [p.split()[0] == "raw" for p in in_params.split(",")]

    def __call__(self, *args, axis=None, keepdims=False):
        assert len(args) == len(self.ins), f"{self.name}: {len(args)} arguments for {self.ins}"
        names = set(re.findall(r"[A-Za-z_]\w*", " ".join(b for b in self.body if isinstance(b, str))))
        assert set(self.ins) | set(self.outs) <= names | {"a"}, f"{self.name}: a parameter the body never uses"
        arrays = [a for a, raw in zip(args, self.raw) if isinstance(a, np.ndarray) and not raw]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        if axis is not None:
            shape = np.sum(np.zeros(shape), axis=axis, keepdims=keepdims).shape
        outs = tuple(np.zeros(shape) for _ in self.outs)
        return outs[0] if len(outs) == 1 else outs


@pytest.fixture
def fake_cupy_table(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.ElementwiseKernel = lambda *a, name: _FakeKernel(*a, name=name)
    fake.ReductionKernel = lambda *a, name: _FakeKernel(*a, name=name)
    fake.dtype, fake.float32, fake.float64 = np.dtype, np.float32, np.float64
    fake.ascontiguousarray, fake.max, fake.sum = np.ascontiguousarray, np.max, np.sum
    monkeypatch.setitem(sys.modules, "cupy", fake)
    from xdezero.backends._cupy import CupyBackend

    return CupyBackend().composites()


def _portable_of(name):
    from xdezero.functions import activation, loss, normalization

    return {
        "sigmoid": activation._sigmoid,
        "sigmoid_grad": activation._sigmoid_grad,
        "softmax_cross_entropy": loss._softmax_cross_entropy,
        "softmax_cross_entropy_grad": loss._softmax_cross_entropy_grad,
        "sgd": optimizers._sgd,
        "momentum_sgd": optimizers._momentum_sgd,
        "adam": optimizers._adam,
        "batch_norm_statistics": normalization._running_statistics,
    }[name]


def _arguments(name, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3)).astype(dtype)
    t = np.array([0, 2, 1, 2])
    vec = rng.standard_normal(3).astype(dtype)
    return {
        "sigmoid": (a,),
        "sigmoid_grad": (a, a),
        "softmax_cross_entropy": (a, t),
        "softmax_cross_entropy_grad": (a, t, np.asarray(1.0, dtype=dtype)),
        "sgd": (a, a, 0.1),
        "momentum_sgd": (a, a, a, 0.9, 0.1),
        "adam": (a, a, a, np.abs(a), 0.9, 0.999, 0.001, 1e-8),
        "batch_norm_statistics": (vec, np.abs(vec), vec, np.abs(vec), 0.9, 0.1),
    }[name]


@pytest.mark.parametrize("name", list(fused_table.LAUNCHES))
def test_cupy_kernels_take_the_portable_arguments_and_return_its_structure(fake_cupy_table, name):
    import array_api_compat.numpy as xp

    args = _arguments(name, np.float32)
    expected = _portable_of(name)(xp, *args)
    got = fake_cupy_table[name](lambda *a: pytest.fail("fell back to the portable path"), xp, *args)
    assert type(got) is type(expected)
    if isinstance(expected, tuple):
        assert len(got) == len(expected)
        assert [np.shape(g) for g in got] == [np.shape(e) for e in expected]
    else:
        assert np.shape(got) == np.shape(expected)


@pytest.mark.parametrize("name", list(fused_table.LAUNCHES))
def test_cupy_kernels_leave_float16_to_the_portable_path(fake_cupy_table, name):
    args = _arguments(name, np.float16)
    assert fake_cupy_table[name](lambda xp, *a: "portable", None, *args) == "portable"


def test_cupy_table_covers_every_composite_with_a_launch_count(fake_cupy_table):
    assert set(fake_cupy_table) == set(fused_table.LAUNCHES)
    assert all(isinstance(n, int) and n >= 1 for n in fused_table.LAUNCHES.values())


def test_cuda_bodies_use_typed_constants():
    """A bare 0.5 in a float kernel is a double in CUDA C (a slow float64 path): constants are cast to T."""
    bodies = [v for k, v in vars(cupy_kernels).items() if k.isupper() and k.startswith("_") and isinstance(v, tuple)]
    assert bodies
    for spec in bodies:
        body = " ".join(s for s in spec if isinstance(s, str))
        assert not re.search(r"(?<![\w)])\d+\.\d+", body), f"untyped floating constant in {body!r}"


def test_sigmoid_kernel_formula_matches_the_logistic_function():
    """The CUDA expression, evaluated by Python with T = float, against 1 / (1 + e^-x)."""
    body = cupy_kernels._SIGMOID[2].split("=", 1)[1].replace("(T)", "")
    for x in (-30.0, -1.0, 0.0, 0.5, 4.0):
        assert math.isclose(
            eval(body, {"tanh": math.tanh, "x": x}), 1 / (1 + math.exp(-x)), rel_tol=1e-12, abs_tol=1e-15
        )


def _torch_composite_cases(torch):
    """Per composite of the torch backend: (its portable function, arguments, whether it is the portable
    arithmetic to the bit)."""
    from xdezero.functions.activation import _sigmoid, _sigmoid_grad
    from xdezero.functions.loss import _softmax_cross_entropy, _softmax_cross_entropy_grad
    from xdezero.optimizers import _sgd

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 7, generator=gen)
    y = torch.sigmoid(x)
    p = torch.softmax(x, 1)
    t = torch.randint(0, 7, (30,), generator=gen)
    gy = torch.tensor(1.7)
    return {
        "sigmoid": (_sigmoid, (x,), False),
        "sigmoid_grad": (_sigmoid_grad, (y, x), False),
        "sgd": (_sgd, (x, y, 0.1), False),
        "softmax_cross_entropy": (_softmax_cross_entropy, (x, t), False),
        "softmax_cross_entropy_grad": (_softmax_cross_entropy_grad, (p, t, gy), True),
    }


def test_torch_composites_give_the_portable_numbers(torch):
    import array_api_compat.torch as xp

    from xdezero.backends._torch import TorchBackend

    composites = TorchBackend().composites()
    cases = _torch_composite_cases(torch)
    assert set(composites) == set(cases), "a torch composite without a case here"
    for name, impl in composites.items():
        portable, args, exact = cases[name]
        expected, got = portable(xp, *args), impl(portable, xp, *args)
        for e, g in zip(
            expected if isinstance(expected, tuple) else [expected], got if isinstance(got, tuple) else [got]
        ):
            assert g.dtype == e.dtype and g.shape == e.shape, name
            if exact:
                assert torch.equal(g, e), name
            else:
                torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7, msg=name)
