"""Image pipelines on uint8 ``(H, W, C)`` numpy images -> float ``(C, H, W)`` tensors.

Built from ``torchvision.transforms.v2`` on tensors (no PIL round trip), so a 28 px
Fashion-MNIST view costs tens of microseconds on one CPU core. Channel conversion happens
last: a grayscale image fed to a 3-channel backbone is repeated to 3 channels, an RGB image
fed to a 1-channel model is converted to luma.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from rayhash.data.images import LabeledImages


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, C) image, got {image.dtype} {image.shape}.")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def _finish(channels: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Match the model's channel count, then scale to [0, 1] and normalise."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} need {channels} values each.")
    # Plain arithmetic: a third of the cost of v2.ToDtype + v2.Normalize on 28 px images.
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
    shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0

    def finish(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != channels:
            x = x.expand(3, -1, -1) if channels == 3 else v2.functional.rgb_to_grayscale(x)
        return (x.float() - shift) * scale

    return finish


def eval_transform(
    image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[np.ndarray], torch.Tensor]:
    """Deterministic: resize to ``image_size`` square, match channels, normalise."""
    resize = v2.Resize((image_size, image_size), antialias=True)
    finish = _finish(channels, mean, std)

    def transform(image: np.ndarray) -> torch.Tensor:
        x = _to_tensor(image)
        if x.shape[1:] != (image_size, image_size):
            x = resize(x)
        return finish(x)

    return transform


def resize_to_input(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``(H, W, C)`` resized to ``size`` square exactly as :func:`eval_transform` resizes it
    (which then leaves it as it is): whoever holds many images resizes them first, to the
    model's input, and the codes come out the same."""
    if image.shape[:2] == (size, size):
        return image
    if not image.flags.writeable:  # a decoder's read-only buffer: torch will not wrap it
        image = image.copy()
    return v2.functional.resize(_to_tensor(image), [size, size], antialias=True).permute(1, 2, 0).numpy()


def eval_batch_transform(
    image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Sequence[np.ndarray]], torch.Tensor]:
    """``eval_transform`` over a batch: ``(N, C, H, W)``, vectorised when every image is already the model's size."""
    one = eval_transform(image_size, channels, mean, std)
    shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    ready = (image_size, image_size, channels)

    def transform(images: Sequence[np.ndarray]) -> torch.Tensor:
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == ready:
            stacked = images
        elif len(images) and all(np.shape(im) == ready and np.asarray(im).dtype == np.uint8 for im in images):
            stacked = np.stack(images)
        else:
            # A Python call per image dominated encoding time; only mixed sizes take this path.
            return (
                torch.stack([one(img) for img in images])
                if len(images)
                else torch.empty(0, channels, image_size, image_size)
            )
        return (torch.from_numpy(np.ascontiguousarray(stacked)).permute(0, 3, 1, 2).float() - shift) * scale

    return transform


class TwoViewAugment:
    """Two independent random views of one image, for contrastive hashing losses.

    Crop-resize and flip apply to every image; colour jitter (p=0.8) and random grayscale
    to RGB inputs; brightness and contrast jitter (p=0.8, ``gray_jitter``) to grayscale
    inputs, their one colour dimension, which would otherwise never differ between the views;
    blur (p=0.5) when ``blur=True``; random erasing of a patch (probability ``erase``) last, on the
    normalised view, so the patch reads as the normalisation's mean intensity.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        hflip: bool = True,
        color_jitter: float = 0.4,
        grayscale_p: float = 0.2,
        gray_jitter: float = 0.8,
        blur: bool = False,
        erase: float = 0.0,
    ):
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}.")
        geometric = [v2.RandomResizedCrop(image_size, scale=crop_scale, antialias=True)]
        if hflip:
            geometric.append(v2.RandomHorizontalFlip())
        if blur:
            kernel = max(3, image_size // 10 | 1)  # odd, about a tenth of the image
            geometric.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
        color = []
        if color_jitter > 0:
            cj = color_jitter
            color.append(v2.RandomApply([v2.ColorJitter(cj, cj, cj, min(cj / 4, 0.5))], p=0.8))
        if grayscale_p > 0:
            color.append(v2.RandomGrayscale(p=grayscale_p))
        self._geometric = v2.Compose(geometric)
        self._color = v2.Compose(color) if color else None
        self._gray = v2.RandomApply([v2.ColorJitter(gray_jitter, gray_jitter)], p=0.8) if gray_jitter > 0 else None
        self._finish = _finish(channels, mean, std)
        if not 0 <= erase <= 1:
            raise ValueError(f"erase is a probability in [0, 1], got {erase}.")
        self._erase = v2.RandomErasing(p=erase, scale=(0.02, 0.2), value=0) if erase > 0 else None

    def view(self, image: np.ndarray) -> torch.Tensor:
        x = self._geometric(_to_tensor(image))
        jitter = self._color if x.shape[0] == 3 else self._gray
        if jitter is not None:
            x = jitter(x)
        x = self._finish(x)
        return self._erase(x) if self._erase is not None else x

    def __call__(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(image), self.view(image)


class TorchImageDataset(Dataset):
    """``LabeledImages`` as a torch Dataset of ``(transform(image), position)``."""

    def __init__(self, images: LabeledImages, transform: Callable):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images.images[index]), index
