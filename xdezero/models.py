"""Models: Layers with a `plot`, and ready-made networks (Sequential, MLP, VGG16, ResNet)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

import xdezero.functions as F
from xdezero.core import Variable
from xdezero.layers import BatchNorm, Conv2d, Layer, Linear
from xdezero.visualize import plot_dot_graph

__all__ = ["Model", "Sequential", "MLP", "VGG16", "ResNet", "ResNet50", "ResNet101", "ResNet152"]


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
        self.layers = []
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(f"Sequential: item {i} is a {type(layer).__name__}, not a Layer or function")
            setattr(self, f"l{i}", layer)  # registered only when it is a Layer; functions are just called
            self.layers.append(layer)

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return x


class MLP(Model):
    """Fully connected layers `l0`, `l1`, ... of the given output sizes, `activation` between them."""

    def __init__(self, fc_output_sizes: Sequence[int], activation: Callable[[Any], Variable] = F.sigmoid) -> None:
        super().__init__()
        self.activation = activation
        self.layers = []
        for i, out_size in enumerate(fc_output_sizes):
            layer = Linear(out_size)
            setattr(self, f"l{i}", layer)
            self.layers.append(layer)

    def forward(self, x: Any) -> Variable:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


def _weights_path(model_name: str, pretrained: bool | str | os.PathLike | None) -> str | None:
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

    BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

    def __init__(self, pretrained: bool | str | os.PathLike = False) -> None:
        super().__init__()
        weights = _weights_path("VGG16", pretrained)
        for block, (channels, n) in enumerate(self.BLOCKS, start=1):
            for j in range(1, n + 1):
                setattr(self, f"conv{block}_{j}", Conv2d(channels, kernel_size=3, stride=1, pad=1))
        self.fc6 = Linear(4096)
        self.fc7 = Linear(4096)
        self.fc8 = Linear(1000)
        if weights:
            self.load_weights(weights)

    def forward(self, x: Any) -> Variable:
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

    def __init__(self, n_layers: int = 152, pretrained: bool | str | os.PathLike = False) -> None:
        super().__init__()
        if n_layers not in self.BLOCKS:
            raise ValueError(f"ResNet: n_layers must be one of {sorted(self.BLOCKS)}, got {n_layers!r}")
        weights = _weights_path(type(self).__name__, pretrained)
        counts = self.BLOCKS[n_layers]
        self.conv1 = Conv2d(64, 7, 2, 3)
        self.bn1 = BatchNorm()
        self.res2 = BuildingBlock(counts[0], 64, 64, 256, 1)
        self.res3 = BuildingBlock(counts[1], 256, 128, 512, 2)
        self.res4 = BuildingBlock(counts[2], 512, 256, 1024, 2)
        self.res5 = BuildingBlock(counts[3], 1024, 512, 2048, 2)
        self.fc6 = Linear(1000)
        if weights:
            self.load_weights(weights)

    def forward(self, x: Any) -> Variable:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.pooling(x, kernel_size=3, stride=2)
        x = self.res5(self.res4(self.res3(self.res2(x))))
        h, w = x.shape[2:]
        x = F.sum(x, axis=(2, 3)) / (h * w)  # global average pooling
        return self.fc6(x)


class ResNet50(ResNet):
    def __init__(self, pretrained: bool | str | os.PathLike = False) -> None:
        super().__init__(50, pretrained)


class ResNet101(ResNet):
    def __init__(self, pretrained: bool | str | os.PathLike = False) -> None:
        super().__init__(101, pretrained)


class ResNet152(ResNet):
    def __init__(self, pretrained: bool | str | os.PathLike = False) -> None:
        super().__init__(152, pretrained)


class BuildingBlock(Layer):
    """`n_layers` bottlenecks: the first (`a`) changes channels and stride, the others (`b1`, ...) keep them."""

    def __init__(self, n_layers: int, in_channels: int, mid_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.a = BottleneckA(in_channels, mid_channels, out_channels, stride)
        self._names = ["a"]
        for i in range(1, n_layers):
            setattr(self, f"b{i}", BottleneckB(out_channels, mid_channels))
            self._names.append(f"b{i}")

    def forward(self, x: Any) -> Variable:
        for name in self._names:
            x = getattr(self, name)(x)
        return x


class BottleneckA(Layer):
    """1×1 → 3×3 (strided) → 1×1 convolutions, plus a strided 1×1 projection of the input as the shortcut."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = Conv2d(mid_channels, 1, 1, 0, in_channels=in_channels, nobias=True)
        self.bn1 = BatchNorm()
        self.conv2 = Conv2d(mid_channels, 3, stride, 1, in_channels=mid_channels, nobias=True)
        self.bn2 = BatchNorm()
        self.conv3 = Conv2d(out_channels, 1, 1, 0, in_channels=mid_channels, nobias=True)
        self.bn3 = BatchNorm()
        self.conv4 = Conv2d(out_channels, 1, stride, 0, in_channels=in_channels, nobias=True)
        self.bn4 = BatchNorm()

    def forward(self, x: Any) -> Variable:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + self.bn4(self.conv4(x)))


class BottleneckB(Layer):
    """1×1 → 3×3 → 1×1 convolutions with the input added back (identity shortcut)."""

    def __init__(self, in_channels: int, mid_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(mid_channels, 1, 1, 0, in_channels=in_channels, nobias=True)
        self.bn1 = BatchNorm()
        self.conv2 = Conv2d(mid_channels, 3, 1, 1, in_channels=mid_channels, nobias=True)
        self.bn2 = BatchNorm()
        self.conv3 = Conv2d(in_channels, 1, 1, 0, in_channels=mid_channels, nobias=True)
        self.bn3 = BatchNorm()

    def forward(self, x: Any) -> Variable:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + x)
