"""Bad inputs raise errors that name the function, the shapes or dtypes, and what is accepted."""

from __future__ import annotations

import numpy as np
import pytest

import xdezero
import xdezero.functions as F
from tests.helpers import asarray
from xdezero import Variable


def _a(xp, shape, dtype="float64"):
    return asarray(xp, np.ones(shape), dtype=dtype)


ERRORS = [
    (
        "matmul_inner",
        lambda xp: F.matmul(_a(xp, (2, 3)), _a(xp, (4, 5))),
        ValueError,
        r"matmul: shapes \(2, 3\) and \(4, 5\) do not align",
    ),
    (
        "linear_inner",
        lambda xp: F.linear(_a(xp, (2, 3)), _a(xp, (4, 5))),
        ValueError,
        r"linear: x of shape \(2, 3\) and W of shape \(4, 5\) do not align",
    ),
    (
        "linear_bias",
        lambda xp: F.linear(_a(xp, (2, 3)), _a(xp, (3, 5)), _a(xp, (4,))),
        ValueError,
        r"linear: b must have shape \(5,\)",
    ),
    ("linear_W_ndim", lambda xp: F.linear(_a(xp, (2, 3)), _a(xp, (3,))), ValueError, r"linear: W must be a 2-D"),
    (
        "sce_label_count",
        lambda xp: F.softmax_cross_entropy(_a(xp, (4, 3)), _a(xp, (5,), "int64")),
        ValueError,
        r"softmax_cross_entropy: labels t of shape \(5,\) do not match the batch of x \(4, 3\): expected 4 labels",
    ),
    (
        "sce_simple_label_count",
        lambda xp: F.softmax_cross_entropy_simple(_a(xp, (4, 3)), _a(xp, (3,), "int32")),
        ValueError,
        r"softmax_cross_entropy_simple: labels t of shape \(3,\) do not match the batch",
    ),
    (
        "sce_float_labels",
        lambda xp: F.softmax_cross_entropy(_a(xp, (4, 3)), _a(xp, (4,))),
        TypeError,
        r"softmax_cross_entropy: labels t must be an integer array",
    ),
    (
        "sce_x_ndim",
        lambda xp: F.softmax_cross_entropy(_a(xp, (4,)), _a(xp, (4,), "int64")),
        ValueError,
        r"softmax_cross_entropy: x must be 2-D \(batch, classes\), got shape \(4,\)",
    ),
    (
        "accuracy_label_count",
        lambda xp: F.accuracy(_a(xp, (4, 3)), _a(xp, (2,), "int64")),
        ValueError,
        r"accuracy: labels t of shape \(2,\) do not match the batch of x \(4, 3\)",
    ),
    (
        "sigmoid_ce_targets",
        lambda xp: F.sigmoid_cross_entropy(_a(xp, (4, 1)), _a(xp, (3,), "int64")),
        ValueError,
        r"sigmoid_cross_entropy: targets of shape \(3,\) do not match the input of shape \(4, 1\)",
    ),
    (
        "mse_shapes",
        lambda xp: F.mean_squared_error(_a(xp, (4, 1)), _a(xp, (4,))),
        ValueError,
        r"mean_squared_error: the prediction has shape \(4, 1\) and the target \(4,\); broadcasting them gives "
        r"\(4, 4\)",
    ),
    (
        "mse_shapes_that_do_not_broadcast",
        lambda xp: F.mean_squared_error(_a(xp, (3, 2)), _a(xp, (4,))),
        ValueError,
        r"mean_squared_error: the prediction has shape \(3, 2\) and the target \(4,\), which do not broadcast$",
    ),
    (
        "sum_axis",
        lambda xp: F.sum(_a(xp, (2, 3)), axis=2),
        ValueError,
        r"sum: axis 2 is out of range for an array of 2 dimensions",
    ),
    (
        "softmax_axis",
        lambda xp: F.softmax(_a(xp, (2, 3)), axis=-3),
        ValueError,
        r"softmax: axis -3 is out of range for an array of 2 dimensions",
    ),
    (
        "log_softmax_axis",
        lambda xp: F.log_softmax(_a(xp, (2,)), axis=1),
        ValueError,
        r"log_softmax: axis 1 is out of range for an array of 1 dimensions",
    ),
    (
        "max_axis",
        lambda xp: F.max(_a(xp, (2, 3)), axis=5),
        ValueError,
        r"max: axis 5 is out of range for an array of 2 dimensions",
    ),
    (
        "min_axis",
        lambda xp: F.min(_a(xp, (2, 3)), axis=(0, 2)),
        ValueError,
        r"min: axis 2 is out of range for an array of 2 dimensions",
    ),
    ("average_axis", lambda xp: F.average(_a(xp, (2, 3)), axis=3), ValueError, r"sum: axis 3 is out of range"),
    (
        "expand_dims_axis",
        lambda xp: F.expand_dims(_a(xp, (2, 3)), 4),
        ValueError,
        r"expand_dims: axis 4 is out of range for an array of 2 dimensions",
    ),
    (
        "reshape_size",
        lambda xp: F.reshape(_a(xp, (2, 3)), (4, 2)),
        ValueError,
        r"reshape: cannot reshape an array of size 6 into shape \(4, 2\)",
    ),
    (
        "reshape_method",
        lambda xp: Variable(_a(xp, (2, 3))).reshape(5, -1),
        ValueError,
        r"reshape: cannot reshape an array of size 6 into shape \(5, -1\)",
    ),
    (
        "embed_id_float_ids",
        lambda xp: F.embed_id(_a(xp, (3,)), _a(xp, (4, 2))),
        TypeError,
        r"embed_id: x must be an integer array of ids",
    ),
    (
        "embed_id_W_ndim",
        lambda xp: F.embed_id(_a(xp, (3,), "int64"), _a(xp, (4,))),
        ValueError,
        r"embed_id: W must be a 2-D",
    ),
    (
        "get_item_float_index",
        lambda xp: F.get_item(_a(xp, (3, 2)), _a(xp, (2,))),
        IndexError,
        r"get_item: index arrays must have an integer dtype",
    ),
    (
        "batch_norm_ndim",
        lambda xp: F.batch_norm(_a(xp, (2, 3, 4)), *[_a(xp, (3,))] * 4),
        ValueError,
        r"batch_norm: x must be 2-D \(N, C\) or 4-D \(N, C, H, W\), got shape \(2, 3, 4\)",
    ),
    (
        "batch_norm_gamma",
        lambda xp: F.batch_norm(_a(xp, (2, 3)), _a(xp, (4,)), *[_a(xp, (3,))] * 3),
        ValueError,
        r"batch_norm: gamma must have shape \(3,\) for x of shape \(2, 3\), got \(4,\)",
    ),
    (
        "batch_norm_stats_none",
        lambda xp: F.batch_norm(_a(xp, (2, 3)), _a(xp, (3,)), _a(xp, (3,)), xdezero.Parameter(None), _a(xp, (3,))),
        TypeError,
        r"batch_norm: mean must be an array or a Variable holding one",
    ),
    (
        "dropout_ratio",
        lambda xp: F.dropout(_a(xp, (2, 3)), 1.0),
        ValueError,
        r"dropout: dropout_ratio must be in \[0, 1\), got 1.0",
    ),
    (
        "clip_bounds",
        lambda xp: F.clip(_a(xp, (2,)), 1.0, -1.0),
        ValueError,
        r"clip: x_min \(1.0\) must not exceed x_max \(-1.0\)",
    ),
    ("flatten_0d", lambda xp: F.flatten(_a(xp, ())), ValueError, r"flatten: expected an array with a batch axis"),
]


@pytest.mark.parametrize(("name", "call", "error", "match"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_message(xp, name, call, error, match):
    with pytest.raises(error, match=match):
        call(xp)
