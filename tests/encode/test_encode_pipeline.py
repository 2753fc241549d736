"""The Ray Data encode job end to end on a real local Ray cluster: local disk, moto S3, Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from encode_helpers import check_code_set, encode_config, in_process, mtimes

from rayhash import storage
from rayhash.encode import codeset, run_encode
from rayhash.encode.cli import main as encode_main
from rayhash.models.encoder import ImageEncoder


def test_encode_local_lake_and_rerun(ray_cluster, fmnist_lake, tiny_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "codes")
    cfg = encode_config(fmnist_lake, tiny_checkpoint, out)
    m = run_encode(cfg)
    check_code_set(m, fmnist_lake, tiny_checkpoint, fmnist_lake.root)
    assert len(m.shards) == 4 and m.checkpoint_sha256 == ImageEncoder.from_checkpoint(tiny_checkpoint).checkpoint_sha256
    # A shard is plain Parquet that pyarrow opens alone, with codes as fixed_size_binary[8].
    table = pq.read_table(m.shard_uri(m.shards[0]))
    assert table.schema == pa.schema([("id", pa.string()), ("code", pa.binary(8)), ("source", pa.string())])

    # Rerunning the finished job (through the CLI) rewrites nothing and commits the same rows.
    run = m.config["run"]
    before = mtimes(out, run)
    flags = dict(
        input=cfg.input,
        checkpoint=cfg.checkpoint,
        output=out,
        rows_per_shard=100,
        extensions="[]",
        max_image_pixels=fmnist_lake.max_pixels,
        progress=False,
    )
    assert encode_main([f"--{k}={v}" for k, v in flags.items()]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["encoded"] == len(fmnist_lake.good) and summary["rejected"] == 5
    again = codeset.read_manifest(out)
    assert mtimes(out, run) == before and again.shards == m.shards and again.errors == m.errors


def test_encode_s3_lake(ray_cluster, s3_bucket, fmnist_lake, tiny_checkpoint):
    fs, _ = storage.filesystem(s3_bucket)
    lake = f"{s3_bucket}/lake"
    fs.put(fmnist_lake.root + "/", lake[len("s3://") :], recursive=True)
    m = run_encode(encode_config(fmnist_lake, tiny_checkpoint, f"{s3_bucket}/codes", input=lake))
    assert m.uri == f"{s3_bucket}/codes" and storage.exists(f"{s3_bucket}/codes/manifest.json")
    check_code_set(codeset.read_manifest(f"{s3_bucket}/codes"), fmnist_lake, tiny_checkpoint, lake)


def test_encode_parquet_input(ray_cluster, fmnist_lake, tiny_checkpoint, tmp_path):
    """Parquet files of image bytes: rows keep their file and position as ids; bad rows rejected."""
    names = sorted(fmnist_lake.good)[:50]
    blobs = [Path(fmnist_lake.root, n).read_bytes() for n in names]
    blobs[7], blobs[33] = None, b"\x89PNG\r\n\x1a\n garbage"
    lake = tmp_path / "pq"
    lake.mkdir()
    position = {}  # id -> position in `names`
    for k, (lo, hi) in enumerate([(0, 20), (20, 50)]):
        table = pa.table({"image": pa.array(blobs[lo:hi], pa.binary())})
        pq.write_table(table, lake / f"part-{k}.parquet", row_group_size=8)
        position.update({f"part-{k}.parquet#{r}": lo + r for r in range(hi - lo)})
    cfg = encode_config(
        fmnist_lake,
        tiny_checkpoint,
        str(tmp_path / "codes"),
        input=str(lake),
        input_format="parquet",
        rows_per_shard=16,
        read_batch=2,
    )
    m = run_encode(cfg)
    assert m.counts == {"inputs": 50, "encoded": 48, "rejected": 2}
    ids, codes, sources = codeset.read_codes(m)
    assert sorted(ids) == sorted(i for i, p in position.items() if p not in (7, 33))
    assert list(sources) == [f"{lake}/{i}" for i in ids]
    want = in_process(tiny_checkpoint, [fmnist_lake.good[names[position[i]]] for i in ids])
    np.testing.assert_array_equal(codes, want)
    errors = codeset.read_errors(m).to_pylist()
    assert {e["source"]: e["reason"] for e in errors} == {
        f"{lake}/part-0.parquet#7": "empty",
        f"{lake}/part-1.parquet#13": "corrupt",
    }


def test_encode_a_pq_checkpoint(ray_cluster, fmnist_lake, tmp_path):
    """A pq checkpoint's job writes M-byte codes, its codebooks beside the shards, centroid usage."""
    import torch

    from rayhash.models import ModelConfig, build_model, checkpoint

    torch.manual_seed(0)
    model_cfg = {"backbone": "small_cnn", "bits": 16, "embed_dim": 8}  # M = 2 sub-spaces of 4 dims
    model = build_model(ModelConfig(**model_cfg)).eval()
    books = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(2)) * 0.3
    uri = str(tmp_path / "dq")
    checkpoint.save(uri, config={"model": model_cfg}, model=model.state_dict(), em={"codebooks": books}, code_kind="pq")
    m = run_encode(encode_config(fmnist_lake, uri, str(tmp_path / "codes")))
    assert m.code_kind == "pq" and m.code_bytes == 2 and m.nbits == 8
    ids, codes, _ = codeset.read_codes(m)
    assert sorted(ids) == sorted(fmnist_lake.good) and m.counts["rejected"] == 5
    np.testing.assert_array_equal(codes, in_process(uri, [fmnist_lake.good[i] for i in ids]))
    spec = codeset.read_spec(m)
    np.testing.assert_array_equal(spec.codebooks, books.numpy())
    assert m.health == codeset.pq_health(spec, codes)
    assert sum(m.health["centroid_usage"][0]) == len(ids)
    assert str(pq.read_table(m.shard_uri(m.shards[0])).schema.field("code").type) == "fixed_size_binary[2]"
