"""The engine at its edges: pow at 0, unchain, threads, config objects in generators and tasks, mixed dtypes."""

from __future__ import annotations

import asyncio
import sys
import threading

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, library, to_numpy
from xdezero import Config, Variable, no_grad, test_mode, using_config


def nth_derivative(f, x: Variable, n: int) -> Variable:
    """d^n f / dx^n at x, by repeated backward(create_graph=True)."""
    y = f(x)
    for _ in range(n):
        x.cleargrad()
        y.backward(create_graph=True)
        y = x.grad
    return y


# --- pow at 0 ---------------------------------------------------------------------------------------------


def test_derivative_of_a_polynomial_with_a_zeroth_power_at_zero(xp):
    x = Variable(asarray(xp, 0.0))
    y = 1 + 2 * x + 3 * x**2 + 0.5 * x**0
    y.backward()
    assert float(to_numpy(x.grad)) == 2.0


@pytest.mark.parametrize(("n", "expected"), [(1, 0.0), (2, 0.0), (3, 6.0), (4, 0.0)])
def test_higher_derivatives_of_a_cube_at_zero_are_finite(xp, n, expected):
    x = Variable(asarray(xp, [0.0, 0.0]))
    d = nth_derivative(lambda v: v**3, x, n)
    np.testing.assert_array_equal(to_numpy(d), [expected, expected])


def test_past_the_last_nonzero_derivative_the_graph_ends(xp):
    # d^4/dx^4 x^3 is the constant 0, as in PyTorch (its zeros carry no graph): a 5th backward reaches no x.
    x = Variable(asarray(xp, 0.0))
    fourth = nth_derivative(lambda v: v**3, x, 4)
    x.cleargrad()
    fourth.backward()
    assert x.grad is None


def test_gradient_of_x_to_the_zero_is_zero_everywhere(xp):
    x = Variable(asarray(xp, [-1.5, 0.0, 2.0]))
    (x**0).backward()
    np.testing.assert_array_equal(to_numpy(x.grad), [0.0, 0.0, 0.0])
    assert x.grad.dtype == x.dtype


# --- unchain must stick -------------------------------------------------------------------------------------


def test_unchain_sticks_after_the_variable_is_freed(xp):
    x = Variable(asarray(xp, 0.5))
    h = F.sin(x)
    y = h + x  # Add keeps no reference to its inputs' data, only a record of where they came from
    h.unchain()
    del h
    y.backward()
    assert float(to_numpy(x.grad)) == 1.0  # only the direct path; the path through sin was cut


def test_unchain_backward_cuts_the_paths_of_freed_intermediates(xp):
    x = Variable(asarray(xp, 0.5))
    a = F.sin(x)
    y = a + 1.0
    z = a * 2.0  # a second consumer of `a`, built before `a` is freed
    del a
    y.unchain_backward()
    z.backward()
    assert x.grad is None


def test_unchain_of_a_live_intermediate_still_gets_its_gradient(xp):
    x = Variable(asarray(xp, 0.5))
    h = F.sin(x)
    y = h * 3.0
    h.unchain()
    y.backward()
    assert x.grad is None
    assert float(to_numpy(h.grad)) == 3.0


# --- threads ------------------------------------------------------------------------------------------------


def test_two_threads_accumulating_into_one_leaf_lose_no_update():
    x = Variable(np.array(0.0))
    rounds = 20_000

    def work():
        for _ in range(rounds):
            (x * 1.0).backward()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to provoke a lost update
    try:
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert float(x.grad.data) == 2 * rounds


# --- config objects -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "flag", "inside"), [(no_grad, "enable_backprop", False), (test_mode, "train", False)])
def test_decorated_generator_runs_its_body_under_the_flag(make, flag, inside):
    @make()
    def gen(n):
        for _ in range(n):
            received = yield getattr(Config, flag)
            assert received == "go"
        return "finished"

    it = gen(2)
    assert next(it) is inside
    assert getattr(Config, flag) is not inside  # never leaked to the caller while paused
    assert it.send("go") is inside
    with pytest.raises(StopIteration) as stop:
        it.send("go")
    assert stop.value.value == "finished"
    assert getattr(Config, flag) is not inside


def test_decorated_generator_sees_the_flag_when_an_exception_is_thrown_in():
    seen = []

    @using_config("train", False)
    def gen():
        try:
            yield 1
        except KeyError:
            seen.append(Config.train)
            yield 2

    it = gen()
    next(it)
    assert it.throw(KeyError("k")) == 2
    assert seen == [False] and Config.train is True
    it.close()
    assert Config.train is True


