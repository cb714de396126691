"""xdezero: DeZero's define-by-run autodiff engine over any array-API array."""

from xdezero._config import Config, no_grad, test_mode, using_config
from xdezero.core import Function, Parameter, Variable, as_array, as_variable

__version__ = "0.1.0"

__all__ = [
    "Config",
    "Function",
    "Parameter",
    "Variable",
    "__version__",
    "as_array",
    "as_variable",
    "no_grad",
    "test_mode",
    "using_config",
]
