import numpy as np
import pytest
from PIL import Image

from rayhash.data import SOURCES, load_source


def test_registry_names():
    assert set(SOURCES) == {"fashion-mnist", "cifar10", "files", "parquet"}


def test_default_path_and_options(fmnist, tmp_path):
    data = load_source("fashion-mnist")
    assert np.array_equal(data.labels, fmnist.labels)
    for i in range(3):
        Image.fromarray(fmnist.images[i, :, :, 0]).save(tmp_path / f"{i}.png")
    files = load_source("files", str(tmp_path), mode="L")
    np.testing.assert_array_equal(files.images, fmnist.images[:3])


def test_errors_say_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match="known: fashion-mnist, cifar10, files, parquet"):
        load_source("mnist")
    with pytest.raises(ValueError, match="needs a path"):
        load_source("cifar10")
    with pytest.raises(ValueError, match=r"no option \['label_colum'\].*label_column"):
        load_source("parquet", str(tmp_path), label_colum="y")