def test_decorated_async_generator_runs_its_body_under_the_flag():
    @no_grad()
    async def agen():
        for _ in range(3):
            await asyncio.sleep(0)
            yield Config.enable_backprop, F.sin(Variable(np.array(1.0))).creator is None

    async def consume():
        out = []
        async for item in agen():
            out.append(item)
            out.append(Config.enable_backprop)
        return out

    assert asyncio.run(consume()) == [(False, True), True] * 3
    assert Config.enable_backprop is True


def test_one_config_object_entered_by_two_tasks_left_in_any_order():
    shared = no_grad()

    async def main():
        first_in, second_in, first_out = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def first():
            with shared:
                first_in.set()
                await second_in.wait()
            first_out.set()
            return Config.enable_backprop

        async def second():
            await first_in.wait()
            with shared:
                second_in.set()
                await first_out.wait()  # `first` leaves while `second` is still inside
                inside = Config.enable_backprop
            return inside, Config.enable_backprop

        return await asyncio.gather(first(), second())

    assert asyncio.run(main()) == [True, (False, True)]


def test_leaving_a_config_never_entered_is_an_error():
    with pytest.raises(RuntimeError, match="without being entered"):
        no_grad().__exit__(None, None, None)


# --- dtypes and operands ------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "matmul"])
def test_gradients_keep_their_input_dtype_when_dtypes_meet(xp, op):
    a = Variable(asarray(xp, [[0.5, 1.5], [2.0, -1.0]], dtype=np.float32))
    b = Variable(asarray(xp, [[1.25, -0.5], [0.75, 2.0]], dtype=np.float64))
    y = {
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: a * b,
        "div": lambda: a / b,
        "matmul": lambda: F.matmul(a, b),
    }[op]()
    F.sum(y).backward()
    assert a.grad.dtype == a.dtype and b.grad.dtype == b.dtype
    expected_a = {"add": 1.0, "sub": 1.0, "mul": to_numpy(b), "div": 1 / to_numpy(b)}
    if op in expected_a:
        np.testing.assert_allclose(to_numpy(a.grad), np.broadcast_to(expected_a[op], (2, 2)), rtol=1e-6)


@pytest.mark.parametrize("scalar", [np.float64(2.0), np.sqrt(2.0), np.float32(0.5), np.int64(3)])
def test_numpy_scalars_are_operands_like_python_numbers(xp, scalar):
    x = Variable(asarray(xp, [1.0, 4.0], dtype=np.float32))
    for y, expected in [
        (x / scalar, [1 / float(scalar), 4 / float(scalar)]),
        (scalar / x, [float(scalar), float(scalar) / 4]),
        (x * scalar, [float(scalar), 4 * float(scalar)]),
        (scalar - x, [float(scalar) - 1, float(scalar) - 4]),
        (x + scalar, [1 + float(scalar), 4 + float(scalar)]),
        (x**scalar, [1.0, 4.0 ** float(scalar)]),
    ]:
        assert y.dtype == x.dtype  # like a Python number, it takes the array's dtype
        np.testing.assert_allclose(to_numpy(y), expected, rtol=1e-6)
    x.cleargrad()
    (x * scalar).backward()
    np.testing.assert_allclose(to_numpy(x.grad), [float(scalar)] * 2, rtol=1e-6)


# --- smaller ones -------------------------------------------------------------------------------------------


def test_len_of_a_zero_d_variable_is_a_type_error(xp):
    with pytest.raises(TypeError, match="len\\(\\) of unsized object"):
        len(Variable(asarray(xp, 1.0)))
    assert len(Variable(asarray(xp, [1.0, 2.0, 3.0]))) == 3


@pytest.mark.parametrize(
    "data", [np.array("abc"), np.array(["a", "b"]), np.array([1, "x"], dtype=object), np.array(b"raw"), np.str_("s")]
)
def test_non_numeric_arrays_are_rejected(data):
    with pytest.raises(TypeError, match="must hold numbers"):
        Variable(data)


def test_strict_array_memory_sharing_is_ruled_out(xp):
    """Two gradients that are views of one buffer on a library whose views cannot be seen are copied."""
    if library(xp) == "jax":
        pytest.skip("JAX arrays are immutable")
    x = Variable(asarray(xp, [[1.0, 2.0], [3.0, 4.0]]))
    w = Variable(asarray(xp, [[1.0, 2.0], [3.0, 4.0]]))
    y = F.reshape(x, (4,)) + F.reshape(w, (4,))
    F.sum(y).backward()
    gx, gw = to_numpy(x.grad), to_numpy(w.grad)
    np.testing.assert_array_equal(gx, np.ones((2, 2)))
    np.testing.assert_array_equal(gw, np.ones((2, 2)))
    if library(xp) == "array_api_strict":
        assert not np.shares_memory(x.grad.data._array, w.grad.data._array)
