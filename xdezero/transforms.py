"""Per-example preprocessing (DeZero's `dezero.transforms`): callables applied by a Dataset to one example.

They run on the host, on NumPy arrays (and PIL images for the image transforms), before a DataLoader
stacks examples into a batch. Pillow is imported only when an image transform is created.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xdezero._geometry import pair

__all__ = [
    "Compose",
    "Normalize",
    "Flatten",
    "AsType",
    "ToFloat",
    "ToInt",
    "Convert",
    "Resize",
    "CenterCrop",
    "ToArray",
    "ToPIL",
    "RandomHorizontalFlip",
    "pair",
]


def _pil_image() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "the image transforms of xdezero.transforms need Pillow; install it with `pip install pillow`"
        ) from None
    return Image


class Compose:
    """Apply `transforms` in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]] = ()) -> None:
        self.transforms: list[Callable[[Any], Any]] = list(transforms)

    def __call__(self, x: Any) -> Any:
        """x through every transform in order."""
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Normalize:
    """(x - mean) / std; a sequence mean/std is per channel, along the first (channel) axis."""

    def __init__(self, mean: float | Sequence[float] = 0, std: float | Sequence[float] = 1) -> None:
        self.mean: float | Sequence[float] = mean
        self.std: float | Sequence[float] = std

    @staticmethod
    def _per_channel(value: Any, array: np.ndarray) -> Any:
        if np.isscalar(value):
            return value
        value = np.asarray(value, dtype=array.dtype if array.dtype.kind == "f" else np.float64)
        if value.size == 1:
            return value.reshape(())
        if array.ndim == 0 or value.size != array.shape[0]:
            raise ValueError(
                f"Normalize: {value.size} per-channel values do not match an array of shape {array.shape} "
                "(channels go first)"
            )
        return value.reshape((-1,) + (1,) * (array.ndim - 1))

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """(array - mean) / std."""
        return (array - self._per_channel(self.mean, array)) / self._per_channel(self.std, array)


class Flatten:
    """A 1-d copy of the example."""

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """The elements of `array` in a new 1-d array."""
        return np.ravel(array).copy()


class AsType:
    """Cast the example to `dtype`."""

    def __init__(self, dtype: Any = np.float32) -> None:
        self.dtype: Any = dtype

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """A copy of `array` of dtype `dtype`."""
        return np.asarray(array).astype(self.dtype)


class ToFloat(AsType):
    """Cast the example to a float dtype (float32 by default)."""

    def __init__(self, dtype: Any = np.float32) -> None:
        super().__init__(dtype)


class ToInt(AsType):
    """Cast the example to an integer dtype (int64 by default)."""

    def __init__(self, dtype: Any = np.int64) -> None:
        super().__init__(dtype)


# --- image transforms (Pillow) ---------------------------------------------------------------------


class Convert:
    """Convert a PIL image to `mode` ('RGB', 'L', ...); 'BGR' gives an RGB image with red and blue swapped."""

    def __init__(self, mode: str = "RGB") -> None:
        _pil_image()
        self.mode: str = mode

    def __call__(self, img: Any) -> Any:
        """The PIL image `img` converted to `mode`."""
        Image = _pil_image()
        if self.mode == "BGR":
            r, g, b = img.convert("RGB").split()
            return Image.merge("RGB", (b, g, r))
        return img.convert(self.mode)


class Resize:
    """Resize a PIL image to `size` (an int for a square, or (width, height)); bilinear by default."""

    def __init__(self, size: int | Sequence[int], mode: Any = None) -> None:
        Image = _pil_image()
        self.size: tuple[int, int] = pair(size, "Resize: size")
        self.mode: Any = Image.Resampling.BILINEAR if mode is None else mode

    def __call__(self, img: Any) -> Any:
        """The PIL image `img` resized to `size`."""
        return img.resize(self.size, self.mode)


class CenterCrop:
    """Crop the central `size` (int or (width, height)) region of a PIL image."""

    def __init__(self, size: int | Sequence[int]) -> None:
        _pil_image()
        self.size: tuple[int, int] = pair(size, "CenterCrop: size")

    def __call__(self, img: Any) -> Any:
        """The central `size` region of the PIL image `img`."""
        width, height = img.size
        out_w, out_h = self.size
        if out_w > width or out_h > height:
            raise ValueError(f"CenterCrop: cannot crop {out_w}x{out_h} out of a {width}x{height} image")
        left, top = (width - out_w) // 2, (height - out_h) // 2
        return img.crop((left, top, left + out_w, top + out_h))


class ToArray:
    """A PIL image as a NumPy array of shape (channels, height, width) and `dtype`; arrays pass unchanged."""

    def __init__(self, dtype: Any = np.float32) -> None:
        self.dtype: Any = dtype

    def __call__(self, img: Any) -> np.ndarray:
        """`img` as a (channels, height, width) array (an array is returned as it is)."""
        if isinstance(img, np.ndarray):
            return img
        Image = _pil_image()
        if not isinstance(img, Image.Image):
            raise TypeError(f"ToArray: expected a PIL image or a NumPy array, got {type(img).__name__}")
        array = np.asarray(img)
        if array.ndim == 2:  # grayscale: add the channel axis
            array = array[:, :, None]
        return array.transpose(2, 0, 1).astype(self.dtype)


class ToPIL:
    """A (channels, height, width) uint8 NumPy array as a PIL image."""

    def __init__(self) -> None:
        _pil_image()

    def __call__(self, array: np.ndarray) -> Any:
        """`array` (channels, height, width) as a PIL image."""
        Image = _pil_image()
        data = np.asarray(array).transpose(1, 2, 0)
        if data.shape[2] == 1:
            data = data[:, :, 0]
        return Image.fromarray(data)


class RandomHorizontalFlip:
    """Mirror left-right with probability `p`: PIL images, or arrays along their last (width) axis.

    The coin comes from a private generator: seeded with `seed`, or else by one draw from NumPy's global
    RNG when the transform is created (so `np.random.seed(...)` beforehand makes it reproducible).
    """

    def __init__(self, p: float = 0.5, seed: int | np.random.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be a probability in [0, 1], got {p}")
        self.p: float = p
        self.rng: np.random.Generator = make_rng(seed)

    def __call__(self, img: Any) -> Any:
        """`img` mirrored left-right with probability `p`, else `img` itself."""
        if self.rng.random() >= self.p:
            return img
        if isinstance(img, np.ndarray):
            return img[..., ::-1].copy()
        return img.transpose(_pil_image().Transpose.FLIP_LEFT_RIGHT)


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A private Generator: from `seed`, or seeded by drawing (never re-seeding) from NumPy's global RNG."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        seed = int(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    return np.random.default_rng(seed)
