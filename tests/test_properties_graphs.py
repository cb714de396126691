"""Property-based tests on random small graphs: against PyTorch (values, first and second derivatives, float64),
and for gradients that never share memory.

A program is a few ops drawn from a list, each applied to nodes drawn from those already built, so a node is
often used twice (x * x, or a subgraph feeding two branches); the output sums several nodes, reused ones
included. Only smooth ops are drawn: kinks and ties are in test_properties.py, where the convention at the kink
is what is checked (here a rounding difference between two libraries could move a value across a kink).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tests._hypothesis_profiles  # noqa: F401  (registers and loads the profile)
import xdezero.functions as F
from tests.helpers import asarray, library
from tests.test_properties import SEEDS, check_against_torch
from xdezero import Variable

ELEMENTS = st.one_of(st.sampled_from([0.0, 1.0, -1.0]), st.floats(-2, 2, width=16))

# name: (arity, xdezero op, torch op); every op maps nodes of shape (n, m) to shape (n, m); `flip` is the
# row-reversing index, an array of the backend (xdezero) or a torch tensor.
OPS = {
    "add": (2, lambda a, b, flip: a + b, lambda T, a, b, flip: a + b),
    "sub": (2, lambda a, b, flip: a - b, lambda T, a, b, flip: a - b),
    "mul": (2, lambda a, b, flip: a * b, lambda T, a, b, flip: a * b),
    "div": (2, lambda a, b, flip: a / (1 + b * b), lambda T, a, b, flip: a / (1 + b * b)),
    "matmul": (
        2,
        lambda a, b, flip: F.matmul(F.matmul(a, F.transpose(b)), a) / 3,
        lambda T, a, b, flip: a @ b.T @ a / 3,
    ),
    "scale_by_column_sums": (2, lambda a, b, flip: a * F.sum(b, axis=0), lambda T, a, b, flip: a * b.sum(0)),
    "scale_by_mean": (2, lambda a, b, flip: a * F.mean(b), lambda T, a, b, flip: a * b.mean()),
    "sin": (1, lambda a, b, flip: F.sin(a), lambda T, a, b, flip: T.sin(a)),
    "cos": (1, lambda a, b, flip: F.cos(a), lambda T, a, b, flip: T.cos(a)),
    "tanh": (1, lambda a, b, flip: F.tanh(a), lambda T, a, b, flip: T.tanh(a)),
    "exp": (1, lambda a, b, flip: F.exp(a), lambda T, a, b, flip: T.exp(a)),
    "sigmoid": (1, lambda a, b, flip: F.sigmoid(a), lambda T, a, b, flip: T.sigmoid(a)),
    "square": (1, lambda a, b, flip: F.square(a), lambda T, a, b, flip: a * a),
    "cube": (1, lambda a, b, flip: a**3, lambda T, a, b, flip: a**3),
    "neg": (1, lambda a, b, flip: -a, lambda T, a, b, flip: -a),
    "softmax": (1, lambda a, b, flip: F.softmax(a, axis=1), lambda T, a, b, flip: T.softmax(a, 1)),
    "log_softmax0": (1, lambda a, b, flip: F.log_softmax(a, axis=0), lambda T, a, b, flip: T.log_softmax(a, 0)),
    "center": (
        1,
        lambda a, b, flip: a - F.mean(a, axis=0, keepdims=True),
        lambda T, a, b, flip: a - a.mean(0, keepdim=True),
    ),
    "row_sums": (
        1,
        lambda a, b, flip: F.broadcast_to(F.sum(a, axis=1, keepdims=True), a.shape),
        lambda T, a, b, flip: a.sum(1, keepdim=True).expand(a.shape),
    ),
    # views: reshape and transpose give views of the gradient in backward
    "reshape_transpose": (
        1,
        lambda a, b, flip: F.transpose(F.reshape(a, (a.shape[1], a.shape[0]))),
        lambda T, a, b, flip: a.reshape(a.shape[1], a.shape[0]).T,
    ),
    "flatten_back": (
        1,
        lambda a, b, flip: F.reshape(F.reshape(a, (-1,)), a.shape),
        lambda T, a, b, flip: a.reshape(-1).reshape(a.shape),
    ),
    "flip_rows": (1, lambda a, b, flip: F.get_item(a, flip), lambda T, a, b, flip: a[flip]),
    "first_row": (1, lambda a, b, flip: a * a[0:1], lambda T, a, b, flip: a * a[0:1]),
}


@st.composite
def programs(draw):
    """(shape of x0, shape of x1, steps, outputs): node 0 is x0, node 1 is x0 * x1 (x1 broadcasts), each step
    (op, i, j) appends op(node i, node j), and the output is the sum of the nodes listed in `outputs`."""
    n, m = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    x1_shape = draw(st.sampled_from([(n, m), (m,), (1, m), (n, 1), ()]))
    steps, count = [], 2
    for _ in range(draw(st.integers(1, 5))):
        steps.append(
            (draw(st.sampled_from(sorted(OPS))), draw(st.integers(0, count - 1)), draw(st.integers(0, count - 1)))
        )
        count += 1
    outputs = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3))
    return (n, m), x1_shape, steps, outputs


def run_program(program, x0, x1, flip, torch=None):
    """Evaluate the program with xdezero (torch=None) or with torch; returns (output, every node)."""
    _, _, steps, outputs = program
    nodes = [x0, x0 * x1]
    for name, i, j in steps:
        _, op, top = OPS[name]
        nodes.append(op(nodes[i], nodes[j], flip) if torch is None else top(torch, nodes[i], nodes[j], flip))
    y = nodes[outputs[0]]
    for k in outputs[1:]:
        y = y + nodes[k]
    return y, nodes


def _describe(program):
    _, x1_shape, steps, outputs = program
    names = ["x0", f"x0 * x1{x1_shape}"] + [f"{name}(n{i}, n{j})" for name, i, j in steps]
    return "; ".join(f"n{k} = {s}" for k, s in enumerate(names)) + f"; y = sum of n{outputs}"


@pytest.fixture
def torch_oracle():
    """PyTorch, or a skip before Hypothesis starts (the numpy-only nox session has no torch)."""
    return pytest.importorskip("torch", reason="PyTorch CPU is the float64 oracle of this property")


@given(data=st.data(), program=programs(), seed=SEEDS)
def test_random_graphs_like_torch(xp, torch_oracle, data, program, seed):
    """Random graphs with reused nodes: value, gradient and second derivative against PyTorch in float64."""
    torch = torch_oracle
    shape, x1_shape, _, _ = program
    x0 = data.draw(hnp.arrays(np.float64, shape, elements=ELEMENTS), label="x0")
    x1 = data.draw(hnp.arrays(np.float64, x1_shape, elements=ELEMENTS), label="x1")
    flip_np = np.arange(shape[0])[::-1].copy()
    flip, flip_t = asarray(xp, flip_np), torch.tensor(flip_np)
    with torch.no_grad():
        ref, _ = run_program(program, torch.tensor(x0), torch.tensor(x1), flip_t, torch)
    assume(bool(torch.isfinite(ref).all()) and float(ref.abs().max()) < 1e6)
    check_against_torch(
        xp,
        lambda a, b: run_program(program, a, b, flip)[0],
        lambda T, a, b: run_program(program, a, b, flip_t, T)[0],
        [x0, x1],
        seed=seed,
        what=_describe(program),
    )


# --- gradients own their memory ----------------------------------------------------------------------


def _host_view(xp, a):
    """A NumPy view of the backend array's own buffer (no copy), to ask NumPy whether two arrays overlap."""
    return a if isinstance(a, np.ndarray) else np.from_dlpack(a)


