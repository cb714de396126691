"""Captured steps replayed as CUDA graphs (xdezero.tapes.graphs).

On CuPy and CUDA torch the real graphs run. On NumPy a stand-in graph kit checks the bookkeeping around them
everywhere: the arguments copied in, the state's buffers written back, the results copied out, the checks made
before a launch, the state restored when a capture is refused, and a new capture when the numbers change.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import xdezero
import xdezero.functions as F
import xdezero.tapes.step
from tests.helpers import asarray, fixture_device, library, to_numpy, train_step
from tests.test_capture import MODELS, OPTIMIZERS, BagOfEmbeddings, _batches, _embedding_batches
from xdezero import capture, optimizers
from xdezero.backends import graph_kit


class NumpyGraphs:
    """Stands in for a CUDA-graph kit on NumPy: its 'graph' is the captured function itself. A capture runs
    nothing on a GPU; this one runs the function, on the arguments of the call that captures, so the launch
    that follows it is skipped."""

    name = "the stand-in"

    def __init__(self):
        self.captures = 0
        self.launches = 0

    def warm(self, fn):
        return fn()

    def capture(self, fn):
        fn()
        self.captures += 1
        return {"fn": fn, "ran": True}

    def launch(self, graph):
        self.launches += 1
        if graph["ran"]:
            graph["ran"] = False
        else:
            graph["fn"]()

    copy_into = staticmethod(np.copyto)
    copy = staticmethod(np.copy)

    @staticmethod
    def same_memory(a, b):
        return np.shares_memory(a, b) and a.size == b.size and a.dtype == b.dtype

    def release(self):
        pass


@pytest.fixture
def gxp(xp, monkeypatch):
    """A backend with CUDA graphs: CuPy or CUDA torch for real, NumPy through the stand-in; skips the others."""
    if library(xp) == "numpy":
        kits = []

        def stand_in(arrays):
            kits.append(NumpyGraphs())
            return kits[-1]

        monkeypatch.setattr(xdezero.tapes.step, "graph_kit", stand_in)
        xp.stand_in_kits = kits
        return xp
    if graph_kit([asarray(xp, np.zeros(1))]) is None:
        pytest.skip("no CUDA graphs for this backend")
    return xp


def _model_and_step(xp, model_name, make_optimizer):
    make, in_shape = MODELS[model_name]
    np.random.seed(0)
    model = make()
    model(np.zeros((1, *in_shape), dtype=np.float32))
    if library(xp) != "numpy":
        model.to_library(library(xp), device=fixture_device(xp))
    optimizer = make_optimizer().setup(model)
    return model, optimizer, train_step(model, optimizer)


def _same(xp, a, b):
    if library(xp) == "numpy":
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _compare(gxp, model_name, make_optimizer, n=12, between=None):
    """Eager and captured training side by side; `between(k, eager_parts, captured_parts)` runs before step k."""
    eager = _model_and_step(gxp, model_name, make_optimizer)
    graphed = _model_and_step(gxp, model_name, make_optimizer)
    step = capture(graphed[2])
    eager_losses, losses = [], []
    for k, (x, t) in enumerate(_batches(gxp, model_name, n=n)):
        if between is not None:
            between(k, eager, graphed)
        eager_losses.append(eager[2](x, t))
        losses.append(step(x, t))  # kept as returned: a later launch must not write over them
    for e, c in zip(eager_losses, losses):
        _same(gxp, to_numpy(e), to_numpy(c))
    for p, q in zip(eager[0].params(), graphed[0].params()):
        _same(gxp, to_numpy(p.data), to_numpy(q.data))
        _same(gxp, to_numpy(p.grad), to_numpy(q.grad))
    return step, graphed


@pytest.mark.parametrize("optimizer_name", ["SGD", "MomentumSGD"])
@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_a_graph_replay_gives_what_eager_steps_give(gxp, model_name, optimizer_name):
    step, _ = _compare(gxp, model_name, OPTIMIZERS[optimizer_name])
    assert step.graph_notes == []
    assert step.graphs == 1
    if library(gxp) == "numpy":
        (kit,) = gxp.stand_in_kits
        assert (kit.captures, kit.launches) == (1, 12 - 3)  # two recordings, one warm-up replay, then graphs


def test_adams_step_count_keeps_its_step_plain(gxp):
    step, (_, optimizer, _) = _compare(gxp, "mlp", OPTIMIZERS["Adam"])
    assert step.graphs == 0
    assert len(step.graph_notes) == 1 and "Adam.t changed during the step" in step.graph_notes[0]
    assert optimizer.t == 12  # the refused capture's count was put back, and counted once


def test_a_new_learning_rate_is_captured_again(gxp):
    def decay(k, eager, graphed):
        if k in (6, 9):
            eager[1].lr /= 2
            graphed[1].lr /= 2

    step, _ = _compare(gxp, "mlp", lambda: optimizers.MomentumSGD(lr=0.1), between=decay)
    assert step.graphs == 1 and step.graph_notes == []
    if library(gxp) == "numpy":
        assert gxp.stand_in_kits[0].captures == 3


def test_a_learning_rate_given_as_a_numpy_number_is_captured_again(gxp):
    def decay(k, eager, graphed):
        if k == 7:
            eager[1].lr = np.float32(0.05)
            graphed[1].lr = np.float32(0.05)

    step, _ = _compare(gxp, "mlp", lambda: optimizers.SGD(lr=np.float32(0.1)), between=decay)
    assert step.graphs == 1
    if library(gxp) == "numpy":
        assert gxp.stand_in_kits[0].captures == 2


def test_optimizer_state_replaced_between_calls_is_captured_again(gxp):
    def reset(k, eager, graphed):
        if k == 7:  # e.g. a checkpoint loaded: new momentum arrays
            for opt in (eager[1], graphed[1]):
                for p in list(opt.vs.keys()):
                    opt.vs[p] = opt.vs[p] * 0.0

    step, _ = _compare(gxp, "mlp", lambda: optimizers.MomentumSGD(lr=0.1), between=reset)
    assert step.graphs == 1
    if library(gxp) == "numpy":
        assert gxp.stand_in_kits[0].captures == 2


def test_a_hook_added_between_calls_is_captured_again(gxp):
    def add_hook(k, eager, graphed):
        if k == 7:
            eager[1].add_hook(optimizers.WeightDecay(0.01))
            graphed[1].add_hook(optimizers.WeightDecay(0.01))

    step, _ = _compare(gxp, "mlp", OPTIMIZERS["SGD"], between=add_hook)
    assert step.graphs == 1
    if library(gxp) == "numpy":
        assert gxp.stand_in_kits[0].captures == 2


def test_gradients_cleared_between_calls_are_set_by_the_next_step(gxp):
    def clear(k, eager, graphed):
        if k >= 6:
            eager[0].cleargrads()
            graphed[0].cleargrads()

    _compare(gxp, "mlp", OPTIMIZERS["SGD"], between=clear)  # compares the gradients each step leaves


def test_parameters_given_new_arrays_are_captured_again(gxp):
    def reset(k, eager, graphed):
        if k == 7:
            for p, q in zip(eager[0].params(), graphed[0].params()):
                p.data = p.data * 0.5
                q.data = q.data * 0.5

    step, _ = _compare(gxp, "mlp", OPTIMIZERS["SGD"], between=reset)
    assert step.graphs == 1


def test_the_parameters_are_updated_in_their_own_arrays(gxp):
    model, _, train = _model_and_step(gxp, "mlp", OPTIMIZERS["SGD"])
    step = capture(train)
    batches = _batches(gxp, "mlp", n=6)
    before = [p.data for p in model.params()]
    for x, t in batches:
        step(x, t)
    after = [p.data for p in model.params()]
    assert all(a is not b for a, b in zip(before, after))  # the caller's arrays were never written into
    for x, t in batches[:2]:
        step(x, t)
    assert all(a is b for a, b in zip(after, (p.data for p in model.params())))  # the graph's own, in place


def test_labels_out_of_range_are_refused_before_the_launch(gxp):
    model, _, train = _model_and_step(gxp, "mlp", OPTIMIZERS["SGD"])
    step = capture(train)
    batches = _batches(gxp, "mlp", n=6)
    for x, t in batches:
        step(x, t)
    assert step.graphs == 1
    saved = [to_numpy(p.data).copy() for p in model.params()]
    x, _ = batches[0]
    bad = asarray(gxp, np.array([0, 1, 2, 3] * 3))  # 3 is not a class of 3
    with pytest.raises(ValueError, match="label 3 is out of range"):
        step(x, bad)
    for p, s in zip(model.params(), saved):
        np.testing.assert_array_equal(to_numpy(p.data), s)  # nothing was updated


def test_embedding_ids_are_read_and_checked_at_each_launch(gxp):
    np.random.seed(0)
    eager_model, graphed_model = BagOfEmbeddings(), BagOfEmbeddings()
    for model in (eager_model, graphed_model):
        if library(gxp) != "numpy":
            model.to_library(library(gxp), device=fixture_device(gxp))
    for p, q in zip(eager_model.params(), graphed_model.params()):
        q.data = p.data + 0  # the same start
    eager = train_step(eager_model, optimizers.SGD(lr=0.1).setup(eager_model))
    step = capture(train_step(graphed_model, optimizers.SGD(lr=0.1).setup(graphed_model)))
    batches = _embedding_batches(gxp)
    for ids, t in batches:
        _same(gxp, to_numpy(eager(ids, t)), to_numpy(step(ids, t)))
    assert step.graphs == 1, step.graph_notes
    bad = to_numpy(batches[0][0]).copy()
    bad[0, 0] = 20  # one past the vocabulary
    with pytest.raises(ValueError, match="embed_id"):
        step(asarray(gxp, bad), batches[0][1])


def test_a_step_that_draws_random_numbers_replays_without_a_graph(gxp):
    if library(gxp) == "numpy":
        pytest.skip("dropout on NumPy draws from NumPy's global generator, which the stand-in reruns")
    *_, train = _model_and_step(gxp, "dropout", OPTIMIZERS["SGD"])
    step = capture(train)
    for x, t in _batches(gxp, "dropout", n=6):
        loss = step(x, t)
    assert np.isfinite(to_numpy(loss))
    assert step.graphs == 0 and "random numbers" in step.graph_notes[0]


def test_graphs_can_be_turned_off(gxp):
    *_, train = _model_and_step(gxp, "mlp", OPTIMIZERS["SGD"])
    step = capture(train, cuda_graphs=False)
    for x, t in _batches(gxp, "mlp", n=5):
        step(x, t)
    assert step.graphs == 0 and step.graph_notes == []


def test_capture_refuses_a_cuda_graphs_flag_that_is_not_a_bool():
    with pytest.raises(TypeError, match="cuda_graphs must be True or False"):
        capture(lambda x: x, cuda_graphs="yes")


def test_the_decorator_takes_the_flag():
    @capture(cuda_graphs=False)
    def step(x):
        return F.sum(x)

    assert step.cuda_graphs is False and step.__name__ == "step"


# --- the pieces a CuPy capture swaps in, on NumPy ------------------------------------------------------


def test_stack_copies_part_by_part_while_a_cupy_graph_is_captured():
    from xdezero.backends._graphs import capturing_cupy
    from xdezero.backends._graphs import graph_safe_stack as stack

    parts = [np.full((2, 3), k, dtype=np.float32) for k in range(4)]
    for axis in (0, 1, 2, -1):
        with capturing_cupy():
            got = stack(np, parts, axis)
        np.testing.assert_array_equal(got, np.stack(parts, axis=axis))


def test_a_product_a_captured_cupy_graph_cannot_hold_is_refused():
    from xdezero.backends._graphs import capturing_cupy
    from xdezero.backends._graphs import graph_safe_matmul as matmul

    a = np.ones((2, 3, 4), dtype=np.float32)
    with capturing_cupy(), pytest.raises(NotImplementedError, match="2-D float32/float64 products only"):
        matmul(np, a, np.ones((4, 2), dtype=np.float32))
    np.testing.assert_array_equal(matmul(np, a, np.ones((4, 2), dtype=np.float32)), np.full((2, 3, 2), 4.0))


def test_deferred_id_checks_are_collected_and_checked_later():
    from xdezero.backends import check_ids, deferring_checks

    bad = np.array([0, 5])
    deferred = []
    with deferring_checks(deferred):
        assert check_ids(bad, 0, 3, "where") is bad  # nothing checked here
    assert deferred == [([bad], [(0, 3, "id")], "where", ValueError)]
    with pytest.raises(ValueError, match="where: id 5 is out of range"):
        check_ids(bad, 0, 3, "where")  # checked again once the context is left


def test_random_draws_are_counted():
    from xdezero.backends import random_draws, uniform

    before = random_draws()
    uniform((3,), like=np.zeros(1, dtype=np.float32))
    assert random_draws() == before + 1


def test_a_capture_that_fails_is_ended_and_its_error_raised():
    from xdezero.backends._graphs import run_capture

    calls = []

    def end():
        calls.append("end")
        raise RuntimeError("capture invalidated")  # what CUDA says when a capture's work was refused

    def fails():
        raise ValueError("a host read")

    with pytest.raises(ValueError, match="a host read"):
        run_capture(lambda: calls.append("begin"), fails, end)
    assert calls == ["begin", "end"]
    assert run_capture(lambda: None, lambda: None, lambda: "graph") == "graph"


@pytest.mark.parametrize("optimizer_name", ["MomentumSGD", "Adam"])
def test_a_checkpoint_loaded_between_graph_replays_is_picked_up(gxp, optimizer_name):
    """A checkpoint saved after step 4 and loaded before step 8 rewinds parameters and optimizer state (new arrays
    for all of them): the graph's buffers must take them, as the eager step does."""
    saved = {}

    def rewind(k, eager, graphed):
        for name, (model, optimizer, _) in (("eager", eager), ("graphed", graphed)):
            if k == 4:
                saved[name] = io.BytesIO()
                xdezero.save_checkpoint(saved[name], model=model, optimizer=optimizer)
            elif k == 8:
                saved[name].seek(0)
                xdezero.load_checkpoint(saved[name], model=model, optimizer=optimizer)

    step, _ = _compare(gxp, "mlp", OPTIMIZERS[optimizer_name], between=rewind)  # the values, step by step
    if optimizer_name == "MomentumSGD":  # Adam's changing step count keeps its steps plain (graph_notes says so)
        assert step.graphs == 1, step.graph_notes


def test_the_capturing_flag_belongs_to_the_capturing_thread():
    """A thread capturing a CuPy graph takes the graph-safe paths; another thread, meanwhile, must not."""
    import threading

    from xdezero.backends._graphs import capturing_cupy, cupy_capturing

    seen = {}
    with capturing_cupy():
        seen["main"] = cupy_capturing()
        other = threading.Thread(target=lambda: seen.update(other=cupy_capturing()))
        other.start()
        other.join()
    assert seen == {"main": True, "other": False} and not cupy_capturing()
