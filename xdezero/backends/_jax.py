"""The JAX backend: convolutions by `lax.conv_general_dilated` and pooling by `lax.reduce_window`, each one
jitted call.

Every kernel is a small function compiled once per geometry and shape (`jax.jit`, the geometry static), so an
op costs one dispatch instead of one per array operation. The transposed convolution and both gradients of
a convolution are the exact transposes of the convolution itself (`jax.linear_transpose`), and the gradient
of max pooling and its "pick" (the linear map it transposes) are the VJP and JVP of `reduce_window` at the
pooled input, which is what a max pooling keeps for its backward here (JAX arrays are immutable, so keeping
it is safe). Integer and mixed dtypes take the portable code. Moves between devices go through `jax.device_put`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from xdezero.backends._im2col import add_windows_by_at
from xdezero.backends._namespace import device_of
from xdezero.backends._portable import Backend, Pair, Shape

_LAYOUT = ("NCHW", "OIHW", "NCHW")


def _native(*arrays: Any) -> bool:
    dtype = arrays[0].dtype
    return jnp.issubdtype(dtype, jnp.floating) and all(a.dtype == dtype for a in arrays[1:])


def _conv(x: Any, W: Any, stride: Pair, pad: Pair) -> Any:
    return lax.conv_general_dilated(x, W, stride, ((pad[0], pad[0]), (pad[1], pad[1])), dimension_numbers=_LAYOUT)


def _with_bias(y: Any, b: Any) -> Any:
    return y if b is None else y + b.reshape(-1, 1, 1)


@partial(jax.jit, static_argnums=(3, 4))
def _conv2d(x: Any, W: Any, b: Any, stride: Pair, pad: Pair) -> Any:
    return _with_bias(_conv(x, W, stride, pad), b)


@partial(jax.jit, static_argnums=(3, 4, 5))
def _deconv2d(x: Any, W: Any, b: Any, stride: Pair, pad: Pair, outsize: Pair) -> Any:
    image = jax.ShapeDtypeStruct((x.shape[0], W.shape[1], *outsize), x.dtype)
    (y,) = jax.linear_transpose(lambda z: _conv(z, W, stride, pad), image)(x)
    return _with_bias(y, b)


@partial(jax.jit, static_argnums=(2, 3, 4))
def _conv2d_grad_w(x: Any, gy: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    weight = jax.ShapeDtypeStruct((gy.shape[1], x.shape[1], *kernel), x.dtype)
    (gW,) = jax.linear_transpose(lambda w: _conv(x, w, stride, pad), weight)(gy)
    return gW


@partial(jax.jit, static_argnums=(3, 4))
def _conv2d_grads(x: Any, W: Any, gy: Any, stride: Pair, pad: Pair) -> tuple[Any, Any]:
    image = jax.ShapeDtypeStruct(x.shape, x.dtype)
    weight = jax.ShapeDtypeStruct(W.shape, W.dtype)
    (gx,) = jax.linear_transpose(lambda z: _conv(z, W, stride, pad), image)(gy)
    (gW,) = jax.linear_transpose(lambda w: _conv(x, w, stride, pad), weight)(gy)
    return gx, gW


def _window(
    kernel: Pair, stride: Pair, pad: Pair
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]:
    return (1, 1, *kernel), (1, 1, *stride), ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1]))


def _max(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    return lax.reduce_window(x, -jnp.inf, lax.max, *_window(kernel, stride, pad))


def _sum(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    return lax.reduce_window(x, 0.0, lax.add, *_window(kernel, stride, pad))


_max_pool = jax.jit(_max, static_argnums=(1, 2, 3))


@partial(jax.jit, static_argnums=(2, 3, 4))
def _max_pool_grad(x: Any, gy: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    _, pull = jax.vjp(lambda z: _max(z, kernel, stride, pad), x)
    return pull(gy)[0]


@partial(jax.jit, static_argnums=(2, 3, 4))
def _max_pool_pick(x: Any, t: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    return jax.jvp(lambda z: _max(z, kernel, stride, pad), (x,), (t,))[1]


@partial(jax.jit, static_argnums=(1, 2, 3))
def _avg_pool(x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    return _sum(x, kernel, stride, pad) * (1.0 / (kernel[0] * kernel[1]))


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _avg_pool_grad(gy: Any, x_shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
    image = jax.ShapeDtypeStruct(x_shape, gy.dtype)
    (gx,) = jax.linear_transpose(lambda z: _avg_pool(z, kernel, stride, pad), image)(gy)
    return gx


# --- composites: the portable arithmetic, jitted --------------------------------------------------------
# Arguments that are arrays or floats are traced (a learning rate that changes every step compiles once);
# ints, bools, None and tuples are static (axes, counts). A composite that cannot be traced runs eagerly.
_STATIC = (int, bool, type(None), tuple, str)
_TRACED = object()
_compiled: dict[tuple, Callable | None] = {}


def _jitted(portable: Callable, xp: Any, *args: Any) -> Any:
    """portable(xp, *args) as one compiled call (compiled once per composite and static arguments)."""
    statics = tuple(a if type(a) in _STATIC else _TRACED for a in args)
    key = (portable, id(xp), statics)
    try:
        compiled = _compiled[key]
    except KeyError:
        compiled = _compiled[key] = _compile(portable, xp, statics)
    if compiled is None:
        return portable(xp, *args)
    try:
        return compiled(*[a for a, s in zip(args, statics) if s is _TRACED])
    except jax.errors.JAXTypeError:  # the portable code reads a value (e.g. a Python branch on an array)
        _compiled[key] = None
        return portable(xp, *args)


def _compile(portable: Callable, xp: Any, statics: tuple) -> Callable:
    traced_at = [i for i, s in enumerate(statics) if s is _TRACED]

    def run(*traced: Any) -> Any:
        args = list(statics)
        for i, value in zip(traced_at, traced):
            args[i] = value
        return portable(xp, *args)

    return jax.jit(run)


_COMPOSITES = (
    "sigmoid",
    "sigmoid_grad",
    "relu",
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
    "sgd",
    "momentum_sgd",
    "adam",
    "batch_norm_statistics",
    "spread_slots",
    "linear",
    "linear_grad",
    "linear_grad_w",
    "sum_to",
)


@jax.jit
def _id_bounds(arrays: list[Any]) -> Any:
    return jnp.stack([r(a).astype(int) for a in arrays for r in (jnp.min, jnp.max)])


def _add_at(out: Any, index: Any, part: Any) -> Any:
    return out.at[index].add(part)


class JaxBackend(Backend):
    """JAX arrays: XLA's convolution and window reductions, and the hot composites, one jitted call each."""

    name = "jax"
    compiles_steps = True
    immutable_arrays = True

    def compile_step(self, fn: Callable[[list[Any], list[Any]], Any]) -> Callable[[list[Any], list[Any]], Any]:
        """`jax.jit`, donating the state (the step's parameters and optimizer state are consumed and returned)."""
        return jax.jit(fn, donate_argnums=(1,))

    def composites(self) -> dict[str, Callable[..., Any]]:
        """Each composite's portable arithmetic compiled into one call."""
        return dict.fromkeys(_COMPOSITES, _jitted)

    def scatter_add(self, shape: Shape, index: Any, values: Any) -> Any:
        """`.at[index].add(values)` on fresh zeros, on values' device (under `jax.jit` a traced value has none: the
        compiled function places it)."""
        device = None if isinstance(values, jax.core.Tracer) else values.device
        return jnp.zeros(shape, dtype=values.dtype, device=device).at[index].add(values)

    def stream_key(self, like: Any, dtype: Any) -> tuple[str, str] | None:
        """One key chain per device."""
        return ("jax", str(like.device))

    def new_generator(self, like: Any, seed: int) -> Any:
        """A JAX key from the seed."""
        return jax.random.key(seed % 2**31)

    def draw_uniform(self, generator: Any, shape: Shape, like: Any, dtype: Any) -> tuple[Any, Any]:
        """Split the key: one half draws, the other is the next state."""
        state, sub = jax.random.split(generator)
        return state, jax.device_put(jax.random.uniform(sub, shape, dtype=dtype), like.device)

    def generator_state(self, generator: Any) -> Any:
        """The key's data."""
        return np.asarray(jax.random.key_data(generator))

    def generator_from_state(self, state: Any, device: str) -> Any:
        """The key of the saved data."""
        return jax.random.wrap_key_data(jnp.asarray(state.astype(np.uint32)))

    def index_dtype(self, xp: Any, device: Any) -> Any:
        """int64 with `jax_enable_x64`, else int32 (read now: the flag may change)."""
        return jax.dtypes.canonicalize_dtype(jnp.int64)

    def check_ids(self, checks: list[tuple[Any, int, int, str]], where: str, error: type[Exception]) -> list[Any]:
        """Eager ids checked with one jitted reduction; under `jax.jit` the ids are tracers and pass unchecked."""
        eager = [c for c in checks if not isinstance(c[0], jax.core.Tracer)]
        if eager:
            super().check_ids(eager, where, error)
        return [c[0] for c in checks]

    def id_bounds(self, arrays: list[Any]) -> Any:
        """[min, max] of each array in one compiled call and one transfer."""
        return np.asarray(_id_bounds(arrays))

    # --- moves and memory ---------------------------------------------------------------------------------------

    def to_cpu(self, x: Any) -> Any:
        """x on JAX's first CPU device."""
        return jax.device_put(x, jax.devices("cpu")[0])

    def to_gpu(self, x: Any) -> Any:
        """x on JAX's first GPU."""
        try:
            gpu = jax.devices("gpu")[0]
        except RuntimeError:
            raise RuntimeError("JAX sees no GPU; install jax[cuda] on a machine with an NVIDIA GPU") from None
        return jax.device_put(x, gpu)

    def place_bits(self, bits: np.ndarray, dtype: str, like: Any) -> Any:
        """The bits viewed as JAX's `dtype` (an ml_dtypes dtype), put on `like`'s device."""
        return jax.device_put(bits.view(getattr(jnp, dtype)), device_of(like))

    def memory_key(self, x: Any) -> Any:
        """x's identity: JAX arrays are immutable, so no view of one can be written through."""
        return id(x)

    def pad_images(self, x: Any, pad: Pair, value: float) -> Any:
        """jnp.pad."""
        return jnp.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])), constant_values=value)

    def add_windows(self, parts: list[Any], shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """Each part added at its strided slice with `.at[].add`."""
        return add_windows_by_at(parts, shape, kernel, stride, pad, _add_at)

    def conv2d(self, x: Any, W: Any, b: Any, stride: Pair, pad: Pair) -> Any:
        """y = W ⋆ x + b by lax.conv_general_dilated."""
        if not (_native(x, W) if b is None else _native(x, W, b)):
            return super().conv2d(x, W, b, stride, pad)
        return _conv2d(x, W, b, stride, pad)

    def deconv2d(self, x: Any, W: Any, b: Any, stride: Pair, pad: Pair, outsize: Pair) -> Any:
        """y = Wᵀ ⋆ x + b: the transpose of the convolution that maps `outsize` images to x's."""
        if not (_native(x, W) if b is None else _native(x, W, b)):
            return super().deconv2d(x, W, b, stride, pad, outsize)
        return _deconv2d(x, W, b, stride, pad, tuple(outsize))

    def conv2d_grad_w(self, x: Any, gy: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """gW: the transpose of W ↦ conv2d(x, W) applied to gy."""
        if not _native(x, gy):
            return super().conv2d_grad_w(x, gy, kernel, stride, pad)
        return _conv2d_grad_w(x, gy, tuple(kernel), stride, pad)

    def conv2d_grads(self, x: Any, W: Any, gy: Any, stride: Pair, pad: Pair) -> tuple[Any, Any]:
        """(gx, gW) in one jitted call."""
        if not _native(x, W, gy):
            return super().conv2d_grads(x, W, gy, stride, pad)
        return _conv2d_grads(x, W, gy, stride, pad)

    def max_pool(self, x: Any, kernel: Pair, stride: Pair, pad: Pair) -> tuple[Any, tuple[Any, ...]]:
        """(y, (x,)) by lax.reduce_window: the gradients are taken at x itself."""
        if not _native(x):
            return super().max_pool(x, kernel, stride, pad)
        return _max_pool(x, kernel, stride, pad), (x,)

    def max_pool_grad(
        self, argmax: tuple[Any, ...], gy: Any, x_shape: Shape, kernel: Pair, stride: Pair, pad: Pair
    ) -> Any:
        """gx = the VJP of the max pooling at the kept input."""
        if not _native(gy):
            return super().max_pool_grad(argmax, gy, x_shape, kernel, stride, pad)
        return _max_pool_grad(argmax[0], gy, kernel, stride, pad)

    def max_pool_pick(self, argmax: tuple[Any, ...], x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """y = the JVP of the max pooling at the kept input, in the direction x."""
        if not _native(x):
            return super().max_pool_pick(argmax, x, kernel, stride, pad)
        return _max_pool_pick(argmax[0], x, kernel, stride, pad)

    def avg_pool(self, x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """y = Σ of each window / (KH·KW) by lax.reduce_window."""
        if not _native(x):
            return super().avg_pool(x, kernel, stride, pad)
        return _avg_pool(x, kernel, stride, pad)

    def avg_pool_grad(self, gy: Any, x_shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """gx: the transpose of the average pooling applied to gy."""
        if not _native(gy):
            return super().avg_pool_grad(gy, x_shape, kernel, stride, pad)
        return _avg_pool_grad(gy, tuple(x_shape), kernel, stride, pad)