def _skip_unless_buffers_visible(xp):
    name = library(xp)
    if name == "jax":
        pytest.skip("JAX arrays are immutable: a shared buffer cannot be edited through one gradient")
    if name not in ("numpy", "torch", "array_api_strict"):
        pytest.skip(f"buffer overlap is checked through NumPy views of CPU arrays, not on {name}")


def assert_no_shared_memory(xp, variables, what):
    grads, seen = [], set()
    for v in variables:
        if id(v) not in seen and v.grad is not None:
            seen.add(id(v))
            grads.append((getattr(v, "name", None) or f"node {len(seen) - 1}", _host_view(xp, v.grad.data)))
    for i, (name_a, a) in enumerate(grads):
        for name_b, b in grads[:i]:
            assert not np.shares_memory(a, b), f"{what}: the .grad of {name_a} and of {name_b} share memory"


@given(data=st.data(), program=programs(), seed=SEEDS)
def test_random_graphs_gradients_share_no_memory(xp, data, program, seed):
    """After backward(retain_grad=True), no two `.grad` arrays overlap (reshape/transpose views included), so
    editing one in place cannot change another (issue 8, item 9)."""
    _skip_unless_buffers_visible(xp)
    shape, x1_shape, _, _ = program
    x0 = Variable(asarray(xp, data.draw(hnp.arrays(np.float64, shape, elements=ELEMENTS), label="x0")), name="x0")
    x1 = Variable(asarray(xp, data.draw(hnp.arrays(np.float64, x1_shape, elements=ELEMENTS), label="x1")), name="x1")
    y, nodes = run_program(program, x0, x1, asarray(xp, np.arange(shape[0])[::-1].copy()))
    y.grad = Variable(asarray(xp, np.random.default_rng(seed).standard_normal(y.shape)))
    y.backward(retain_grad=True)
    assert_no_shared_memory(xp, [x0, x1, *nodes, y], _describe(program))


VIEWS = {  # each maps a (2, 3) Variable to a 6-element vector, through views where the backend gives them
    "reshape": lambda v: F.reshape(v, (6,)),
    "transpose": lambda v: F.reshape(F.transpose(v), (6,)),
    "expand_dims": lambda v: F.reshape(F.expand_dims(v, 0), (6,)),
    "flatten": lambda v: F.flatten(F.reshape(v, (1, 2, 3)))[0],
    "slice": lambda v: F.reshape(v[:, :], (6,)),
}


@given(
    first=st.sampled_from(sorted(VIEWS)),
    second=st.sampled_from(sorted(VIEWS)),
    same_leaf=st.booleans(),
    combine=st.sampled_from(["add", "sub"]),
)
def test_view_gradients_share_no_memory(xp, first, second, same_leaf, combine):
    """y = view₁(a) ± view₂(b): the backward hands both sides views of the same gy; the two `.grad` arrays (and
    y's own, retained) must not overlap (issue 8, item 9)."""
    _skip_unless_buffers_visible(xp)
    a = Variable(asarray(xp, np.arange(6.0).reshape(2, 3)), name="a")
    b = a if same_leaf else Variable(asarray(xp, np.arange(6.0).reshape(2, 3) + 10), name="b")
    u, w = VIEWS[first](a), VIEWS[second](b)
    y = u + w if combine == "add" else u - w
    y.grad = Variable(asarray(xp, np.ones(6)))
    y.backward(retain_grad=True)
    assert_no_shared_memory(xp, [a, b, u, w, y], f"{first}(a) {combine} {second}({'a' if same_leaf else 'b'})")
