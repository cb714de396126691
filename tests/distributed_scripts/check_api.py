"""Collectives of every kind under `mpiexec -n N` (or torchrun): each rank asserts, rank 0 prints 'ok N'.

An assertion failing on any rank ends the job through the communicator's abort hook, with a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

import xdezero.layers as L
from xdezero import Parameter, Variable
from xdezero import distributed as dist
from xdezero.datasets import Spiral
from xdezero.models import Sequential


def check_numbers(comm) -> None:
    r, n = comm.rank, comm.size
    assert comm.allreduce(r + 1) == n * (n + 1) // 2
    assert isinstance(comm.allreduce(r), int)
    assert comm.allreduce(r, "mean") == (n - 1) / 2
    assert comm.allreduce(float(r), "max") == n - 1
    assert comm.allreduce(np.float32(r), "min") == 0.0
    assert comm.allreduce({"a": r, "b": 1.0}, "sum") == {"a": n * (n - 1) / 2, "b": float(n)}


def check_arrays(comm, xp, name: str) -> None:
    r, n = comm.rank, comm.size
    a = xp.reshape(xp.arange(6, dtype=xp.float64), (2, 3)) * (r + 1)
    total = comm.allreduce(a)
    assert type(total) is type(a), f"{name}: allreduce returned {type(total)}"
    expected = np.arange(6.0).reshape(2, 3) * n * (n + 1) / 2
    np.testing.assert_allclose(np.asarray(total), expected, err_msg=name)
    np.testing.assert_allclose(np.asarray(comm.allreduce(a, "mean")), expected / n, err_msg=name)
    np.testing.assert_array_equal(np.asarray(comm.allreduce(a, "max")), np.arange(6.0).reshape(2, 3) * n)
    ints = comm.allreduce(xp.asarray([r, 2 * r], dtype=xp.int64), "mean")
    np.testing.assert_allclose(np.asarray(ints), [(n - 1) / 2, n - 1], err_msg=name)
    np.testing.assert_array_equal(np.asarray(comm.bcast(a, root=n - 1)), np.arange(6.0).reshape(2, 3) * n)
    assert np.asarray(a)[0, 1] == r + 1, f"{name}: the input array was changed"


def check_variables(comm) -> None:
    n = comm.size
    x = Variable(np.array([1.0, 2.0]) * (comm.rank + 1))
    y = comm.allreduce(x, "sum")
    assert isinstance(y, Variable)
    (y * y).sum().backward()  # d/dx_r Σ_s Σ y² = Σ_s 2y = 2n·y
    np.testing.assert_allclose(x.grad.data, 2 * n * y.data)
    m = comm.allreduce(Variable(np.array(float(comm.rank))), "max")
    assert float(m.data) == n - 1


def check_running_statistics(comm) -> None:
    r = comm.rank
    np.random.seed(0)
    model = Sequential(L.Linear(3, in_size=2), L.BatchNorm(), L.Linear(2, in_size=3), L.BatchNorm())
    comm.bcast_data(model)
    model(np.random.default_rng(r).standard_normal((8, 2)) + r)  # train mode: each rank's own statistics
    stats = [p for p in model.params() if p.name in ("avg_mean", "avg_var")]
    assert len(stats) == 4
    expected = [comm.allreduce(p.data, "mean") for p in stats]
    gamma = model.layers[1].gamma.data.copy()
    comm.allreduce_persistent(model)
    for p, e in zip(stats, expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-12, err_msg=p.name)
    np.testing.assert_array_equal(model.layers[1].gamma.data, gamma)  # only the statistics


def check_models(comm) -> None:
    r, n = comm.rank, comm.size
    np.random.seed(r)  # different weights on every rank
    model = Sequential(L.Linear(4, in_size=3), L.Linear(2, in_size=4, dtype=np.float64))
    comm.bcast_data(model)
    for name, p in model.named_params():
        spread = comm.allreduce(p.data, "max") - comm.allreduce(p.data, "min")
        assert not spread.any(), f"{name} differs after bcast_data"
    params = dict(model.named_params())
    for p in params.values():
        p.grad = Variable(np.full(p.data.shape, float(r), dtype=p.data.dtype))
    params["l0/b"].grad = None if r == 0 else params["l0/b"].grad  # missing on rank 0: counts as zero
    params["l1/b"].grad = None  # missing everywhere: stays missing
    comm.allreduce_grad(model)
    np.testing.assert_allclose(params["l0/W"].grad.data, (n - 1) / 2)
    assert params["l0/W"].grad.data.dtype == np.float32 and params["l1/W"].grad.data.dtype == np.float64
    if n > 1:  # rank 0 contributed zeros
        np.testing.assert_allclose(params["l0/b"].grad.data, (n - 1) / 2)
    else:  # missing on the only rank: missing everywhere
        assert params["l0/b"].grad is None
    assert params["l1/b"].grad is None

    # A model that differs between ranks is an error on every rank, not a corrupted broadcast.
    if n > 1:
        odd = Sequential(L.Linear(4 + (r == 1), in_size=3))
        try:
            comm.bcast_data(odd)
        except ValueError as e:
            assert "differ between ranks" in str(e), e
        else:
            raise AssertionError("bcast_data accepted models of different shapes")

    # Parameters not created yet are skipped, not broadcast.
    lazy = Sequential(L.Linear(2))
    comm.bcast_data(lazy)
    assert all(p.data is None for p in lazy.params() if p.name == "W")
    assert isinstance(Parameter(np.zeros(1)), Variable)


def check_scatter(comm) -> None:
    data = Spiral()
    for shuffle in (False, True):
        for remainder in ("pad", "drop"):
            shard = dist.scatter_dataset(list(range(301)), comm, shuffle=shuffle, seed=3, remainder=remainder)
            mine = np.asarray([shard[i] for i in range(len(shard))])
            sizes = comm.allreduce(np.asarray([len(shard), -len(shard)]), "max")
            assert sizes[0] == -sizes[1], "shards of different sizes"
            counts = comm.allreduce(np.bincount(mine, minlength=301), "sum")
            if remainder == "drop":
                assert counts.max() == 1 and counts.sum() == 301 - 301 % comm.size
            else:
                assert counts.min() >= 1 and counts.sum() == len(shard) * comm.size
                assert (counts > 1).sum() == len(shard) * comm.size - 301
    shard = dist.scatter_dataset(data, comm, shuffle=True, seed=None)
    x0 = shard[0][0]
    assert x0.shape == (2,)
    first = np.asarray([shard.indices[0]])
    spread = comm.allreduce(first, "max") - comm.allreduce(first, "min")
    assert comm.size == 1 or spread[0] != 0, "shards start at the same example"


def main() -> None:
    comm = dist.create_communicator(sys.argv[1] if len(sys.argv) > 1 else "auto")
    check_numbers(comm)
    libraries = [("numpy", "array_api_compat.numpy"), ("array_api_strict", "array_api_strict")]
    libraries += [("torch", "array_api_compat.torch"), ("jax", "jax.numpy"), ("dask", "array_api_compat.dask.array")]
    for name, module in libraries:
        if importlib.util.find_spec(name) is not None:
            if name == "jax":
                import jax

                jax.config.update("jax_enable_x64", True)
            check_arrays(comm, importlib.import_module(module), name)
    check_variables(comm)
    check_models(comm)
    check_running_statistics(comm)
    check_scatter(comm)
    comm.barrier()
    if comm.rank == 0:
        print(f"ok {comm.size}", flush=True)


if __name__ == "__main__":
    main()
