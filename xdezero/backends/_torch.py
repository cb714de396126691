"""The torch backend: `torch.nn.functional`'s convolutions and pooling (oneDNN on the CPU, cuDNN on CUDA).

Each kernel takes the library's own path for floating tensors of one dtype, and hands anything else (integer
or mixed dtypes, which torch's kernels refuse) to the portable code it inherits. The weight gradient and
both input gradients come from `convolution_backward`, the kernel torch's own autograd calls, so a double
backward through conv2d runs torch's kernels at every order. Tensors reaching an op never require grad
(`Variable` detaches them on the way in), so torch builds no graph behind xdezero's. Moves between devices and
to the host, bfloat16's bits, and CUDA graphs (`TorchGraphs`, see backends/_graphs.py) are torch's own here too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import array_api_compat.torch as compat
import numpy as np
import torch
import torch.nn.functional as tf

from xdezero.backends._graphs import run_capture
from xdezero.backends._im2col import out_size
from xdezero.backends._portable import MutableBackend, Pair, Shape
from xdezero.backends._scatter import flat_positions

_convolution_backward = torch.ops.aten.convolution_backward
_NATIVE = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_ONE = (1, 1)
_ZERO = (0, 0)


def _matmul(x1: Any, x2: Any, /) -> Any:
    """torch.matmul, straight through for two tensors of one dtype (array-api-compat's wrapper casts both to
    their common dtype first, two `result_type` calls and two casts per product, even when there is nothing
    to promote)."""
    if type(x1) is torch.Tensor and type(x2) is torch.Tensor and x1.dtype == x2.dtype:
        return torch.matmul(x1, x2)
    return compat.matmul(x1, x2)


def _tuned_namespace() -> ModuleType:
    """array-api-compat's torch namespace with the calls it wraps for nothing on an op's hot path taken directly."""
    namespace = ModuleType("xdezero.backends._torch.namespace", compat.__doc__)
    namespace.__dict__.update({k: v for k, v in vars(compat).items() if not k.startswith("__")})
    namespace.__xdezero_library__ = "torch"  # type: ignore[attr-defined]
    namespace.matmul = _matmul  # type: ignore[attr-defined]
    return namespace


def _native(*arrays: Any) -> bool:
    dtype = arrays[0].dtype
    return dtype in _NATIVE and all(a.dtype == dtype for a in arrays[1:])


# --- composites: torch's own kernels where one call does what the portable code does in several -------------


def _sigmoid(portable: Callable, xp: Any, x: Any) -> Any:
    return torch.sigmoid(x) if _native(x) else portable(xp, x)


def _sigmoid_grad(portable: Callable, xp: Any, y: Any, gy: Any) -> Any:
    return torch.ops.aten.sigmoid_backward(gy, y) if _native(y, gy) else portable(xp, y, gy)


def _sgd(portable: Callable, xp: Any, p: Any, g: Any, lr: float) -> Any:
    return torch.add(p, g, alpha=-lr) if _native(p, g) else portable(xp, p, g, lr)


def _softmax_cross_entropy(portable: Callable, xp: Any, x: Any, t: Any) -> tuple[Any, Any]:
    """(mean of -log softmax(x)[n, tₙ], softmax(x)) by log_softmax: two passes over x instead of eight."""
    if not _native(x) or x.ndim != 2 or t.dtype != torch.int64:
        return portable(xp, x, t)
    log_p = torch.log_softmax(x, 1)
    return -log_p.gather(1, t.view(-1, 1)).mean(), log_p.exp()


def _softmax_cross_entropy_grad(portable: Callable, xp: Any, p: Any, t: Any, gy: Any) -> Any:
    """(p - onehot(t)) gy / N with p - 1 written at the labels: the portable arithmetic, rounding included, in
    three calls instead of a chain of array-api-compat's."""
    if not _native(p) or p.ndim != 2 or t.dtype != torch.int64:
        return portable(xp, p, t, gy)
    labels = t.view(-1, 1)
    g = p.scatter(1, labels, p.gather(1, labels) - 1.0)
    return g * (gy * (1.0 / p.shape[0]))


