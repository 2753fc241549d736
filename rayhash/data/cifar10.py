"""CIFAR-10 from a folder the user gives (local or s3://), binary or python version.

The five training batches then the test batch give positions 0..59,999, the order the
``cifar10-1`` split in :mod:`rayhash.data.splits` indexes into.

The python version is pickles. rayhash never unpickles arbitrary data: :class:`_ArrayUnpickler`
resolves only the numpy globals an array needs and refuses every other global before it can
be called, so a tampered batch file cannot run code.
"""

from __future__ import annotations

import functools
import io
import logging
import pickle
import posixpath

import numpy as np

from rayhash import storage
from rayhash.data.images import LabeledImages

logger = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_RECORD = 1 + 3 * 32 * 32  # binary version: one label byte, then CHW pixels


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], object]:
    # The same functions live under numpy.core (numpy 1, and the original CIFAR pickles)
    # and numpy._core (numpy 2); take them from numpy itself rather than importing by name.
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    # Python 3 writes bytes as _codecs.encode(str, "latin1") under pickle protocol <= 2.
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; any other global is an error."""

    def find_class(self, module: str, name: str):
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: CIFAR-10 batches hold only numpy "
                "arrays and lists; this file is not an original CIFAR-10 python batch."
            ) from None


def load_restricted_pickle(data: bytes):
    """Unpickle ``data`` allowing only numpy array reconstruction (no other callables)."""
    # latin1: the original batches are Python 2 pickles whose str fields hold raw bytes.
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


def _parse_binary(raw: bytes, uri: str) -> tuple[np.ndarray, np.ndarray]:
    records = np.frombuffer(raw, dtype=np.uint8)
    if records.size == 0 or records.size % _RECORD:
        raise ValueError(f"{uri}: {records.size} bytes is not a whole number of {_RECORD}-byte records.")
    records = records.reshape(-1, _RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0]


def _parse_python(raw: bytes, uri: str) -> tuple[np.ndarray, np.ndarray]:
    batch = load_restricted_pickle(raw)
    if not isinstance(batch, dict):
        raise ValueError(f"{uri}: expected a dict batch, got {type(batch).__name__}.")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{uri}: batch lacks 'data' or 'labels' (keys: {sorted(batch)}).")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.shape[1:] != (3072,) or len(labels) != len(data):
        raise ValueError(
            f"{uri}: data {data.dtype} {data.shape} with {len(labels)} labels; expected uint8 (n, 3072) and n labels."
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _find_batches(fs, root: str) -> tuple[str, str]:
    """The folder holding the batches (``root`` or its standard subfolder) and the version."""
    for folder in (root, posixpath.join(root, "cifar-10-batches-bin"), posixpath.join(root, "cifar-10-batches-py")):
        try:
            names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            continue
        if "data_batch_1.bin" in names:
            return folder, "bin"
        if "data_batch_1" in names:
            return folder, "py"
    raise FileNotFoundError(
        f"no CIFAR-10 batches under {root}: pass the folder that holds data_batch_1..5 and "
        "test_batch (the python version, cifar-10-batches-py) or data_batch_1..5.bin and "
        "test_batch.bin (the binary version, cifar-10-batches-bin), or its parent."
    )


def load_cifar10(root: str) -> LabeledImages:
    """All CIFAR-10 images ``(n, 32, 32, 3)`` uint8 with labels 0..9, train then test."""
    fs, path = storage.filesystem(root)  # one filesystem for every listing and read
    folder, version = _find_batches(fs, path)
    parse, suffix = (_parse_binary, ".bin") if version == "bin" else (_parse_python, "")
    parts = []
    for batch in _BATCHES:
        file = posixpath.join(folder, batch + suffix)
        uri = storage.to_uri(file, root)
        try:
            raw = fs.cat_file(file)
        except FileNotFoundError:
            raise FileNotFoundError(f"CIFAR-10 ({version} version) is missing {uri}.") from None
        parts.append(parse(raw, uri))
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{root}: labels outside 0..9 ({labels.min()}..{labels.max()}).")
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    logger.info("CIFAR-10 (%s version) from %s: %d images", version, root, len(images))
    return LabeledImages(images, labels, name="cifar10", classes=CLASSES)
