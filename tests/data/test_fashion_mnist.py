import gzip
import shutil

import numpy as np
import pytest

from rayhash.data.fashion_mnist import CLASSES, DEFAULT_ROOT, load_fashion_mnist


def test_shapes_dtype_and_classes(fmnist):
    assert fmnist.images.shape == (70_000, 28, 28, 1)
    assert fmnist.images.dtype == np.uint8
    assert fmnist.labels.shape == (70_000,)
    assert np.bincount(fmnist.labels).tolist() == [7_000] * 10
    assert np.bincount(fmnist.labels[60_000:]).tolist() == [1_000] * 10
    assert fmnist.classes == CLASSES and fmnist.ids[:2] == ["0", "1"]


def test_train_then_test_order(fmnist):
    # The first labels of each file, as published with the dataset.
    assert fmnist.labels[:8].tolist() == [9, 0, 0, 3, 0, 2, 7, 2]
    assert fmnist.labels[60_000:60_008].tolist() == [9, 2, 1, 1, 6, 1, 4, 6]
    with gzip.open(f"{DEFAULT_ROOT}/t10k-images-idx3-ubyte.gz") as f:
        first_test = np.frombuffer(f.read(16 + 784)[16:], dtype=np.uint8).reshape(28, 28)
    np.testing.assert_array_equal(fmnist.images[60_000, :, :, 0], first_test)


def test_missing_folder_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path))


def _copy_with(tmp_path, name: str, raw: bytes) -> str:
    for f in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        shutil.copy(f"{DEFAULT_ROOT}/{f}", tmp_path / f)
    (tmp_path / name).write_bytes(gzip.compress(raw))
    return str(tmp_path)


def test_wrong_magic_and_truncation_are_refused(tmp_path):
    with gzip.open(f"{DEFAULT_ROOT}/t10k-labels-idx1-ubyte.gz") as f:
        labels = f.read()
    root = _copy_with(tmp_path, "t10k-labels-idx1-ubyte.gz", b"\x00\x00\x08\x03" + labels[4:])
    with pytest.raises(ValueError, match="magic"):
        load_fashion_mnist(root)
    root = _copy_with(tmp_path, "t10k-labels-idx1-ubyte.gz", labels[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist(root)