class TorchGraphs:
    """CUDA graphs through `torch.cuda.CUDAGraph`, whose private memory pool torch keeps with the graph."""

    name: str = "torch"

    def __init__(self, device: Any) -> None:
        self._device = device
        self._stream = torch.cuda.Stream(device)

    def warm(self, fn: Callable[[], Any]) -> Any:
        """`fn()` run on the capture stream, in order with the current stream's work (torch makes a cuBLAS
        workspace per stream: made here, outside a capture)."""
        current = torch.cuda.current_stream(self._device)
        self._stream.wait_stream(current)
        try:
            with torch.cuda.stream(self._stream):
                return fn()
        finally:
            current.wait_stream(self._stream)

    def capture(self, fn: Callable[[], None]) -> Any:
        """The graph of `fn`'s kernels (none of which runs now); an error in `fn` ends the capture and is raised."""
        graph = torch.cuda.CUDAGraph()
        self._stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(self._stream):
            run_capture(lambda: graph.capture_begin(capture_error_mode="relaxed"), fn, graph.capture_end)
        return graph

    def launch(self, graph: Any) -> None:
        """Run the graph's kernels once."""
        graph.replay()

    @staticmethod
    def copy_into(target: Any, source: Any) -> None:
        """Copy `source` into the fixed buffer `target` (a kernel, which a graph can hold)."""
        target.copy_(source)

    @staticmethod
    def copy(a: Any) -> Any:
        """A fresh copy of `a`."""
        return a.clone()

    @staticmethod
    def same_memory(a: Any, b: Any) -> bool:
        """Whether `a` and `b` are the same memory, of the same size and dtype."""
        return a.data_ptr() == b.data_ptr() and a.numel() == b.numel() and a.dtype == b.dtype

    def release(self) -> None:
        """Nothing to give back: torch frees a graph's pool with the graph and its tensors."""


