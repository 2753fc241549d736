import pickle

import numpy as np
import pytest

from rayhash import storage
from rayhash.data.cifar10 import load_cifar10, load_restricted_pickle

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PER_BATCH = 3


@pytest.fixture(scope="module")
def fake():
    """Six tiny batches: images (18, 32, 32, 3) and labels, in train-then-test order."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6 * PER_BATCH, 32, 32, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, size=6 * PER_BATCH)


def write_binary(folder, images, labels):
    for b, name in enumerate(BATCHES):
        sl = slice(b * PER_BATCH, (b + 1) * PER_BATCH)
        chw = images[sl].transpose(0, 3, 1, 2).reshape(PER_BATCH, -1)
        records = np.concatenate([labels[sl, None].astype(np.uint8), chw], axis=1)
        storage.write_bytes_atomic(storage.join(folder, f"{name}.bin"), records.tobytes())


def write_python(folder, images, labels, protocol=2):
    for b, name in enumerate(BATCHES):
        sl = slice(b * PER_BATCH, (b + 1) * PER_BATCH)
        batch = {  # the keys and layout of the published python batches
            b"batch_label": f"{name} of 6".encode(),
            b"labels": labels[sl].tolist(),
            b"data": images[sl].transpose(0, 3, 1, 2).reshape(PER_BATCH, -1),
            b"filenames": [f"img_{i}.png".encode() for i in range(PER_BATCH)],
        }
        data = pickle.dumps(batch, protocol=protocol)
        storage.write_bytes_atomic(storage.join(folder, name), data)


def check(data, images, labels):
    assert data.images.shape == (18, 32, 32, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.classes[0] == "airplane" and data.ids[-1] == "17"


def test_binary_version(tmp_path, fake):
    write_binary(str(tmp_path / "cifar-10-batches-bin"), *fake)
    check(load_cifar10(str(tmp_path)), *fake)  # the parent folder
    check(load_cifar10(str(tmp_path / "cifar-10-batches-bin")), *fake)  # the folder itself


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python_version(tmp_path, fake, protocol):
    write_python(str(tmp_path / "cifar-10-batches-py"), *fake, protocol=protocol)
    check(load_cifar10(str(tmp_path)), *fake)


def test_from_s3(s3_bucket, fake):
    write_binary(f"{s3_bucket}/cifar/cifar-10-batches-bin", *fake)
    check(load_cifar10(f"{s3_bucket}/cifar"), *fake)


def test_missing_and_malformed_batches(tmp_path, fake):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar10(str(tmp_path))
    write_binary(str(tmp_path), *fake)
    (tmp_path / "test_batch.bin").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        load_cifar10(str(tmp_path))
    (tmp_path / "test_batch.bin").write_bytes(bytes(3073 + 5))
    with pytest.raises(ValueError, match="3073-byte records"):
        load_cifar10(str(tmp_path))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    # GLOBAL os.system, MARK, the argument, TUPLE, REDUCE: calls os.system(...) if allowed.
    evil = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        load_restricted_pickle(evil)
    assert not marker.exists()

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(pickle.UnpicklingError, match=r"io\.open|builtins\.open"):
        load_restricted_pickle(pickle.dumps({"data": Payload()}))
    assert not marker.exists()
    # a planted batch file is refused the same way through the reader
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in BATCHES:
        (folder / name).write_bytes(evil)
    with pytest.raises(pickle.UnpicklingError):
        load_cifar10(str(tmp_path))
    assert not marker.exists()
    # the payload is real: plain pickle runs it
    pickle.loads(evil)
    assert marker.exists()
    # the numpy globals it does allow still round-trip plain arrays
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(load_restricted_pickle(pickle.dumps(arr, protocol=2)), arr)
