"""Image data for rayhash: sources that return `LabeledImages`, protocol splits, transforms."""

from rayhash.data.cifar10 import load_cifar10
from rayhash.data.decode import ImageDecodeError, decode_image
from rayhash.data.fashion_mnist import load_fashion_mnist
from rayhash.data.files import load_image_files
from rayhash.data.images import LabeledImages
from rayhash.data.parquet import load_parquet
from rayhash.data.sources import SOURCES, load_source
from rayhash.data.splits import Split, protocol_split, random_split

_TORCH_NAMES = ("TorchImageDataset", "TwoViewAugment", "eval_transform")

__all__ = [
    "ImageDecodeError",
    "LabeledImages",
    "SOURCES",
    "Split",
    "decode_image",
    "load_cifar10",
    "load_fashion_mnist",
    "load_image_files",
    "load_parquet",
    "load_source",
    "protocol_split",
    "random_split",
    *_TORCH_NAMES,
]


def __getattr__(name: str):
    # The transforms pull in torchvision (seconds); decoding and sources must not pay for it.
    if name in _TORCH_NAMES:
        from rayhash.data import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'rayhash.data' has no attribute {name!r}")
