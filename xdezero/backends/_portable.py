"""The portable backend: every kernel the ops need, written once with the array API standard.

This is the reference. A library's own backend (`_numpy.py`, `_torch.py`, `_jax.py`, ...) subclasses
`Backend` and overrides only what that library does better; everything it does not override runs as written
here. Ops reach their backend beside their namespace (`Function.backend`) and never ask which library they run on;
nor do the other modules of backends/: the moves (`_devices.py`, `_host.py`), the memory keys and DeZero's
`get_array_module` (`_namespace.py`) and the CUDA graphs (`_graphs.py`) ask the array's backend.

Images are NCHW; `kernel`, `stride` and `pad` are (height, width) pairs of ints. Convolutions go through the
column layout of backends/_im2col.py (one GEMM each); max pooling keeps, for each output, which slot of its
window won (the first maximum in row-major window order), as a tuple of arrays that the op holds for its
backward and double backward.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import size, to_device

from xdezero.backends._checks import raise_if_outside
from xdezero.backends._devices import to_numpy
from xdezero.backends._fused import fused
from xdezero.backends._graphs import GraphKit, graph_safe_stack
from xdezero.backends._im2col import (
    ColumnPlan,
    add_windows,
    add_windows_by_writing,
    add_windows_functional,
    added_windows,
    added_windows_matrix,
    column_plan,
    pad_by_concat,
    pad_by_writing,
    stacked_windows,
    windows,
    windows_matrix,
)
from xdezero.backends._namespace import array_namespace, describe, device_of, library_name
from xdezero.backends._scatter import add_at_positions, add_rows

Pair = tuple[int, int]
Shape = tuple[int, ...]

NEG_INF = float("-inf")
# The memory key of every array of a library whose views cannot be seen: sharing cannot be ruled out there, so
# every gradient after the first is copied.
UNSEEN_VIEWS = "views of this library cannot be detected"


class Backend:
    """Kernels for one array library; this base class runs them with the array API standard alone."""

    name = "portable"
    # The array namespace ops compute with, or None: array-api-compat's (or the library's own) namespace.
    namespace: ModuleType | None = None
    # What makes an array of this library fit to be held by a Variable, or None: taken as it comes.
    adopt: Callable[[Any], Any] | None = None
    # Whether `compile_step` compiles a captured step (xdezero/tapes/compile.py) into one function.
    compiles_steps: bool = False
    # Whether an array of this library keeps its values for life (JAX's): the same object, the same values.
    immutable_arrays: bool = False

    def __init__(self) -> None:
        self._index_dtypes: dict[tuple[int, Any], Any] = {}  # (id(namespace), device) -> dtype

    def compile_step(self, fn: Callable[[list[Any], list[Any]], Any]) -> Callable[[list[Any], list[Any]], Any]:
        """`fn(arguments, state)`, a pure function of arrays, compiled into one call that consumes `state`
        (where `compiles_steps`)."""
        raise NotImplementedError(f"the {self.name} backend does not compile steps")

    def composites(self) -> dict[str, Callable[..., Any]]:
        """This library's implementations of the hot composites of backends/_fused.py, by name: each is called
        as `impl(portable, xp, *args)` and may hand any call back to `portable(xp, *args)`. None here."""
        return {}

    def index_dtype(self, xp: ModuleType, device: Any) -> Any:
        """The dtype of indices in namespace `xp` on `device` (what `arange` makes), looked up once."""
        key = (id(xp), device)
        try:
            return self._index_dtypes[key]
        except KeyError:
            dtype = self._index_dtypes[key] = xp.arange(0, device=device).dtype
            return dtype
        except TypeError:  # a device that cannot be a key
            return xp.arange(0, device=device).dtype

    # --- moves (backends/_devices.py, backends/_host.py) -------------------------------------------------------

    def to_cpu(self, x: Any) -> Any:
        """x on its library's host device, its default one (array-api-strict's CPU_DEVICE, Dask's 'cpu'); x
        itself when it is there, or when the library names no default device."""
        info = getattr(array_namespace(x), "__array_namespace_info__", None)
        host = None if info is None else info().default_device()
        if host is None or device_of(x) == host:
            return x
        return to_device(x, host)

    def to_numpy(self, x: Any) -> np.ndarray:
        """x copied to the host as a NumPy array: by `np.asarray`, or by DLPack where that is all the library
        offers (array-api-strict)."""
        x = self.to_cpu(x)
        try:
            return np.asarray(x)
        except (TypeError, ValueError, RuntimeError):
            return np.from_dlpack(x)

    def to_gpu(self, x: Any) -> Any:
        """x on a GPU of its library: this library has none that xdezero knows."""
        raise TypeError(
            f"to_gpu moves NumPy, torch and JAX arrays; got {describe(x)} (use to_device with a device of "
            "its library, or to_library)"
        )

    def host_bits(self, x: Any, unsigned: Any) -> np.ndarray:
        """The bit pattern of x, of a dtype NumPy lacks (bfloat16), on the host as unsigned integers of dtype
        `unsigned` (its width): its NumPy copy (an ml_dtypes array, as JAX gives) viewed as such."""
        return np.asarray(self.to_numpy(x)).view(unsigned)

    def place_bits(self, bits: np.ndarray, dtype: str, like: Any) -> Any:
        """The bit pattern `bits` (from `host_bits`) as an array of dtype `dtype` of `like`'s library and device;
        TypeError where the library has no such dtype."""
        raise TypeError(f"{array_namespace(like).__name__} has no {dtype} dtype to place this array in")

    # --- memory, DeZero's module, CUDA graphs ---------------------------------------------------------------

    def memory_key(self, x: Any) -> Any:
        """A key that two arrays of this library share when they may be views of one buffer: one key for all of
        them, where views cannot be seen."""
        return (UNSEEN_VIEWS, library_name(x))

    def array_module(self, x: Any) -> ModuleType:
        """What DeZero's `get_array_module` gives for x: its array namespace."""
        return array_namespace(x)

    def graph_kit(self, device: Any) -> GraphKit | None:
        """The CUDA-graph operations for arrays of this library on `device` (backends/_graphs.py), or None: no
        CUDA graphs here."""
        return None

    # --- random streams (backends/_random.py) -----------------------------------------------------------------

    def stream_key(self, like: Any, dtype: Any) -> tuple[str, str] | None:
        """(library, device) of the generator that draws samples like `like` of `dtype` on its device, or None:
        drawn on the host with NumPy and moved."""
        return None

    def new_generator(self, like: Any, seed: int) -> Any:
        """A generator of this library on `like`'s device, seeded with `seed`."""
        raise NotImplementedError(f"{self.name} has no generator of its own (stream_key is None)")

    def draw_uniform(self, generator: Any, shape: Shape, like: Any, dtype: Any) -> tuple[Any, Any]:
        """(the generator after the draw, uniform [0, 1) samples of `shape` and `dtype` on `like`'s device)."""
        raise NotImplementedError(f"{self.name} has no generator of its own (stream_key is None)")

    def generator_state(self, generator: Any) -> Any:
        """The generator's state as a NumPy array, or None where it cannot be read (it restarts from the seed)."""
        return None

    def generator_from_state(self, state: Any, device: str) -> Any:
        """A generator on `device` (as `stream_key` named it) holding the state `generator_state` returned."""
        raise NotImplementedError(f"{self.name} saves no generator state")

    # --- scatter-add --------------------------------------------------------------------------------------

    def scatter_add(self, shape: Shape, index: Any, values: Any) -> Any:
        """zeros(shape) with `values` added at `index` (an integer array of rows, or slices and tuples), repeated
        positions accumulating: a stable sort and a segmented sum (backends/_scatter.py)."""
        if type(index) is type(values):
            return add_rows(shape, index, values)
        return add_at_positions(shape, index, values)

    # --- id checks ------------------------------------------------------------------------------------------

    def check_ids(self, checks: list[tuple[Any, int, int, str]], where: str, error: type[Exception]) -> list[Any]:
        """The id arrays of `checks`, (ids, low, high, what) each, after checking low <= ids < high with one host
        transfer for all of them (backends/_checks.py); `error` names `where`, `what` and the accepted range."""
        eager = [c for c in checks if size(c[0])]
        if eager:
            bounds = self.id_bounds([c[0] for c in eager])
            for k, (_, low, high, what) in enumerate(eager):
                raise_if_outside(bounds[2 * k : 2 * k + 2], low, high, where, what, error)
        return [c[0] for c in checks]

    def id_bounds(self, arrays: list[Any]) -> Any:
        """[min, max] of each array, flat, as a host array or list: computed on the device, moved once."""
        xp = array_namespace(*arrays)
        dtype = self.index_dtype(xp, device_of(arrays[0]))
        # All bounds in one array, so that a GPU stream is synchronised once, not twice per array.
        extremes = [xp.astype(r(a), dtype, copy=False) for a in arrays for r in (xp.min, xp.max)]
        return to_numpy(xp.stack(extremes))

    # --- windows (backends/_im2col.py) ------------------------------------------------------------------

    def pad_images(self, x: Any, pad: Pair, value: float) -> Any:
        """x with `pad` rows and columns of `value` on each side: strips concatenated."""
        return pad_by_concat(x, pad, value)

    def add_windows(self, parts: list[Any], shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """Each window view added back at its place (the adjoint of `windows`): dilated, shifted and summed."""
        return add_windows_functional(parts, shape, kernel, stride, pad)

    def im2col(self, x: Any, kernel: Pair, stride: Pair, pad: Pair, value: float) -> Any:
        """col (N, C, KH, KW, OH, OW): the window views stacked."""
        return stacked_windows(x, kernel, stride, pad, value)

    def col2im(self, col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """The adjoint of im2col, through add_windows."""
        return added_windows(col, shape, kernel, stride, pad)

    def im2col_matrix(self, x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """col (C·KH·KW, N·OH·OW) for one GEMM: the window views of the channel-first batch stacked."""
        return windows_matrix(x, kernel, stride, pad)

    def col2im_matrix(self, col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """The adjoint of im2col_matrix, through add_windows."""
        return added_windows_matrix(col, shape, kernel, stride, pad)

    def column_plan(self, x: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> ColumnPlan:
        """The column layout of convolutions on images of `shape`: the exact (C·KH·KW, N·OH·OW) one."""
        return ColumnPlan(shape, kernel, stride, pad)

    # --- convolution ---------------------------------------------------------------------------------------

    def conv2d(self, x: Any, W: Any, b: Any, stride: Pair, pad: Pair) -> Any:
        """y = W ⋆ x + b (cross-correlation of x (N, C, H, W) with W (OC, C, KH, KW)); b may be None."""
        xp = array_namespace(x)
        plan = column_plan(x, tuple(x.shape), tuple(W.shape[2:]), stride, pad)
        return plan.to_images(plan.conv(xp.reshape(W, (W.shape[0], -1)), x), b)

    def deconv2d(self, x: Any, W: Any, b: Any, stride: Pair, pad: Pair, outsize: Pair) -> Any:
        """y = Wᵀ ⋆ x + b, the transposed convolution of x (N, C, H, W) with W (C, OC, KH, KW) into `outsize`."""
        xp = array_namespace(x)
        c, oc = W.shape[:2]
        plan = column_plan(x, (x.shape[0], oc, *outsize), tuple(W.shape[2:]), stride, pad)
        y = plan.deconv(xp.permute_dims(xp.reshape(W, (c, -1)), (1, 0)), plan.from_images(x))
        return y if b is None else y + xp.reshape(b, (oc, 1, 1))

    def conv2d_grad_w(self, x: Any, gy: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """gW = Σₙ gy ⊗ windows(x): the weight gradient of conv2d(x, W) for the upstream gy."""
        xp = array_namespace(x)
        plan = column_plan(x, tuple(x.shape), kernel, stride, pad)
        gW = xp.permute_dims(plan.grad_w(x, plan.from_images(gy)), (1, 0))
        return xp.reshape(gW, (gy.shape[1], x.shape[1], *kernel))

    def conv2d_grads(self, x: Any, W: Any, gy: Any, stride: Pair, pad: Pair) -> tuple[Any, Any]:
        """(gx, gW) of conv2d(x, W) for the upstream gy, with gy brought to the column layout once."""
        xp = array_namespace(x)
        oc, c, *kernel = W.shape
        plan = column_plan(x, tuple(x.shape), tuple(kernel), stride, pad)
        g = plan.from_images(gy)
        gx = plan.deconv(xp.permute_dims(xp.reshape(W, (oc, -1)), (1, 0)), g)
        gW = xp.permute_dims(plan.grad_w(x, g), (1, 0))
        return gx, xp.reshape(gW, (oc, c, *kernel))

    # --- max pooling -----------------------------------------------------------------------------------------

    def max_pool(self, x: Any, kernel: Pair, stride: Pair, pad: Pair) -> tuple[Any, tuple[Any, ...]]:
        """(y, argmax): y = max over each window (padding counts as -inf); argmax says which slot of each window
        won (the first maximum), in a form only this backend's max_pool_grad and max_pool_pick read."""
        xp = array_namespace(x)
        if _tiles(tuple(x.shape), kernel, stride, pad):
            # Non-overlapping windows: the max along each row of a window first (KW column views), then down the
            # rows (KH row views of the reshaped result); together the two stages pick the same first arg-max.
            (kh, kw), (n, c, h, w) = kernel, x.shape
            rows, col_index = _running_max(xp, [x[:, :, :, j::kw] for j in range(kw)])
            rows = xp.reshape(rows, (n, c, h // kh, kh, w // kw))
            y, row_index = _running_max(xp, [rows[:, :, :, i, :] for i in range(kh)])
            return y, (col_index, row_index)
        # A running max over the KH·KW strided views: no column array, and the arg-max comes along for free.
        parts = windows(x, kernel, stride, pad, value=NEG_INF)
        y = parts[0]
        index = xp.zeros(tuple(y.shape), dtype=xp.int32, device=device_of(x))
        for k in range(1, len(parts)):
            better = parts[k] > y
            y = xp.where(better, parts[k], y)
            index = xp.where(better, k, index)
        return y, (index,)

    def max_pool_grad(
        self, argmax: tuple[Any, ...], gy: Any, x_shape: Shape, kernel: Pair, stride: Pair, pad: Pair
    ) -> Any:
        """gx = gy placed at each window's arg-max, summed where windows overlap."""
        xp = array_namespace(gy)
        if _tiles(x_shape, kernel, stride, pad):
            (col_index, row_index), (kh, kw), (n, c, h, w) = argmax, kernel, x_shape
            if kh > 1:
                gy = xp.reshape(_spread(xp, row_index, gy, kh, 3), (n, c, h, w // kw))
            if kw > 1:
                gy = xp.reshape(_spread(xp, col_index, gy, kw, 4), (n, c, h, w))
            return gy
        (index,) = argmax
        zero = xp.zeros_like(gy)
        parts = [xp.where(index == k, gy, zero) for k in range(kernel[0] * kernel[1])]
        return add_windows(parts, x_shape, kernel, stride, pad)

    def max_pool_pick(self, argmax: tuple[Any, ...], x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """y = x at each window's recorded arg-max (the linear map whose adjoint is max_pool_grad)."""
        xp = array_namespace(x)
        x_shape = tuple(x.shape)
        if _tiles(x_shape, kernel, stride, pad):
            (col_index, row_index), (kh, kw), (n, c, h, w) = argmax, kernel, x_shape
            rows = _pick(xp, [x[:, :, :, j::kw] for j in range(kw)], col_index)
            rows = xp.reshape(rows, (n, c, h // kh, kh, w // kw))
            return _pick(xp, [rows[:, :, :, i, :] for i in range(kh)], row_index)
        return _pick(xp, windows(x, kernel, stride, pad), argmax[0])

    # --- average pooling ------------------------------------------------------------------------------------

    def avg_pool(self, x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """y = Σ of each window / (KH·KW), zero padding included."""
        parts = windows(x, kernel, stride, pad)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total * (1.0 / len(parts))

    def avg_pool_grad(self, gy: Any, x_shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """gx = gy/(KH·KW) added over each window."""
        k = kernel[0] * kernel[1]
        return add_windows([gy * (1.0 / k)] * k, x_shape, kernel, stride, pad)


def _tiles(shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> bool:
    """Whether the windows tile the image exactly (stride = kernel, no padding, sizes divisible)."""
    return stride == kernel and pad == (0, 0) and shape[2] % kernel[0] == 0 and shape[3] % kernel[1] == 0


def _running_max(xp: Any, parts: list[Any]) -> tuple[Any, Any]:
    """(max of the parts, index of the first part holding it): ties keep the earlier part."""
    y, index = parts[0], None
    for k in range(1, len(parts)):
        better = parts[k] > y
        y = xp.maximum(y, parts[k])
        index = xp.astype(better, xp.int8) if index is None else xp.where(better, k, index)
    return y, index


def _spread(xp: Any, index: Any, g: Any, count: int, axis: int) -> Any:
    """g routed to slot index[...] of `count` new slots inserted at `axis`, zeros elsewhere."""
    return fused("spread_slots", _spread_portable, xp, g, index, count, axis)  # NumPy: slots written in place


def _spread_portable(xp: Any, g: Any, index: Any, count: int, axis: int) -> Any:
    # A 0/1 mask times g: NumPy runs this about 10x faster than `where` on an unpredictable mask (the one
    # difference: an infinite g leaves NaN instead of 0 in the other slots).
    return graph_safe_stack(xp, [xp.astype(index == k, g.dtype) * g for k in range(count)], axis=axis)


def _pick(xp: Any, parts: list[Any], index: Any) -> Any:
    """parts[index[...]] elementwise."""
    y = parts[0]
    for k in range(1, len(parts)):
        y = xp.where(index == k, parts[k], y)
    return y


class MutableBackend(Backend):
    """A library whose fresh arrays can be written in place (NumPy, CuPy, torch): padding and the adjoint of
    the windows write into one array instead of concatenating and summing shifted copies."""

    def pad_images(self, x: Any, pad: Pair, value: float) -> Any:
        """One filled array, x copied into its middle."""
        return pad_by_writing(x, pad, value)

    def add_windows(self, parts: list[Any], shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """Each part added into its strided slice of one zeroed array."""
        return add_windows_by_writing(parts, shape, kernel, stride, pad)
