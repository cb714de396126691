"""Models: Layers with a `plot`, and ready-made networks (Sequential, MLP, VGG16, ResNet)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

import xdezero.functions as F
from xdezero.core import Variable
from xdezero.functions.shape import GetItemGrad
from xdezero.layers import BatchNorm, Conv2d, Layer, Linear
from xdezero.visualize import plot_dot_graph

__all__ = [
    "Model",
    "Sequential",
    "MLP",
    "VGG16",
    "ResNet",
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "SqueezeNet",
]


class Model(Layer):
    """A Layer that is a whole network; `plot` draws its computational graph."""

    def plot(self, *inputs: Any, to_file: str = "model.png") -> Any:
        """Run forward on `inputs` and draw the graph of the result with Graphviz (`dot` must be installed)."""
        y = self.forward(*inputs)
        return plot_dot_graph(y, verbose=True, to_file=to_file)


class Sequential(Model):
    """Layers applied one after another; they are registered as `l0`, `l1`, ..."""

    def __init__(self, *layers: Layer | Callable[[Any], Any]) -> None:
        super().__init__()
        self.layers: list[Layer | Callable[[Any], Any]] = []
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"Sequential: item {i} is a {type(layer).__name__}, not a Layer or function")
            setattr(self, f"l{i}", layer)  # registered only when it is a Layer; functions are just called
            self.layers.append(layer)

    def forward(self, x: Any) -> Variable:
        """x through every layer in order."""
        for layer in self.layers:
            x = layer(x)
        return x


class MLP(Model):
    """Fully connected layers `l0`, `l1`, ... of the given output sizes, `activation` between them."""

    def __init__(self, fc_output_sizes: Sequence[int], activation: Callable[[Any], Variable] = F.sigmoid) -> None:
        super().__init__()
        self.activation: Callable[[Any], Variable] = activation
        self.layers: list[Linear] = []
        for i, out_size in enumerate(fc_output_sizes):
            layer = Linear(out_size)
            setattr(self, f"l{i}", layer)
            self.layers.append(layer)

    def forward(self, x: Any) -> Variable:
        """The last layer's output (no activation after it)."""
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


def _weights_path(model_name: str, pretrained: bool | str | os.PathLike[str] | None) -> str | None:
    """The local weights file named by `pretrained` (checked before the model is built), or None.

    True alone cannot be honoured: nothing is downloaded.
    """
    if pretrained is False or pretrained is None:
        return None
    if pretrained is True:
        raise ValueError(
            f"{model_name}(pretrained=True): xdezero does not download weights; pass the path of a local "
            f".npz weights file instead, e.g. {model_name}(pretrained='weights.npz')"
        )
    path = os.fspath(pretrained)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_name}: pretrained weights file {path!r} does not exist")
    return path


class VGG16(Model):
    """VGG-16 (13 3×3 convolutions in 5 blocks, then 3 fully connected layers) for 3-channel NCHW images.

    `pretrained` may be the path of a local .npz file in DeZero's key layout (`conv1_1/W`, ..., `fc8/b`).
    """

    BLOCKS: ClassVar[tuple[tuple[int, int], ...]] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

    def __init__(self, pretrained: bool | str | os.PathLike[str] = False) -> None:
        super().__init__()
        weights = _weights_path("VGG16", pretrained)
        for block, (channels, n) in enumerate(self.BLOCKS, start=1):
            for j in range(1, n + 1):
                setattr(self, f"conv{block}_{j}", Conv2d(channels, kernel_size=3, stride=1, pad=1))
        self.fc6: Linear = Linear(4096)
        self.fc7: Linear = Linear(4096)
        self.fc8: Linear = Linear(1000)
        if weights:
            self.load_weights(weights)

    def forward(self, x: Any) -> Variable:
        """Class scores (N, 1000) for images x (N, 3, 224, 224)."""
        for block, (_, n) in enumerate(self.BLOCKS, start=1):
            for j in range(1, n + 1):
                x = F.relu(getattr(self, f"conv{block}_{j}")(x))
            x = F.pooling(x, 2, 2)
        x = F.reshape(x, (x.shape[0], -1))
        x = F.dropout(F.relu(self.fc6(x)))
        x = F.dropout(F.relu(self.fc7(x)))
        return self.fc8(x)

    @staticmethod
    def preprocess(image: Any, size: tuple[int, int] | None = (224, 224), dtype: Any = np.float32) -> np.ndarray:
        """A PIL image (or HWC RGB array) as a CHW BGR array with the ImageNet channel means subtracted."""
        if hasattr(image, "convert"):
            image = image.convert("RGB")
            if size:
                image = image.resize(size)
        a = np.asarray(image, dtype=dtype)[:, :, ::-1]
        a = a - np.array([103.939, 116.779, 123.68], dtype=dtype)
        return np.ascontiguousarray(a.transpose((2, 0, 1)))


