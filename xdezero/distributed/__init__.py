"""Data-parallel training over several processes and machines (ChainerMN's names).

    from xdezero import distributed as dist
    comm = dist.create_communicator()           # MPI under mpiexec/srun, torch.distributed under torchrun, else 1
    train = dist.scatter_dataset(Spiral(), comm, shuffle=True, seed=0)
    opt = dist.create_multi_node_optimizer(optimizers.SGD(lr), comm).setup(model)
    ...                                         # loss.backward(); opt.update(): gradients averaged over ranks
    if comm.rank == 0: model.save_weights("model.npz")

Importing this package imports none of mpi4py, CuPy or torch: each is imported by its communicator only.
See docs/distributed.md for launching on clusters and the cost of the all-reduce.
"""

from xdezero.distributed.checkpoint import load_checkpoint, save_checkpoint
from xdezero.distributed.communicator import Communicator, ReduceOp
from xdezero.distributed.create import create_communicator, detect_launcher
from xdezero.distributed.dataset import SubDataset, scatter_dataset
from xdezero.distributed.evaluator import create_multi_node_evaluator
from xdezero.distributed.optimizer import MultiNodeOptimizer, create_multi_node_optimizer
from xdezero.distributed.single import SingleCommunicator

__all__ = [
    "Communicator",
    "MultiNodeOptimizer",
    "ReduceOp",
    "SingleCommunicator",
    "SubDataset",
    "create_communicator",
    "create_multi_node_evaluator",
    "create_multi_node_optimizer",
    "detect_launcher",
    "load_checkpoint",
    "save_checkpoint",
    "scatter_dataset",
]
