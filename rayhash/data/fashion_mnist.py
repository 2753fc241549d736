"""Fashion-MNIST from its gzipped idx files: 60,000 training then 10,000 test images.

Positions 0..69,999 in that order are what ``PROTOCOL.md`` and :mod:`rayhash.data.splits`
index into.
"""

from __future__ import annotations

import gzip
import logging
import posixpath

import numpy as np

from rayhash import storage
from rayhash.data.images import LabeledImages

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_PARTS = (("train", 60_000), ("t10k", 10_000))
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801


def _parse_idx(raw: bytes, magic: int, count: int, uri: str) -> np.ndarray:
    """An idx file: a big-endian header (magic, dims) then uint8 data."""
    ndim = magic & 0xFF
    header = np.frombuffer(raw[: 4 * (ndim + 1)], dtype=">u4")
    if len(header) != ndim + 1 or int(header[0]) != magic:
        raise ValueError(f"{uri}: not an idx file with magic {magic:#010x}.")
    shape = tuple(int(d) for d in header[1:])
    if shape[0] != count or (ndim == 3 and shape[1:] != (28, 28)):
        raise ValueError(f"{uri}: shape {shape}, expected ({count}{', 28, 28' * (ndim == 3)}).")
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (ndim + 1))
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{uri}: {data.size} data bytes for shape {shape}; file is truncated.")
    return data.reshape(shape)


def load_fashion_mnist(root: str = DEFAULT_ROOT) -> LabeledImages:
    """All 70,000 images ``(70000, 28, 28, 1)`` uint8 with labels 0..9, train then test."""
    fs, folder = storage.filesystem(root)  # one filesystem for the four reads
    arrays = {}
    for prefix, count in _PARTS:
        for kind, magic in (("images-idx3", _IMAGES_MAGIC), ("labels-idx1", _LABELS_MAGIC)):
            name = f"{prefix}-{kind}-ubyte.gz"
            try:
                raw = gzip.decompress(fs.cat_file(posixpath.join(folder, name)))
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"Fashion-MNIST file {storage.join(root, name)} not found. Install the data "
                    f"with `apt-get install -y dataset-fashion-mnist` (files land in "
                    f"{DEFAULT_ROOT}), or pass the folder that holds the *-idx?-ubyte.gz files."
                ) from None
            arrays[prefix, kind] = _parse_idx(raw, magic, count, storage.join(root, name))
    images = np.concatenate([arrays[p, "images-idx3"] for p, _ in _PARTS])[..., None]
    labels = np.concatenate([arrays[p, "labels-idx1"] for p, _ in _PARTS]).astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{root}: label {labels.max()} out of range 0..9.")
    return LabeledImages(images, labels, name="fashion-mnist", classes=CLASSES)
