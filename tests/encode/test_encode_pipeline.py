"""The Ray Data encode job end to end, on a real local Ray cluster, local disk and moto S3."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayhash import codeset, storage
from rayhash.encode import EncodeConfig, run_encode
from rayhash.encode.cli import main as encode_main
from rayhash.encoder import ImageEncoder


def _config(lake, checkpoint: str, output: str, **kw) -> EncodeConfig:
    # 305 inputs in chunks of 100: four shards, so chunking and resume are exercised.
    base = dict(input=lake.root, checkpoint=checkpoint, output=output, extensions=(), rows_per_shard=100,
                read_batch=40, batch_size=64, num_actors=2, cpus_per_actor=0.5, cpus_per_decode_task=0.5,
                torch_threads=1, max_image_pixels=lake.max_pixels, progress=False)  # fmt: skip
    return EncodeConfig(**{**base, **kw})


def _in_process(checkpoint: str, images: list[np.ndarray]) -> np.ndarray:
    return ImageEncoder.from_checkpoint(checkpoint, device="cpu").encode(images)


def _check_code_set(m: codeset.CodeSetManifest, lake, checkpoint: str, source_root: str) -> None:
    """Every good image encoded exactly once with the in-process codes; every bad one rejected."""
    assert m.counts == {"inputs": len(lake.good) + 5, "encoded": len(lake.good), "rejected": 5}
    ids, codes, sources = codeset.read_codes(m)
    assert sorted(ids) == sorted(lake.good) and len(set(ids)) == len(ids)
    assert list(sources) == [storage.join(source_root, i) for i in ids]
    np.testing.assert_array_equal(codes, _in_process(checkpoint, [lake.good[i] for i in ids]))
    errors = codeset.read_errors(m).to_pylist()
    assert {e["source"]: e["reason"] for e in errors} == {storage.join(source_root, i): r for i, r in lake.bad.items()}
    assert all(e["message"] for e in errors)
    assert m.health == codeset.code_health(codes, 64)


def _stat(root: str, run: str) -> dict[str, int]:
    d = os.path.join(root, run)
    return {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in sorted(os.listdir(d))}


def test_encode_local_lake_and_rerun(ray_cluster, fmnist_lake, tiny_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "codes")
    cfg = _config(fmnist_lake, tiny_checkpoint, out)
    m = run_encode(cfg)
    _check_code_set(m, fmnist_lake, tiny_checkpoint, fmnist_lake.root)
    assert len(m.shards) == 4 and m.checkpoint_sha256 == ImageEncoder.from_checkpoint(tiny_checkpoint).checkpoint_sha256
    # A shard is plain Parquet that pyarrow opens alone, with codes as fixed_size_binary[8].
    table = pq.read_table(m.shard_uri(m.shards[0]))
    assert table.schema == pa.schema([("id", pa.string()), ("code", pa.binary(8)), ("source", pa.string())])

    # Rerunning the finished job (through the CLI) rewrites nothing and commits the same rows.
    run = m.config["run"]
    before = _stat(out, run)
    argv = [f"--{k}={v}" for k, v in dict(input=cfg.input, checkpoint=cfg.checkpoint, output=out, rows_per_shard=100,
                                           max_image_pixels=fmnist_lake.max_pixels, progress=False).items()]  # fmt: skip
    assert encode_main(argv + ["--extensions=[]"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["encoded"] == len(fmnist_lake.good) and summary["rejected"] == 5
    again = codeset.read_manifest(out)
    assert _stat(out, run) == before and again.shards == m.shards and again.errors == m.errors

    # Encoding again from nothing gives byte-identical shards: rows are deterministic.
    storage.remove(storage.join(out, run), recursive=True)
    fresh = run_encode(cfg)
    assert fresh.shards == m.shards and fresh.errors == m.errors


def test_encode_s3_lake(ray_cluster, s3_bucket, fmnist_lake, tiny_checkpoint):
    fs, _ = storage.filesystem(s3_bucket)
    lake = f"{s3_bucket}/lake"
    fs.put(fmnist_lake.root + "/", lake[len("s3://"):], recursive=True)
    m = run_encode(_config(fmnist_lake, tiny_checkpoint, f"{s3_bucket}/codes", input=lake))
    assert m.uri == f"{s3_bucket}/codes" and storage.exists(f"{s3_bucket}/codes/manifest.json")
    _check_code_set(codeset.read_manifest(f"{s3_bucket}/codes"), fmnist_lake, tiny_checkpoint, lake)


class Crash(RuntimeError):
    pass


def _crash_at(n: int):
    def hook(done: int, total: int) -> None:
        if done == (total if n < 0 else n):
            raise Crash(f"simulated crash after {done} of {total} chunks")

    return hook


def test_crash_before_commit_keeps_old_code_set(ray_cluster, fmnist_lake, tiny_checkpoint, other_checkpoint, tmp_path):
    out = str(tmp_path / "codes")
    # The committed old version, written in-process in the same format the job writes.
    ids = sorted(fmnist_lake.good)
    old = codeset.write_codeset(out, ids=ids, codes=_in_process(tiny_checkpoint, [fmnist_lake.good[i] for i in ids]),
                                sources=ids, nbits=64, checkpoint_uri=tiny_checkpoint, checkpoint_sha256="old",
                                config={})  # fmt: skip
    old_manifest = storage.read_bytes(storage.join(out, "manifest.json"))
    old_ids, old_codes, _ = codeset.read_codes(out)
    cfg = _config(fmnist_lake, other_checkpoint, out)

    def old_still_served():
        assert storage.read_bytes(storage.join(out, "manifest.json")) == old_manifest
        ids, codes, _ = codeset.read_codes(out)
        assert list(ids) == list(old_ids) and np.array_equal(codes, old_codes)

    # Crash with half the chunks of the new model staged: the old code set is what readers see.
    with pytest.raises(Crash):
        run_encode(cfg, on_staged=_crash_at(2))
    old_still_served()
    (new_run,) = {f"runs/{r}" for r in os.listdir(os.path.join(out, "runs"))} - {os.path.dirname(old.shards[0].path)}
    first = _stat(out, new_run)
    assert sum(f.startswith("chunk-") for f in first) == 2

    # Crash after every chunk is staged, just before the manifest: finished chunks were not redone.
    with pytest.raises(Crash):
        run_encode(cfg, on_staged=_crash_at(-1))
    old_still_served()
    second = _stat(out, new_run)
    assert {f: second[f] for f in first} == first and sum(f.startswith("chunk-") for f in second) == 4

    # The rerun encodes nothing (every staged file untouched) and commits the new model's codes.
    new = run_encode(cfg)
    assert _stat(out, new_run) == second
    assert new.config["run"] == new_run and new.checkpoint_sha256 != old.checkpoint_sha256
    _check_code_set(new, fmnist_lake, other_checkpoint, fmnist_lake.root)
    np.testing.assert_array_equal(codeset.read_codes(old)[1], old_codes)  # old shards kept for old readers


def test_encode_parquet_input(ray_cluster, fmnist_lake, tiny_checkpoint, tmp_path):
    """Parquet files of image bytes: rows keep their file and position as ids; bad rows rejected."""
    ids = sorted(fmnist_lake.good)[:50]
    blobs = [Path(fmnist_lake.root, i).read_bytes() for i in ids]
    blobs[7], blobs[33] = None, b"\x89PNG\r\n\x1a\n garbage"
    (tmp_path / "pq").mkdir()
    for k, rows in enumerate([slice(0, 20), slice(20, 50)]):
        pq.write_table(pa.table({"image": pa.array(blobs[rows], pa.binary())}), tmp_path / "pq" / f"part-{k}.parquet",
                       row_group_size=8)  # fmt: skip
    m = run_encode(_config(fmnist_lake, tiny_checkpoint, str(tmp_path / "codes"), input=str(tmp_path / "pq"), input_format="parquet",
                           rows_per_shard=16))  # fmt: skip
    assert m.counts == {"inputs": 50, "encoded": 48, "rejected": 2}
    got_ids, codes, sources = codeset.read_codes(m)
    position = {f"part-{k}.parquet#{r}": off + r for k, (off, n) in enumerate([(0, 20), (20, 30)]) for r in range(n)}
    assert sorted(got_ids) == sorted(p for p, i in position.items() if i not in (7, 33))
    assert all(s.endswith(i) for s, i in zip(sources, got_ids))
    np.testing.assert_array_equal(codes, _in_process(tiny_checkpoint, [fmnist_lake.good[ids[position[i]]] for i in got_ids]))
    reasons = {e["source"].rsplit("/", 1)[-1]: e["reason"] for e in codeset.read_errors(m).to_pylist()}
    assert reasons == {"part-0.parquet#7": "empty", "part-1.parquet#13": "corrupt"}
