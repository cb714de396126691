"""DeZero's step-by-step core (`dezero.core_simple`, the book's steps 1-32), on NumPy arrays.

Its one difference from `xdezero.core` is what a reader of steps 28-29 relies on: after `backward`,
`x.grad` is a plain NumPy array, so that `x.data -= lr * x.grad` updates the data in place. It knows only
the arithmetic operators (+, -, *, /, unary -, ** a constant); `create_graph` and the other ops need
`xdezero.core`, which `import xdezero` gives (`xdezero.is_simple_core` is False, as in DeZero).
"""

from __future__ import annotations

import heapq
import itertools
import weakref
from typing import Any

import numpy as np

from xdezero._config import Config, enable_backprop_flag, no_grad, using_config

__all__ = [
    "Add",
    "Config",
    "Div",
    "Function",
    "Mul",
    "Neg",
    "Pow",
    "Sub",
    "Variable",
    "add",
    "as_array",
    "as_variable",
    "div",
    "mul",
    "neg",
    "no_grad",
    "pow",
    "rdiv",
    "rsub",
    "setup_variable",
    "sub",
    "using_config",
]


def as_array(x: Any) -> np.ndarray:
    """Python and NumPy scalars become 0-d NumPy arrays; arrays pass through."""
    return np.asarray(x) if np.isscalar(x) else x


def as_variable(obj: Any) -> Variable:
    """`obj` if it is a Variable, else a Variable wrapping the NumPy array `obj`."""
    return obj if isinstance(obj, Variable) else Variable(obj)