class TorchBackend(MutableBackend):
    """torch tensors: torch's own convolution and pooling kernels."""

    name = "torch"
    namespace = _tuned_namespace()

    def scatter_add(self, shape: Shape, index: Any, values: Any) -> Any:
        """index_add_ into fresh zeros: along the rows for an integer tensor, else at flat positions computed on
        the host."""
        if type(index) is torch.Tensor:
            rest = tuple(shape[1:])
            values = values.broadcast_to(tuple(index.shape) + rest)
            ids = index.reshape(-1).to(torch.int64)
            ids = torch.where(ids < 0, ids + shape[0], ids)
            return values.new_zeros(shape).index_add_(0, ids, values.reshape((ids.shape[0], *rest)))
        positions = flat_positions(shape, index)
        flat_values = values.broadcast_to(positions.shape).reshape(-1)
        pos = torch.as_tensor(positions.reshape(-1), device=values.device)
        return values.new_zeros(math.prod(shape)).index_add_(0, pos, flat_values).reshape(shape)

    def stream_key(self, like: Any, dtype: Any) -> tuple[str, str] | None:
        """One torch.Generator per device."""
        return ("torch", str(like.device))

    def new_generator(self, like: Any, seed: int) -> Any:
        """A torch.Generator on the tensor's device."""
        generator = torch.Generator(device=like.device)
        generator.manual_seed(seed)
        return generator

    def draw_uniform(self, generator: Any, shape: Shape, like: Any, dtype: Any) -> tuple[Any, Any]:
        """torch.rand with the device's generator."""
        return generator, torch.rand(shape, generator=generator, dtype=dtype, device=like.device)

    def generator_state(self, generator: Any) -> Any:
        """The generator's bytes."""
        return generator.get_state().numpy().copy()

    def generator_from_state(self, state: Any, device: str) -> Any:
        """A generator on `device` set to the saved bytes."""
        generator = torch.Generator(device=device)
        generator.set_state(torch.from_numpy(state.astype(np.uint8)))
        return generator

    def id_bounds(self, arrays: list[Any]) -> Any:
        """[min, max] of each array by aminmax, stacked, in one transfer."""
        bounds = [v.to(torch.int64) for a in arrays for v in torch.aminmax(a)]
        return torch.stack(bounds).cpu().numpy()

    def composites(self) -> dict[str, Callable[..., Any]]:
        """sigmoid, its gradient, softmax cross-entropy and its gradient, and the SGD update as torch's own
        kernels."""
        return {
            "sigmoid": _sigmoid,
            "sigmoid_grad": _sigmoid_grad,
            "sgd": _sgd,
            "softmax_cross_entropy": _softmax_cross_entropy,
            "softmax_cross_entropy_grad": _softmax_cross_entropy_grad,
        }

    # --- moves, memory and graphs --------------------------------------------------------------------------

    def to_cpu(self, x: Any) -> Any:
        """x on torch's 'cpu' device."""
        return x.cpu()

    def to_numpy(self, x: Any) -> np.ndarray:
        """x on the host, without torch's autograd, as NumPy (sharing memory when x is on the CPU already)."""
        return x.cpu().detach().numpy()

    def to_gpu(self, x: Any) -> Any:
        """x on torch's current CUDA device."""
        if not torch.cuda.is_available():
            raise RuntimeError("torch sees no CUDA GPU (torch.cuda.is_available() is False)")
        return x.cuda()

    def host_bits(self, x: Any, unsigned: Any) -> np.ndarray:
        """torch views bfloat16 as int16; NumPy re-reads it unsigned."""
        signed = {np.uint16: torch.int16}[unsigned]
        return x.detach().cpu().view(signed).numpy().view(unsigned)

    def place_bits(self, bits: np.ndarray, dtype: str, like: Any) -> Any:
        """The bits as int16, viewed as torch's `dtype`, on `like`'s device."""
        signed = torch.from_numpy(bits.view(np.int16).copy())
        return signed.view(getattr(torch, dtype)).to(like.device)

    def memory_key(self, x: Any) -> Any:
        """The address of x's storage: views of one tensor share it."""
        return ("torch", x.untyped_storage().data_ptr())

    def graph_kit(self, device: Any) -> TorchGraphs | None:
        """CUDA graphs on a CUDA `device`; none on the CPU or another device."""
        return TorchGraphs(device) if device.type == "cuda" else None

    @staticmethod
    def adopt(x: Any) -> Any:
        """x without torch's autograd: a tensor that requires grad is detached (same memory), so that torch
        builds no graph of its own behind xdezero's."""
        return x.detach() if x.requires_grad else x

    def pad_images(self, x: Any, pad: Pair, value: float) -> Any:
        """torch.nn.functional.pad."""
        return tf.pad(x, (pad[1], pad[1], pad[0], pad[0]), value=value)

    def im2col(self, x: Any, kernel: Pair, stride: Pair, pad: Pair, value: float) -> Any:
        """torch.nn.functional.unfold."""
        n, c, h, w = x.shape
        oh, ow = out_size(h, kernel[0], stride[0], pad[0]), out_size(w, kernel[1], stride[1], pad[1])
        col = (
            tf.unfold(x, kernel, padding=pad, stride=stride)
            if value == 0
            else tf.unfold(self.pad_images(x, pad, value), kernel, stride=stride)
        )
        return col.reshape(n, c, kernel[0], kernel[1], oh, ow)

    def col2im(self, col: Any, shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """torch.nn.functional.fold."""
        n, c, h, w = shape
        oh, ow = col.shape[4], col.shape[5]
        return tf.fold(col.reshape(n, c * kernel[0] * kernel[1], oh * ow), (h, w), kernel, padding=pad, stride=stride)

    def conv2d(self, x: Any, W: Any, b: Any, stride: Pair, pad: Pair) -> Any:
        """y = W ⋆ x + b by torch.nn.functional.conv2d."""
        if not (_native(x, W) if b is None else _native(x, W, b)):
            return super().conv2d(x, W, b, stride, pad)
        return tf.conv2d(x, W, b, stride, pad)

    def deconv2d(self, x: Any, W: Any, b: Any, stride: Pair, pad: Pair, outsize: Pair) -> Any:
        """y = Wᵀ ⋆ x + b by torch.nn.functional.conv_transpose2d; rows and columns beyond the default output
        size (fewer than the stride) are output padding."""
        if not (_native(x, W) if b is None else _native(x, W, b)):
            return super().deconv2d(x, W, b, stride, pad, outsize)
        extra = tuple(
            o - ((n - 1) * s - 2 * p + k) for o, n, s, p, k in zip(outsize, x.shape[2:], stride, pad, W.shape[2:])
        )
        return tf.conv_transpose2d(x, W, b, stride, pad, output_padding=extra)

    def conv2d_grad_w(self, x: Any, gy: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """gW of conv2d(x, W) by torch's convolution_backward (only the weight gradient asked for)."""
        if not _native(x, gy):
            return super().conv2d_grad_w(x, gy, kernel, stride, pad)
        weight = x.new_empty(()).expand(gy.shape[1], x.shape[1], *kernel)  # its shape is all that is read
        return _convolution_backward(gy, x, weight, None, stride, pad, _ONE, False, _ZERO, 1, (False, True, False))[1]

    def conv2d_grads(self, x: Any, W: Any, gy: Any, stride: Pair, pad: Pair) -> tuple[Any, Any]:
        """(gx, gW) of conv2d(x, W) in one call of torch's convolution_backward."""
        if not _native(x, W, gy):
            return super().conv2d_grads(x, W, gy, stride, pad)
        gx, gW, _ = _convolution_backward(gy, x, W, None, stride, pad, _ONE, False, _ZERO, 1, (True, True, False))
        return gx, gW

    def max_pool(self, x: Any, kernel: Pair, stride: Pair, pad: Pair) -> tuple[Any, tuple[Any, ...]]:
        """(y, (flat index of each window's first maximum within its image plane,)) by max_pool2d."""
        if not _native(x):
            return super().max_pool(x, kernel, stride, pad)
        y, index = tf.max_pool2d(x, kernel, stride, pad, return_indices=True)
        return y, (index,)

    def max_pool_grad(
        self, argmax: tuple[Any, ...], gy: Any, x_shape: Shape, kernel: Pair, stride: Pair, pad: Pair
    ) -> Any:
        """gx = gy added at the recorded flat positions of each image plane."""
        if not _native(gy):
            return super().max_pool_grad(argmax, gy, x_shape, kernel, stride, pad)
        n, c, h, w = x_shape
        gx = gy.new_zeros((n, c, h * w))
        return gx.scatter_add_(2, argmax[0].flatten(2), gy.flatten(2)).view(x_shape)

    def max_pool_pick(self, argmax: tuple[Any, ...], x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """y = x at the recorded flat positions of each image plane."""
        if not _native(x):
            return super().max_pool_pick(argmax, x, kernel, stride, pad)
        index = argmax[0]
        return x.flatten(2).gather(2, index.flatten(2)).view(index.shape)

    def avg_pool(self, x: Any, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """y = Σ of each window / (KH·KW) by avg_pool2d (zero padding counted)."""
        if not _native(x):
            return super().avg_pool(x, kernel, stride, pad)
        return tf.avg_pool2d(x, kernel, stride, pad, count_include_pad=True)

    def avg_pool_grad(self, gy: Any, x_shape: Shape, kernel: Pair, stride: Pair, pad: Pair) -> Any:
        """gx = gy/(KH·KW) added over each window, by torch's avg_pool2d_backward."""
        if not _native(gy):
            return super().avg_pool_grad(gy, x_shape, kernel, stride, pad)
        like = gy.new_empty(()).expand(x_shape)  # its shape is all that is read
        return torch.ops.aten.avg_pool2d_backward(gy, like, kernel, stride, pad, False, True, None)
