"""Backends: namespace lookup, validation, device moves and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import asarray, library
from xdezero import Variable
from xdezero.backends import (
    array_namespace,
    get_array_module,
    is_array,
    is_cupy_available,
    library_name,
    scatter_add,
    to_cpu,
    to_device,
    to_gpu,
)


def test_namespace_is_cached_and_library_named(xp):
    a = asarray(xp, [1.0, 2.0])
    assert array_namespace(a) is array_namespace(a)
    assert library_name(a) == library(xp)
    assert is_array(a)
    assert not is_array(1.0) and not is_array([1.0])


def test_scatter_add_accumulates_repeated_indices(xp):
    values = asarray(xp, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    index = asarray(xp, np.array([0, 2, 0]))
    out = scatter_add((3, 2), index, values)
    from tests.helpers import to_numpy

    np.testing.assert_allclose(to_numpy(out), [[6.0, 8.0], [0.0, 0.0], [3.0, 4.0]])
    out = scatter_add((2, 3), (slice(None), slice(1, 3)), asarray(xp, np.ones((2, 2))))
    np.testing.assert_allclose(to_numpy(out), [[0, 1, 1], [0, 1, 1]])


def test_get_array_module_for_dezero_code():
    assert get_array_module(np.ones(2)) is np
    assert get_array_module(Variable(np.ones(2))) is np
    assert get_array_module(1.0) is np


def test_to_cpu_keeps_numpy_and_normalises_scalars():
    a = np.ones(2)
    assert to_cpu(a) is a
    assert isinstance(to_cpu(np.float32(1.0)), np.ndarray)
    assert to_device(a, "cpu") is a


@pytest.mark.skipif(is_cupy_available(), reason="a GPU is usable here")
def test_to_gpu_without_cupy_or_gpu_is_a_clear_error():
    x = Variable(np.ones(2))
    with pytest.raises(RuntimeError, match="CuPy"):
        x.to_gpu()
    assert isinstance(x.data, np.ndarray)  # unchanged


def test_to_gpu_rejects_non_arrays():
    with pytest.raises(TypeError, match="to_gpu argument must be an array-API array"):
        to_gpu([1.0, 2.0])


def test_torch_to_gpu_without_cuda_is_a_clear_error():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(RuntimeError, match="CUDA"):
        to_gpu(torch.ones(2))


@pytest.mark.parametrize(
    ("input_dtypes", "expected"),
    [
        (["float32", "int64"], "float32"),  # a float32 loss over integer labels
        (["float16"], "float16"),
        (["float16", "float32"], "float32"),  # the widest floating input
        (["float64", "float32"], "float64"),
        (["int64"], "float64"),  # an integer mean is a float64 on purpose
    ],
)
def test_keep_input_precision_narrows_a_widened_scalar_to_the_widest_floating_input(input_dtypes, expected):
    """What the engine applies to an op's float64 scalar under NumPy 1.x (whose promotion widened it)."""
    from xdezero.backends import keep_input_precision

    inputs = [np.ones(2, dtype=d) for d in input_dtypes]
    narrowed = keep_input_precision(np.float64(1.0) / 3, inputs)
    assert narrowed.dtype == np.dtype(expected)
    assert narrowed == np.dtype(expected).type(1.0 / 3)


# --- what the shared modules of backends/ ask each library's backend ----------------------------------------


def test_memory_keys_tell_views_from_copies_where_the_library_can(xp):
    from xdezero.backends import memory_key

    a = asarray(xp, np.arange(6.0))
    copy = xp.asarray(a, copy=True)
    if library(xp) in ("numpy", "torch", "cupy"):  # views seen: the owner's buffer or storage
        assert memory_key(a[1:]) == memory_key(a) != memory_key(copy)
    elif library(xp) in ("jax", "dask"):  # immutable: every array its own key
        assert memory_key(a[1:]) != memory_key(a) != memory_key(copy)
    else:  # views unseen: one key for all the library's arrays
        assert memory_key(a) == memory_key(copy)


def test_graph_kit_asks_the_backend_only_for_arrays_of_one_library_and_device(monkeypatch):
    from xdezero.backends import Backend, backend_named, graph_kit

    asked = []
    monkeypatch.setattr(type(backend_named("numpy")), "graph_kit", lambda self, device: asked.append(device) or "kit")
    a = np.zeros(2)
    assert graph_kit([]) is None
    assert graph_kit([a, np.ones(3)]) == "kit" and asked == ["cpu"]
    strict = pytest.importorskip("array_api_strict")
    assert graph_kit([a, strict.asarray([1.0])]) is None and asked == ["cpu"]
    assert Backend().graph_kit("cpu") is None  # no CUDA graphs unless a library's backend has them


def test_bfloat16_bits_placed_in_a_library_without_bfloat16_is_a_clear_error():
    from xdezero.backends import Bits, place

    strict = pytest.importorskip("array_api_strict")
    bits = Bits(np.zeros(2, dtype=np.uint16), "bfloat16")
    with pytest.raises(TypeError, match="array_api_strict has no bfloat16 dtype to place this array in"):
        place(bits, like=strict.asarray([1.0]))
