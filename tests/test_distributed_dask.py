"""Dask, the other engine: a full-batch gradient over a chunked array, computed on a dask.distributed cluster."""

from __future__ import annotations

import numpy as np
import pytest

import xdezero.functions as F
import xdezero.layers as L
from xdezero.models import Sequential

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


def _model() -> Sequential:
    np.random.seed(0)
    return Sequential(L.Linear(16, in_size=4, dtype=np.float64), F.tanh, L.Linear(3, in_size=16, dtype=np.float64))


def _gradients(x, t) -> tuple[float, list]:
    model = _model()
    loss = F.softmax_cross_entropy(model(x), t)
    model.cleargrads()
    loss.backward()
    return loss.data, [p.grad.data for p in model.params()]


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_full_batch_gradient_on_a_local_cluster_equals_numpy(client):
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((4000, 4)), rng.integers(0, 3, 4000)
    expected_loss, expected = _gradients(x, t)

    # Row chunks: each worker holds part of the batch; forward and backward build one lazy graph whose
    # reductions over rows (the loss, every weight gradient) combine the chunks' partial sums.
    lazy_loss, lazy = _gradients(da.from_array(x, chunks=(500, -1)), da.from_array(t, chunks=500))
    assert all(isinstance(g, da.Array) for g in lazy)
    futures = client.compute([lazy_loss, *lazy])
    loss, *grads = client.gather(futures)
    assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