class ResNet(Model):
    """ResNet with bottleneck blocks (50, 101 or 152 layers) for 3-channel NCHW images.

    `pretrained` may be the path of a local .npz file in this model's key layout.
    """

    BLOCKS: ClassVar[dict[int, tuple[int, ...]]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

    def __init__(self, n_layers: int = 152, pretrained: bool | str | os.PathLike[str] = False) -> None:
        super().__init__()
        if n_layers not in self.BLOCKS:
            raise ValueError(f"ResNet: n_layers must be one of {sorted(self.BLOCKS)}, got {n_layers!r}")
        weights = _weights_path(type(self).__name__, pretrained)
        counts = self.BLOCKS[n_layers]
        self.conv1: Conv2d = Conv2d(64, 7, 2, 3)
        self.bn1: BatchNorm = BatchNorm()
        self.res2: BuildingBlock = BuildingBlock(counts[0], 64, 64, 256, 1)
        self.res3: BuildingBlock = BuildingBlock(counts[1], 256, 128, 512, 2)
        self.res4: BuildingBlock = BuildingBlock(counts[2], 512, 256, 1024, 2)
        self.res5: BuildingBlock = BuildingBlock(counts[3], 1024, 512, 2048, 2)
        self.fc6: Linear = Linear(1000)
        if weights:
            self.load_weights(weights)

    def forward(self, x: Any) -> Variable:
        """Class scores (N, 1000) for images x (N, 3, H, W)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.pooling(x, kernel_size=3, stride=2)
        x = self.res5(self.res4(self.res3(self.res2(x))))
        h, w = x.shape[2:]
        x = F.sum(x, axis=(2, 3)) / (h * w)  # global average pooling
        return self.fc6(x)


class ResNet50(ResNet):
    """ResNet with 50 layers."""

    def __init__(self, pretrained: bool | str | os.PathLike[str] = False) -> None:
        super().__init__(50, pretrained)


class ResNet101(ResNet):
    """ResNet with 101 layers."""

    def __init__(self, pretrained: bool | str | os.PathLike[str] = False) -> None:
        super().__init__(101, pretrained)


class ResNet152(ResNet):
    """ResNet with 152 layers."""

    def __init__(self, pretrained: bool | str | os.PathLike[str] = False) -> None:
        super().__init__(152, pretrained)


class BuildingBlock(Layer):
    """`n_layers` bottlenecks: the first (`a`) changes channels and stride, the others (`b1`, ...) keep them."""

    def __init__(
        self,
        n_layers: int,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int,
        downsample_fb: bool = False,
    ) -> None:
        super().__init__()
        self.a: BottleneckA = BottleneckA(in_channels, mid_channels, out_channels, stride, downsample_fb)
        self._names = ["a"]
        for i in range(1, n_layers):
            setattr(self, f"b{i}", BottleneckB(out_channels, mid_channels))
            self._names.append(f"b{i}")

    def forward(self, x: Any) -> Variable:
        """x through the bottlenecks in order."""
        for name in self._names:
            x = getattr(self, name)(x)
        return x


class BottleneckA(Layer):
    """1×1 → 3×3 → 1×1 convolutions, plus a strided 1×1 projection of the input as the shortcut. The stride is on
    the first 1×1 convolution (the original MSRA ResNet, DeZero's default and its pretrained weights' layout),
    or on the 3×3 one with `downsample_fb=True` (Facebook's ResNet)."""

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 2, downsample_fb: bool = False
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (1, stride) if downsample_fb else (stride, 1)
        self.conv1: Conv2d = Conv2d(mid_channels, 1, stride_1x1, 0, in_channels=in_channels, nobias=True)
        self.bn1: BatchNorm = BatchNorm()
        self.conv2: Conv2d = Conv2d(mid_channels, 3, stride_3x3, 1, in_channels=mid_channels, nobias=True)
        self.bn2: BatchNorm = BatchNorm()
        self.conv3: Conv2d = Conv2d(out_channels, 1, 1, 0, in_channels=mid_channels, nobias=True)
        self.bn3: BatchNorm = BatchNorm()
        self.conv4: Conv2d = Conv2d(out_channels, 1, stride, 0, in_channels=in_channels, nobias=True)
        self.bn4: BatchNorm = BatchNorm()

    def forward(self, x: Any) -> Variable:
        """relu(residual(x) + projection(x))."""
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + self.bn4(self.conv4(x)))


class BottleneckB(Layer):
    """1×1 → 3×3 → 1×1 convolutions with the input added back (identity shortcut)."""

    def __init__(self, in_channels: int, mid_channels: int) -> None:
        super().__init__()
        self.conv1: Conv2d = Conv2d(mid_channels, 1, 1, 0, in_channels=in_channels, nobias=True)
        self.bn1: BatchNorm = BatchNorm()
        self.conv2: Conv2d = Conv2d(mid_channels, 3, 1, 1, in_channels=mid_channels, nobias=True)
        self.bn2: BatchNorm = BatchNorm()
        self.conv3: Conv2d = Conv2d(in_channels, 1, 1, 0, in_channels=mid_channels, nobias=True)
        self.bn3: BatchNorm = BatchNorm()

    def forward(self, x: Any) -> Variable:
        """relu(residual(x) + x)."""
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + x)


