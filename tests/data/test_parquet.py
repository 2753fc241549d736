import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayhash import storage
from rayhash.data.parquet import load_parquet

N = 12


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array[..., 0]).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def table(fmnist):
    """Two tables of Fashion-MNIST PNG bytes with labels and ids; row 5 is not an image."""
    blobs = [png(im) for im in fmnist.images[:N]]
    blobs[5] = b"garbage"
    full = pa.table(
        {
            "image": pa.array(blobs, pa.binary()),
            "label": pa.array(fmnist.labels[:N]),
            "name": [f"item-{i:03d}" for i in range(N)],
            "tag": [str(fmnist.classes[c]) for c in fmnist.labels[:N]],
        }
    )
    return full.slice(0, 7), full.slice(7)


def write(root: str, tables) -> None:
    fs, path = storage.arrow_filesystem(root)
    fs.create_dir(path, recursive=True)
    for i, t in enumerate(tables):  # part-0 sorts before part-1: rows keep their order
        pq.write_table(t, f"{path}/part-{i}.parquet", filesystem=fs)


def check(data, fmnist):
    keep = [i for i in range(N) if i != 5]
    assert data.images.shape == (N - 1, 28, 28, 3)
    np.testing.assert_array_equal(data.images[..., :1], fmnist.images[keep])
    np.testing.assert_array_equal(data.labels, fmnist.labels[keep])
    assert data.ids == [f"item-{i:03d}" for i in keep]
    assert data.skipped == (("item-005", "not_an_image"),)


def test_local_folder(tmp_path, table, fmnist):
    write(str(tmp_path), table)
    check(load_parquet(str(tmp_path), label_column="label", id_column="name"), fmnist)
    data = load_parquet(str(tmp_path / "part-1.parquet"), label_column="tag", mode="L")
    assert data.ids == [str(i) for i in range(N - 7)] and data.images.shape[-1] == 1
    assert [data.classes[c] for c in data.labels] == table[1]["tag"].to_pylist()


def test_s3(s3_bucket, table, fmnist):
    write(f"{s3_bucket}/codes-in", table)
    check(load_parquet(f"{s3_bucket}/codes-in", label_column="label", id_column="name"), fmnist)


def test_struct_column_and_bad_columns(tmp_path, table, fmnist):
    t = pa.concat_tables(table)
    hf = pa.table(
        {
            "img": pa.StructArray.from_arrays(
                [t["image"].combine_chunks(), pa.array([None] * N, pa.string())], ["bytes", "path"]
            )
        }
    )
    pq.write_table(hf, tmp_path / "hf.parquet")
    data = load_parquet(str(tmp_path), image_column="img", mode="L")
    assert len(data) == N - 1 and data.skipped == (("5", "not_an_image"),)
    with pytest.raises(ValueError, match="has no column"):
        load_parquet(str(tmp_path))
    pq.write_table(pa.table({"image": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(ValueError, match="must hold encoded image bytes"):
        load_parquet(str(tmp_path / "ints.parquet"))
    multi_hot = [[1, 0, 1], [0, 1, 0]]
    blobs = t["image"].to_pylist()[:2]
    pq.write_table(pa.table({"image": blobs, "tags": multi_hot}), tmp_path / "mh.parquet")
    data = load_parquet(str(tmp_path / "mh.parquet"), label_column="tags")
    assert data.labels.tolist() == multi_hot
    pq.write_table(pa.table({"image": blobs, "tags": [[1, 2], [3]]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="0/1 rows of one length"):
        load_parquet(str(tmp_path / "bad.parquet"), label_column="tags")
    with pytest.raises(FileNotFoundError, match="no .parquet"):
        load_parquet(str(tmp_path / "nowhere"))
