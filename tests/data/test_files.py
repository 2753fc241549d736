import io

import numpy as np
import pytest
from PIL import Image

from rayhash import storage
from rayhash.data.files import load_image_files

skimage_data = pytest.importorskip("skimage.data")
PER_CLASS = 4
CLASSES = ("bag", "coat", "trouser")
FMNIST_CLASS = {"bag": 8, "coat": 4, "trouser": 1}


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder_images(fmnist):
    """{relative path: bytes}: Fashion-MNIST PNGs in class folders, one bad file, one non-image."""
    files = {}
    for name in CLASSES:
        for pos in np.flatnonzero(fmnist.labels == FMNIST_CLASS[name])[:PER_CLASS]:
            files[f"{name}/{pos:05d}.png"] = png(fmnist.images[pos])
    first_coat = next(data for rel, data in files.items() if rel.startswith("coat/"))
    files["coat/broken.png"] = first_coat[:60]
    files["notes.txt"] = b"not an image, and not listed"
    return files


def write(root: str, files: dict) -> None:
    fs, path = storage.filesystem(root)  # one client for every put (storage makes one per call)
    for rel, data in files.items():
        fs.makedirs(f"{path}/{rel}".rsplit("/", 1)[0], exist_ok=True)  # a no-op on S3
        fs.pipe_file(f"{path}/{rel}", data)


def check(data, fmnist):
    assert data.images.shape == (len(CLASSES) * PER_CLASS, 28, 28, 1)
    assert data.classes == CLASSES
    assert data.skipped == ((data.skipped[0][0], "truncated"),)
    assert data.skipped[0][0].endswith("coat/broken.png")
    for image, label, id_ in zip(data.images, data.labels, data.ids):
        cls, name = id_.split("/")
        assert CLASSES[label] == cls
        np.testing.assert_array_equal(image, fmnist.images[int(name[:-4])])  # PNG is lossless


def test_local_folder_with_class_dirs(tmp_path, folder_images, fmnist):
    write(str(tmp_path), folder_images)
    data = load_image_files(str(tmp_path), labels_from_dirs=True, mode="L")
    check(data, fmnist)
    assert data.ids == sorted(data.ids)  # sorted paths: stable order and ids


def test_s3_prefix_matches_local(s3_bucket, tmp_path, folder_images, fmnist):
    write(f"{s3_bucket}/lake", folder_images)
    data = load_image_files(f"{s3_bucket}/lake/", labels_from_dirs=True, mode="L")
    check(data, fmnist)
    listed = load_image_files(
        [f"{s3_bucket}/lake/bag/{k[4:]}" for k in folder_images if k.startswith("bag/")], mode="L"
    )
    assert len(listed) == PER_CLASS and listed.ids[0].startswith("s3://")


def test_mixed_sizes_need_image_size(tmp_path):
    photos = {
        "astronaut.png": skimage_data.astronaut(),
        "coffee.jpg": skimage_data.coffee(),
        "camera.png": skimage_data.camera(),
    }
    for name, array in photos.items():
        Image.fromarray(array).save(tmp_path / name)
    with pytest.raises(ValueError, match="pass image_size"):
        load_image_files(str(tmp_path))
    data = load_image_files(str(tmp_path), image_size=64)
    assert data.images.shape == (3, 64, 64, 3) and data.labels is None
    assert data.ids == ["astronaut.png", "camera.png", "coffee.jpg"]
    gray = data.images[1]
    assert np.array_equal(gray[..., 0], gray[..., 2])  # the grayscale photo, as RGB


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .png/.jpg"):
        load_image_files(str(tmp_path))
    Image.fromarray(skimage_data.camera()).save(tmp_path / "camera.png")
    with pytest.raises(ValueError, match="class folder"):
        load_image_files(str(tmp_path), labels_from_dirs=True)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of the 1"):
        load_image_files([str(tmp_path / "bad.png")])
