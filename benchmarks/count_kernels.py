"""Kernels per training step, counted on the CPU: the array operations one step executes on array-api-strict.

    python benchmarks/count_kernels.py                 # MLP and CNN, portable and fused, as a table
    python benchmarks/count_kernels.py --json out.json

On a GPU each array operation that computes elements is one kernel launch (~10-15 µs from Python on CuPy), so
at small batch sizes their number sets the step time. This script runs one step of each workload on
array-api-strict arrays with every function of the `array_api_strict` namespace and every operator of its
Array class wrapped by a counter. A call counts as one kernel when it writes elements: an in-place operator or
`__setitem__`, or a call whose result is an array sharing no memory with its inputs (a reshape, transpose,
broadcast or basic slice is a view: no kernel; `empty` allocates only: no kernel). Calls made from inside a
counted call are not counted again. `__bool__`, `__int__`, `__float__`, `__index__` and DLPack exports are
counted apart, as host transfers (one device synchronisation each).

`fused`: the composites that xdezero.backends._fused fuses on CuPy (sigmoid and its gradient, softmax
cross-entropy and its gradient, the optimizer updates, batch-norm's running statistics) are registered for
array-api-strict as stand-ins that run the portable code but count as the kernels the CuPy implementation
launches (`_fused.LAUNCHES`): the count a CuPy step would make.

Convolutions differ by library: array-api-strict takes the portable im2col/col2im (concat padding, col2im by
dilation and sums), while CuPy writes padding and overlapping windows into one buffer in place (fewer kernels),
so the CNN count here is an upper bound for CuPy.

Workloads (float32, batch 100 for the MLP, 128 for the CNN; the second step is counted, after lazy
initialisation): mlp 784 → 1000 → 1000 → 10, sigmoid, softmax cross-entropy, SGD; cnn as in bench_training.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
from collections import Counter

import array_api_strict
import numpy as np
from _workloads import CNN, data, xdezero_step
from array_api_strict._array_object import Array

import xdezero.backends._fused as _fused

_NOT_ARRAY_FUNCTIONS = {"finfo", "iinfo", "isdtype", "result_type", "can_cast", "Device"}
_NO_KERNEL = {"empty", "empty_like"}  # allocation only
_BINARY = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift")
_INPLACE = {"__setitem__"} | {f"__i{op}__" for op in _BINARY}
_HOST = {"__bool__", "__int__", "__float__", "__index__", "__complex__", "__dlpack__", "__array__"}
_COMPARISONS = {"__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"}
_UNARY = {"__neg__", "__pos__", "__abs__", "__invert__", "__getitem__", "to_device"}
_OPERATORS = _INPLACE | _HOST | _COMPARISONS | _UNARY | {f"__{r}{op}__" for r in ("", "r") for op in _BINARY}


def _buffers(args) -> list:
    found = []
    for a in args:
        if isinstance(a, Array):
            found.append(a._array)
        elif isinstance(a, list | tuple):
            found.extend(_buffers(a))
    return found


class KernelCounter:
    """Counts kernels (and host transfers) per operation name while `counting()` is active."""

    def __init__(self) -> None:
        self.kernels: Counter = Counter()
        self.host_transfers = 0
        self._active = False
        self._depth = 0
        self._saved: list = []

    def _record(self, name: str, args: tuple, result) -> None:
        if name in _HOST:
            self.host_transfers += 1
        elif name in _INPLACE:
            self.kernels[name] += 1
        elif name not in _NO_KERNEL:
            results = result if isinstance(result, tuple | list) else (result,)
            outs = [r._array for r in results if isinstance(r, Array)]
            ins = _buffers(args)
            if any(o.size and not any(np.may_share_memory(o, i) for i in ins) for o in outs):
                self.kernels[name] += 1

    def _wrap(self, name: str, fn):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            if not self._active or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            try:
                result = fn(*args, **kwargs)
            finally:
                self._depth -= 1
            self._record(name, args, result)
            return result

        return counted

    def install(self) -> None:
        """Wrap the array_api_strict namespace functions and the Array operators (undone by `uninstall`)."""
        for name in array_api_strict.__all__:
            fn = getattr(array_api_strict, name)
            if callable(fn) and not isinstance(fn, type) and name not in _NOT_ARRAY_FUNCTIONS:
                self._saved.append((array_api_strict, name, fn))
                setattr(array_api_strict, name, self._wrap(name, fn))
        for sub in ("linalg",):
            module = getattr(array_api_strict, sub)
            for name in getattr(module, "__all__", ()):
                fn = getattr(module, name)
                if callable(fn):
                    self._saved.append((module, name, fn))
                    setattr(module, name, self._wrap(f"{sub}.{name}", fn))
        for name in _OPERATORS:
            fn = getattr(Array, name, None)
            if fn is not None:
                self._saved.append((Array, name, fn))
                setattr(Array, name, self._wrap(name, fn))

    def uninstall(self) -> None:
        for owner, name, fn in reversed(self._saved):
            setattr(owner, name, fn)
        self._saved.clear()

    @contextlib.contextmanager
    def counting(self):
        self.kernels.clear()
        self.host_transfers = 0
        self._active = True
        try:
            yield self
        finally:
            self._active = False

    @contextlib.contextmanager
    def as_kernels(self, name: str, launches: int):
        """Count what runs inside as `launches` kernels named `name` (a fused composite)."""
        if self._active and not self._depth:
            self.kernels[f"fused {name}"] += launches
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    @property
    def total(self) -> int:
        return sum(self.kernels.values())


@contextlib.contextmanager
def fused_as_on_cupy(counter: KernelCounter):
    """Register, for array-api-strict, a stand-in for every fused composite: the portable code, counted as the
    kernels its CuPy implementation launches."""

    def stand_in(name: str):
        def impl(portable, xp, *args):
            with counter.as_kernels(name, _fused.LAUNCHES[name]):
                return portable(xp, *args)

        return impl

    previous = {name: _fused.register("array_api_strict", name, stand_in(name)) for name in _fused.LAUNCHES}
    try:
        yield
    finally:
        for name, impl in previous.items():
            _fused.register("array_api_strict", name, impl)


WORKLOADS = {"mlp": ((784, 1000, 1000, 10), 100), "cnn": (CNN, 128)}


def count_step(workload: str, fused: bool, batch: int | None = None) -> KernelCounter:
    """The counter after one step (the second) of `workload` on array-api-strict."""
    sizes, default_batch = WORKLOADS[workload]
    x, t = data(sizes, batch or default_batch)
    counter = KernelCounter()
    with contextlib.ExitStack() as stack:
        if fused:
            stack.enter_context(fused_as_on_cupy(counter))
        step = xdezero_step(sizes, x, t, move=array_api_strict.asarray)
        step()  # lazy parameter creation happens here, not in the counted step
        counter.install()
        try:
            with counter.counting():
                step()
        finally:
            counter.uninstall()
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the counts to this JSON file")
    parser.add_argument("--batch", type=int, help="batch size for both workloads (counts do not depend on it)")
    parser.add_argument("--by-op", action="store_true", help="list the kernels per operation")
    args = parser.parse_args()
    results = {}
    print(f"{'workload':10} {'portable':>9} {'fused':>9} {'host transfers':>15}")
    for workload in WORKLOADS:
        before = count_step(workload, fused=False, batch=args.batch)
        after = count_step(workload, fused=True, batch=args.batch)
        results[workload] = {
            "portable": before.total,
            "fused": after.total,
            "host_transfers": before.host_transfers,
            "portable_by_op": dict(before.kernels.most_common()),
            "fused_by_op": dict(after.kernels.most_common()),
        }
        print(f"{workload:10} {before.total:9d} {after.total:9d} {before.host_transfers:15d}")
        if args.by_op:
            for label, counter in (("portable", before), ("fused", after)):
                ops = ", ".join(f"{k} {v}" for k, v in counter.kernels.most_common())
                print(f"  {label}: {ops}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