class Variable:
    """A NumPy array with its gradient (a NumPy array too, once `backward` has run) and its creator."""

    __array_priority__ = 200

    def __init__(self, data: np.ndarray | None, name: str | None = None) -> None:
        if data is not None and not isinstance(data, np.ndarray):
            raise TypeError(f"core_simple.Variable holds a NumPy array, got {type(data).__name__}")
        self.data: np.ndarray | None = data
        self.name: str | None = name
        self.grad: np.ndarray | None = None
        self.creator: Function | None = None
        self.generation: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""
        return self.data.shape

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return self.data.ndim

    @property
    def size(self) -> int:
        """The number of elements."""
        return self.data.size

    @property
    def dtype(self) -> np.dtype[Any]:
        """The array's NumPy dtype."""
        return self.data.dtype

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        if self.data is None:
            return "variable(None)"
        return "variable(" + str(self.data).replace("\n", "\n" + " " * 9) + ")"

    def cleargrad(self) -> None:
        """Forget the gradient (`.grad = None`), before the next backward pass."""
        self.grad = None

    def backward(self, retain_grad: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`; functions run latest generation first."""
        if self.grad is None:
            self.grad = np.ones_like(self.data)
        if self.creator is None:
            return
        counter = itertools.count()  # tie-break: functions of one generation in the order they were reached
        heap = [(-self.creator.generation, next(counter), self.creator)]
        seen = {self.creator}
        while heap:
            f = heapq.heappop(heap)[2]
            gys = [output().grad for output in f.outputs]
            gxs = f.backward(*gys)
            if not isinstance(gxs, tuple):
                gxs = (gxs,)
            for x, gx in zip(f.inputs, gxs):
                # 0-d arithmetic gives NumPy scalars: keep .grad an array.
                x.grad = as_array(gx if x.grad is None else x.grad + gx)
                if x.creator is not None and x.creator not in seen:
                    seen.add(x.creator)
                    heapq.heappush(heap, (-x.creator.generation, next(counter), x.creator))
            if not retain_grad:
                for output in f.outputs:
                    output().grad = None

    def __add__(self, other: Any) -> Variable:
        return add(self, other)

    __radd__ = __add__

    def __mul__(self, other: Any) -> Variable:
        return mul(self, other)

    __rmul__ = __mul__

    def __neg__(self) -> Variable:
        return neg(self)

    def __sub__(self, other: Any) -> Variable:
        return sub(self, other)

    def __rsub__(self, other: Any) -> Variable:
        return rsub(self, other)

    def __truediv__(self, other: Any) -> Variable:
        return div(self, other)

    def __rtruediv__(self, other: Any) -> Variable:
        return rdiv(self, other)

    def __pow__(self, c: Any) -> Variable:
        return pow(self, c)


class Function:
    """Call on Variables or arrays: `forward` on NumPy arrays, `backward` on NumPy arrays (one per input)."""

    # Set by a call made with backprop enabled.
    generation: int
    inputs: list[Variable]
    outputs: list[weakref.ref[Variable]]

    def __call__(self, *inputs: Any) -> Variable | list[Variable]:
        inputs = [as_variable(as_array(x)) for x in inputs]
        ys = self.forward(*[x.data for x in inputs])
        if not isinstance(ys, tuple):
            ys = (ys,)
        outputs = [Variable(as_array(y)) for y in ys]
        if enable_backprop_flag.get():
            self.generation = max(x.generation for x in inputs)
            for output in outputs:
                output.creator = self
                output.generation = self.generation + 1
            self.inputs = inputs
            self.outputs = [weakref.ref(output) for output in outputs]
        return outputs if len(outputs) > 1 else outputs[0]

    def forward(self, *xs: np.ndarray) -> Any:
        """The op on the inputs' arrays: an array, or a tuple of arrays."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, *gys: np.ndarray) -> Any:
        """The inputs' gradients (arrays) from the outputs' gradients: one array, or a tuple of them."""
        raise NotImplementedError(f"{type(self).__name__}.backward")


class Add(Function):
    """y = x0 + x1."""

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = x0 + x1."""
        return x0 + x1

    def backward(self, gy: Any) -> tuple[Any, Any]:
        """gx0, gx1 = gy, gy."""
        return gy, gy


class Mul(Function):
    """y = x0 * x1."""

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = x0 * x1."""
        return x0 * x1

    def backward(self, gy: Any) -> tuple[Any, Any]:
        """gx0, gx1 = gy x1, gy x0."""
        x0, x1 = self.inputs[0].data, self.inputs[1].data
        return gy * x1, gy * x0


class Neg(Function):
    """y = -x."""

    def forward(self, x: Any) -> Any:
        """y = -x."""
        return -x

    def backward(self, gy: Any) -> Any:
        """gx = -gy."""
        return -gy


class Sub(Function):
    """y = x0 - x1."""

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = x0 - x1."""
        return x0 - x1

    def backward(self, gy: Any) -> tuple[Any, Any]:
        """gx0, gx1 = gy, -gy."""
        return gy, -gy


class Div(Function):
    """y = x0 / x1; dy/dx0 = 1 / x1, dy/dx1 = -x0 / x1²."""

    def forward(self, x0: Any, x1: Any) -> Any:
        """y = x0 / x1."""
        return x0 / x1

    def backward(self, gy: Any) -> tuple[Any, Any]:
        """gx0, gx1 = gy / x1, -gy x0 / x1²."""
        x0, x1 = self.inputs[0].data, self.inputs[1].data
        return gy / x1, gy * (-x0 / x1**2)


class Pow(Function):
    """y = x ** c for a constant c; dy/dx = c x^(c-1)."""

    def __init__(self, c: Any) -> None:
        self.c: Any = c

    def forward(self, x: Any) -> Any:
        """y = x ** c."""
        return x**self.c

    def backward(self, gy: Any) -> Any:
        """gx = c x^(c-1) gy."""
        x = self.inputs[0].data
        return self.c * x ** (self.c - 1) * gy


def add(x0: Any, x1: Any) -> Variable:
    """x0 + x1."""
    return Add()(x0, as_array(x1))


def mul(x0: Any, x1: Any) -> Variable:
    """x0 * x1."""
    return Mul()(x0, as_array(x1))


def neg(x: Any) -> Variable:
    """-x."""
    return Neg()(x)


def sub(x0: Any, x1: Any) -> Variable:
    """x0 - x1."""
    return Sub()(x0, as_array(x1))


def rsub(x0: Any, x1: Any) -> Variable:
    """x1 - x0 (the reflected subtraction)."""
    return Sub()(as_array(x1), x0)


def div(x0: Any, x1: Any) -> Variable:
    """x0 / x1."""
    return Div()(x0, as_array(x1))


def rdiv(x0: Any, x1: Any) -> Variable:
    """x1 / x0 (the reflected division)."""
    return Div()(as_array(x1), x0)


def pow(x: Any, c: Any) -> Variable:
    """x ** c for a constant c."""
    return Pow(c)(x)


def setup_variable() -> None:
    """A no-op: DeZero installs the operators here; this Variable defines them in its class body."""
