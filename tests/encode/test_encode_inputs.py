"""The pure parts of the encode job, without Ray: listing, chunking, read-and-decode, staging."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayhash import storage
from rayhash.config import ConfigError, load
from rayhash.encode import EncodeConfig, inputs, staging


def _cfg(**kw) -> EncodeConfig:
    return EncodeConfig(**{"checkpoint": "ckpt", "output": "out", **kw})


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), value).save(buf, "PNG")
    return buf.getvalue()


def test_plan_lists_sorted_files_in_chunks(tmp_path):
    for name in ["b/2.png", "a/1.PNG", "a/0.png", "c/skip.txt", "_SUCCESS"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * 3)
    items = inputs.plan(_cfg(input=str(tmp_path), rows_per_shard=2))
    assert items["id"].to_pylist() == ["a/0.png", "a/1.PNG", "b/2.png"]
    assert items["uri"].to_pylist() == [str(tmp_path / i) for i in ["a/0.png", "a/1.PNG", "b/2.png"]]
    assert items["chunk"].to_pylist() == [0, 0, 1] and items["size"].to_pylist() == [3, 3, 3]
    everything = inputs.plan(_cfg(input=str(tmp_path), extensions=()))
    assert everything["id"].to_pylist() == ["_SUCCESS", "a/0.png", "a/1.PNG", "b/2.png", "c/skip.txt"]
    with pytest.raises(FileNotFoundError, match="no input files"):
        inputs.plan(_cfg(input=str(tmp_path / "c"), extensions=(".jpg",)))


def test_plan_cuts_parquet_by_row_group(tmp_path):
    pq.write_table(pa.table({"image": [b"x"] * 10}), tmp_path / "a.parquet", row_group_size=4)  # 4 + 4 + 2
    pq.write_table(pa.table({"image": [b"x"] * 3}), tmp_path / "b.parquet")
    items = inputs.plan(_cfg(input=str(tmp_path), input_format="parquet", rows_per_shard=8))
    assert list(
        zip(
            items["id"].to_pylist(),
            items["row_group"].to_pylist(),
            items["first_row"].to_pylist(),
            items["rows"].to_pylist(),
            items["chunk"].to_pylist(),
        )
    ) == [
        ("a.parquet", 0, 0, 4, 0),
        ("a.parquet", 1, 4, 4, 0),
        ("a.parquet", 2, 8, 2, 1),
        ("b.parquet", 0, 0, 3, 1),
    ]


def test_list_file_input_and_duplicates(tmp_path):
    (tmp_path / "x.png").write_bytes(_png(1))
    lst = tmp_path / "inputs.txt"
    lst.write_text(f"# lake sample\n{tmp_path / 'x.png'}\n\n{tmp_path / 'gone.png'}\n")
    items = inputs.plan(_cfg(input=str(lst), input_format="list"))
    assert items["id"].to_pylist() == [str(tmp_path / "x.png"), str(tmp_path / "gone.png")]
    out = inputs.load_images(items, max_bytes=1 << 20, max_pixels=1 << 20, mode="L")
    assert out["reason"].to_pylist() == [None, "unreadable"] and "gone.png" in out["message"][1].as_py()
    lst.write_text(f"{tmp_path / 'x.png'}\n{tmp_path / 'x.png'}\n")
    with pytest.raises(ValueError, match="more than once"):
        inputs.plan(_cfg(input=str(lst), input_format="list"))


def test_load_images_rejects_each_bad_file_alone(tmp_path):
    files = {"ok.png": _png(200), "big.png": _png(1) + b"\0" * 5000, "text.png": b"hello", "empty.png": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    items = inputs.plan(_cfg(input=str(tmp_path)))
    out = inputs.load_images(items, max_bytes=1000, max_pixels=1 << 20, mode="L")
    assert out.schema == inputs.LOADED_SCHEMA
    by_id = {r["id"]: r for r in out.to_pylist()}
    assert {i: r["reason"] for i, r in by_id.items()} == {
        "big.png": "too_large",
        "empty.png": "empty",
        "ok.png": None,
        "text.png": "not_an_image",
    }
    ok, images = inputs.images_of(out)
    assert [out["id"][int(i)].as_py() for i in ok] == ["ok.png"]
    np.testing.assert_array_equal(images[0], np.full((8, 8, 1), 200, np.uint8))


def test_parquet_rows_with_a_bad_file(tmp_path):
    pq.write_table(pa.table({"image": [_png(5), None, b"junk"], "key": ["p", "q", "r"]}), tmp_path / "a.parquet")
    items = inputs.plan(_cfg(input=str(tmp_path), input_format="parquet", id_column="key"))
    out = inputs.load_images(items, id_column="key", max_bytes=1 << 20, max_pixels=1 << 20, mode="L")
    assert out["id"].to_pylist() == ["p", "q", "r"]
    assert out["source"].to_pylist() == [f"{tmp_path}/a.parquet#{i}" for i in range(3)]
    assert out["reason"].to_pylist() == [None, "empty", "not_an_image"]
    # A column that is not image bytes rejects every row of the group, naming why.
    out = inputs.load_images(items, image_column="key", max_bytes=1 << 20, max_pixels=1 << 20, mode="L")
    assert out["reason"].to_pylist() == ["unreadable"] * 3 and "binary" in out["message"][0].as_py()


def _rows(ids, codes, reasons):
    return pa.table(
        {
            "id": ids,
            "code": pa.array(codes, pa.binary(1)),
            "source": [f"s/{i}" for i in ids],
            "reason": reasons,
            "message": [r and f"{r}!" for r in reasons],
        }
    )


def test_staged_chunk_is_reused_only_while_whole(tmp_path):
    out, run = str(tmp_path), "runs/k"
    rows = _rows(["b", "a", "c"], [b"\x02", b"\x01", None], [None, None, "empty"])
    chunk, codes = staging.stage_chunk(out, run, 0, "fp", rows, nbits=8)
    assert codes["id"].to_pylist() == ["a", "b"] and (chunk.codes.rows, chunk.errors.rows) == (2, 1)
    # The error shard is plain Parquet too.
    assert pq.read_table(storage.join(out, chunk.errors.path)).to_pylist() == [
        {"source": "s/c", "reason": "empty", "message": "empty!"}
    ]

    found = staging.load_chunk(out, run, 0, "fp", nbits=8)
    assert found[0] == chunk and found[1].equals(codes)
    assert staging.load_chunk(out, run, 0, "other inputs", nbits=8) is None
    assert staging.load_chunk(out, run, 1, "fp", nbits=8) is None
    storage.write_bytes_atomic(storage.join(out, chunk.codes.path), b"half a parquet file")
    assert staging.load_chunk(out, run, 0, "fp", nbits=8) is None
    with pytest.raises(ValueError, match="duplicate ids"):
        staging.stage_chunk(out, run, 2, "fp", _rows(["a", "a"], [b"\x01", b"\x02"], [None, None]), nbits=8)


def test_run_dir_depends_on_model_and_inputs_only():
    cfg = _cfg(input="s3://lake")
    key = staging.run_dir("sha-a", cfg)
    assert key == staging.run_dir("sha-a", EncodeConfig(**{**cfg.__dict__, "num_actors": 8, "batch_size": 7}))
    assert key != staging.run_dir("sha-b", cfg)
    assert key != staging.run_dir("sha-a", _cfg(input="s3://lake", max_image_pixels=10))


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="needs 'output'"):
        EncodeConfig(input="x", checkpoint="c")
    with pytest.raises(ConfigError, match="one of"):
        load(EncodeConfig, None, ["--input=x", "--checkpoint=c", "--output=o", "--input_format=csv"])
    with pytest.raises(ConfigError, match="'parquet' only"):
        _cfg(input="x", id_column="key")
    with pytest.raises(ConfigError, match="positive"):
        _cfg(input="x", rows_per_shard=0)


def test_encoder_actor_decodes_or_takes_decoded_batches(fmnist_lake, tiny_checkpoint):
    """The actor class on its own: CPU jobs give it items, GPU jobs batches that tasks decoded."""
    from rayhash.encode.pipeline import EncodeImages
    from rayhash.models.encoder import ImageEncoder

    items = inputs.plan(_cfg(input=fmnist_lake.root, extensions=()))
    decode = dict(max_bytes=1 << 20, max_pixels=fmnist_lake.max_pixels, mode="L")
    sha = ImageEncoder.from_checkpoint(tiny_checkpoint).checkpoint_sha256
    kw = dict(batch_size=64, use_gpu=False, torch_threads=0)
    fused = EncodeImages(tiny_checkpoint, sha, load=decode, **kw)(items)
    split = EncodeImages(tiny_checkpoint, sha, **kw)(inputs.load_images(items, **decode))
    assert fused.equals(split) and fused.num_rows == len(fmnist_lake.good) + len(fmnist_lake.bad)
    rejected = {r["id"]: r["reason"] for r in fused.to_pylist() if r["code"] is None}
    assert rejected == fmnist_lake.bad
    with pytest.raises(RuntimeError, match="changed while the job ran"):
        EncodeImages(tiny_checkpoint, "0" * 64, **kw)


def test_complete_chunks_out_of_order():
    from rayhash.encode.pipeline import complete_chunks

    def batch(*chunks):
        return pa.table({"chunk": pa.array(chunks, pa.int32()), "n": list(range(len(chunks)))})

    stream = [batch(1, 0), batch(1, 2), batch(0), batch(2, 1)]
    done = [(i, rows.num_rows) for i, rows in complete_chunks(stream, {0: 2, 1: 3, 2: 2})]
    assert done == [(0, 2), (1, 3), (2, 2)]
    with pytest.raises(RuntimeError, match="received 3 rows for 2"):
        list(complete_chunks([batch(0, 0), batch(0)], {0: 2, 1: 1}))
    with pytest.raises(RuntimeError, match="incomplete"):
        list(complete_chunks([batch(0)], {0: 2}))
    with pytest.raises(RuntimeError, match="did not ask for"):
        list(complete_chunks([batch(5)], {0: 1}))


def test_large_images_are_resized_to_the_model_input_as_they_are_read(tmp_path, tiny_checkpoint):
    """Blocks hold model-sized pixels, and the codes equal those of the full-size images."""
    from rayhash.models.encoder import ImageEncoder

    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (300 + 17 * i, 260, 1), dtype=np.uint8) for i in range(4)]
    for i, photo in enumerate(photos):
        Image.fromarray(photo[..., 0]).save(tmp_path / f"p{i}.png")
    items = inputs.plan(_cfg(input=str(tmp_path)))
    out = inputs.load_images(items, max_bytes=1 << 22, max_pixels=1 << 20, mode="L", image_size=28)
    assert out["shape"].to_pylist() == [[28, 28, 1]] * 4
    encoder = ImageEncoder.from_checkpoint(tiny_checkpoint, device="cpu")
    _, resized = inputs.images_of(out)
    np.testing.assert_array_equal(encoder.encode(resized), encoder.encode(photos))
