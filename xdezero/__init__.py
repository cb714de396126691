"""xdezero: DeZero's define-by-run autodiff engine over any array-API array."""

# Submodules, so that `import xdezero` gives `xdezero.functions`, `xdezero.layers`, ... as in DeZero.
from xdezero import (
    backends,
    cuda,
    dataloaders,
    datasets,
    functions,
    functions_conv,
    layers,
    models,
    optimizers,
    transforms,
    utils,
)
from xdezero._config import Config, no_grad, test_mode, using_config
from xdezero.backends import seed, tune_allocator
from xdezero.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from xdezero.core import Function, Parameter, Variable, as_array, as_variable, setup_variable
from xdezero.dataloaders import DataLoader, SeqDataLoader
from xdezero.datasets import Dataset
from xdezero.layers import Layer
from xdezero.models import Model
from xdezero.optimizers import Optimizer
from xdezero.tapes import CaptureError, capture

__version__ = "0.1.0"

# XDEZERO_MALLOC=tuned asks for glibc's malloc to keep large temporaries in the process (backends/_allocator.py).
backends.apply_allocator_setting()

is_simple_core = False  # DeZero's flag for its step-by-step core (steps 1-32); this is the full one


__all__ = [
    "CaptureError",
    "Config",
    "DataLoader",
    "Dataset",
    "Function",
    "Layer",
    "Model",
    "Optimizer",
    "Parameter",
    "SeqDataLoader",
    "Variable",
    "__version__",
    "as_array",
    "as_variable",
    "capture",
    "cuda",
    "dataloaders",
    "datasets",
    "functions",
    "functions_conv",
    "is_simple_core",
    "layers",
    "load_checkpoint",
    "models",
    "no_grad",
    "optimizers",
    "read_checkpoint",
    "save_checkpoint",
    "seed",
    "setup_variable",
    "test_mode",
    "tune_allocator",
    "transforms",
    "using_config",
    "utils",
]