# --- SqueezeNet --------------------------------------------------------------------------------------


def _concat_channels(a: Variable, b: Variable) -> Variable:
    """[a, b] along the channel axis: each placed into zeros of the joint shape (the adjoint of slicing)."""
    n, ca, h, w = a.shape
    cb = b.shape[1]
    shape = (n, ca + cb, h, w)
    everything = slice(None)
    left = GetItemGrad((everything, slice(0, ca), everything, everything), shape)(a)
    right = GetItemGrad((everything, slice(ca, ca + cb), everything, everything), shape)(b)
    return left + right


class Fire(Layer):
    """SqueezeNet's fire module: a 1×1 squeeze to `squeeze` channels, then 1×1 and 3×3 expansions, concatenated."""

    def __init__(self, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze: Conv2d = Conv2d(squeeze, kernel_size=1)
        self.expand1x1: Conv2d = Conv2d(expand1x1, kernel_size=1)
        self.expand3x3: Conv2d = Conv2d(expand3x3, kernel_size=3, pad=1)

    def forward(self, x: Any) -> Variable:
        """The two expansions of the squeezed x, concatenated along the channels."""
        s = F.relu(self.squeeze(x))
        return _concat_channels(F.relu(self.expand1x1(s)), F.relu(self.expand3x3(s)))


class SqueezeNet(Model):
    """SqueezeNet 1.1 (Iandola et al. 2016, the v1.1 layout of its reference code): (N, 3, H, W) images to
    (N, num_classes) class scores.

    A 3×3 stride-2 convolution with 64 channels, eight fire modules (squeeze 16, 16, 32, 32, 48, 48, 64, 64 to
    twice 64, 64, 128, 128, 192, 192, 256, 256 channels) with 3×3 stride-2 max pooling after the stem and after
    fires 2 and 4, then dropout, a 1×1 convolution to the classes, ReLU and a global average. Pooling rounds
    the output size down (the reference rounds up; they agree for 224×224 inputs). No pretrained weights are
    published in DeZero's format, so `pretrained` must stay False.
    """

    def __init__(self, pretrained: bool = False, num_classes: int = 1000, dropout_ratio: float = 0.5) -> None:
        super().__init__()
        if pretrained:
            raise NotImplementedError("SqueezeNet: no pretrained weights are available; use pretrained=False")
        self.dropout_ratio: float = dropout_ratio
        self.conv1: Conv2d = Conv2d(64, kernel_size=3, stride=2)
        sizes = [(16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256)]
        self.fires: list[Fire] = []
        for i, (squeeze, expand) in enumerate(sizes):
            fire = Fire(squeeze, expand, expand)
            setattr(self, f"fire{i + 2}", fire)
            self.fires.append(fire)
        self.conv10: Conv2d = Conv2d(num_classes, kernel_size=1)

    def forward(self, x: Any) -> Variable:
        """Class scores (N, num_classes) for images x (N, 3, H, W)."""
        x = F.pooling(F.relu(self.conv1(x)), 3, stride=2)
        for i, fire in enumerate(self.fires):
            x = fire(x)
            if i in (1, 3):
                x = F.pooling(x, 3, stride=2)
        x = F.relu(self.conv10(F.dropout(x, self.dropout_ratio)))
        return F.mean(x, axis=(2, 3))
