"""Fused kernels for the hot composites: one table, (library, composite) -> implementation.

On a GPU every array operation is a kernel launch (about 10-15 µs from Python on CuPy), and on JAX an eager
operation is one dispatch (about 20 µs), so a composite written as a chain of standard operations (sigmoid as
tanh, multiply, add; an Adam update as a dozen of them) costs more in launches than in arithmetic at small batch
sizes. Each library's backend supplies its implementations (`Backend.composites`): CuPy one kernel per composite
(backends/_cupy.py), JAX one jitted call (backends/_jax.py), NumPy the arithmetic written with `out=` into reused
buffers (backends/_numpy.py). A library without one, and arrays an implementation does not cover, run the
portable array-API code that the op itself passes in, unchanged.

An implementation is called as `impl(portable, xp, *args)`: it may hand any call back to `portable(xp, *args)`.
`LAUNCHES` says how many kernels each CuPy implementation launches (the kernel counter in benchmarks/ reports
that number for a fused composite).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xdezero.backends._backends import backend_named
from xdezero.backends._namespace import library_name

# (library, composite) -> implementation; filled lazily per library by its backend, or by `register`.
TABLE: dict[tuple[str, str], Callable] = {}
# (composite, array type) -> implementation or None: the hot path reads only this.
_BY_TYPE: dict[tuple[str, type], Callable | None] = {}
_LOADED: set[str] = set()

# Kernels launched by each CuPy implementation (the portable chains launch many more; see count_kernels.py).
LAUNCHES = {
    "sigmoid": 1,
    "sigmoid_grad": 1,
    "softmax_cross_entropy": 5,  # row max, row sum of exp, p, per-row loss, batch sum
    "softmax_cross_entropy_grad": 1,
    "sgd": 1,
    "momentum_sgd": 1,
    "adam": 1,
    "batch_norm_statistics": 1,
}
# Every composite an op routes through the table: the CuPy kernels' above, and those only NumPy (in place) or JAX
# (compiled) have an entry for.
COMPOSITES = frozenset(LAUNCHES) | {
    "relu",
    "matmul",
    "spread_slots",
    "linear",
    "linear_grad",
    "linear_grad_w",
    "sum_to",
}


def fused(name: str, portable: Callable, xp: Any, *args: Any) -> Any:
    """portable(xp, *args), or the fused implementation of composite `name` for the library of args[0]."""
    key = (name, type(args[0]))
    try:
        impl = _BY_TYPE[key]
    except KeyError:
        impl = _BY_TYPE[key] = _resolve(name, args[0])
    return portable(xp, *args) if impl is None else impl(portable, xp, *args)


def _resolve(name: str, x: Any) -> Callable | None:
    library = library_name(x)
    if library not in _LOADED:
        _LOADED.add(library)
        for composite, impl in backend_named(library).composites().items():
            TABLE.setdefault((library, composite), impl)
    return TABLE.get((library, name))


def register(library: str, name: str, impl: Callable | None) -> Callable | None:
    """Make `impl` the implementation of composite `name` for `library` (None removes it); returns the previous."""
    if name not in COMPOSITES:
        raise ValueError(f"register: unknown composite {name!r}; known: {', '.join(sorted(COMPOSITES))}")
    previous = TABLE.pop((library, name), None)
    if impl is not None:
        TABLE[(library, name)] = impl
    _LOADED.add(library)  # what is registered by hand is not overwritten by the library's own table later
    _BY_TYPE.clear()
    return previous
