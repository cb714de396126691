"""Indexing at the edges: boolean masks, indices past their bounds, Dask graphs kept lazy, and a scatter-add
fallback that is neither quadratic in memory nor imprecise, on every backend."""

from __future__ import annotations

import re

import numpy as np
import pytest

import xdezero.functions as F
from tests.helpers import asarray, to_numpy
from xdezero import Variable
from xdezero.testing import check_gradients

X = np.array([[0.5, 2.0, -1.0], [3.0, 1.5, 0.0], [-2.0, 4.0, 1.0]])


# --- integer indices past their bounds ----------------------------------------------------------------


@pytest.mark.parametrize(("index", "bad"), [([0, 3], 3), ([-4, 0], -4), ([[1], [9]], 9)])
def test_integer_array_index_out_of_range_raises(xp, index, bad):
    x = Variable(asarray(xp, X))
    with pytest.raises(IndexError, match=rf"^get_item: index {bad} is out of range; accepted: integers in \[-3, 2\]$"):
        F.get_item(x, asarray(xp, np.array(index)))


@pytest.mark.parametrize(("index", "axis", "bad"), [(3, 0, 3), ((1, -4), 1, -4), ((..., 3), 1, 3)])
def test_python_int_index_out_of_range_raises(xp, index, axis, bad):
    # JAX clamps even a static int: x[3] used to be x[2].
    x = Variable(asarray(xp, X))
    message = f"get_item: axis-{axis} index {bad} is out of range; accepted: integers in [-3, 2]"
    with pytest.raises(IndexError, match=f"^{re.escape(message)}$"):
        x[index]
    np.testing.assert_array_equal(to_numpy(x[-3, 2]), X[-3, 2])


def test_tuple_of_index_arrays_out_of_range_raises(xp):
    # JAX clamps an out-of-range gather index: x[[0], [5]] used to return x[0, 2] without a word.
    x = Variable(asarray(xp, np.ones((3, 4, 2))))
    rows, cols = asarray(xp, np.array([0, 2])), asarray(xp, np.array([1, 4]))
    with pytest.raises(IndexError, match=r"get_item: axis-1 index 4 is out of range; .* \[-4, 3\]"):
        F.get_item(x, (rows, cols))
    with pytest.raises(IndexError, match=r"get_item: axis-2 index 4 is out of range; .* \[-2, 1\]"):
        F.get_item(x, (Ellipsis, cols))
    y = F.get_item(Variable(asarray(xp, X)), (rows, asarray(xp, np.array([2, -3]))))
    np.testing.assert_array_equal(to_numpy(y), X[[0, 2], [2, -3]])


# --- boolean masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask_of",
    [
        pytest.param(lambda x: x > 1, id="elementwise"),
        pytest.param(lambda x: x[:, 0] > 0, id="rows"),
        pytest.param(lambda x: x > 100, id="selects-nothing"),
        pytest.param(lambda x: x > -100, id="selects-all"),
    ],
)
def test_boolean_mask_forward_and_backward_match_numpy(xp, mask_of):
    gy_seed = np.random.default_rng(0)
    x = Variable(asarray(xp, X))
    y = x[mask_of(x.data)]
    expected = X[mask_of(X)]
    np.testing.assert_array_equal(to_numpy(y), expected)
    gy = gy_seed.standard_normal(expected.shape)
    y.grad = Variable(asarray(xp, gy))
    y.backward()
    gx = np.zeros_like(X)
    gx[mask_of(X)] = gy
    np.testing.assert_array_equal(to_numpy(x.grad), gx)
    assert x.grad.dtype == x.dtype


def test_boolean_mask_second_derivatives(xp):
    mask = asarray(xp, X > 1)
    check_gradients(lambda x: F.get_item(x, mask) ** 3, asarray(xp, X), order=2, name="get_item[mask]")


def test_boolean_mask_of_the_wrong_shape_is_an_index_error(xp):
    x = Variable(asarray(xp, X))
    with pytest.raises(IndexError, match=r"get_item: a boolean mask of shape \(2,\) does not match x of shape"):
        x[asarray(xp, np.array([True, False]))]


def test_boolean_mask_on_dask_is_a_clear_error():
    da = pytest.importorskip("dask.array")
    x = Variable(da.from_array(X, chunks=(1, -1)))
    with pytest.raises(ValueError, match=r"get_item: a boolean mask on this lazy array gives a result of unknown"):
        x[x.data > 1]
