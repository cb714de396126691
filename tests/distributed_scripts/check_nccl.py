"""One NCCL rank (or more, under mpiexec) all-reduces CuPy gradients; rank 0 prints 'ok N'."""

from __future__ import annotations

import cupy
import numpy as np

import xdezero.layers as L
from xdezero import Variable
from xdezero import distributed as dist
from xdezero.models import Sequential


def main() -> None:
    comm = dist.create_communicator("nccl")
    r, n = comm.rank, comm.size
    np.random.seed(r)
    model = Sequential(L.Linear(4, in_size=3), L.Linear(2, in_size=4, dtype=np.float64)).to_gpu()
    comm.bcast_data(model)
    for p in model.params():
        assert isinstance(p.data, cupy.ndarray)
        p.grad = Variable(cupy.full(p.data.shape, float(r + 1), dtype=p.data.dtype))
    comm.allreduce_grad(model)
    for p in model.params():
        assert isinstance(p.grad.data, cupy.ndarray), type(p.grad.data)
        cupy.testing.assert_allclose(p.grad.data, (n + 1) / 2)
    total = comm.allreduce(cupy.arange(3.0) * (r + 1))
    cupy.testing.assert_allclose(total, cupy.arange(3.0) * n * (n + 1) / 2)
    assert comm.allreduce(1) == n and comm.allreduce(np.ones(2), "max").tolist() == [1.0, 1.0]
    comm.barrier()
    if r == 0:
        print(f"ok {n}", flush=True)


if __name__ == "__main__":
    main()
