"""Helpers shared by the encode job's Ray tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import os

import numpy as np

from rayhash import storage
from rayhash.encode import EncodeConfig, codeset
from rayhash.models.encoder import ImageEncoder


def encode_config(lake, checkpoint: str, output: str, **kw) -> EncodeConfig:
    # 305 inputs in chunks of 100: four shards, so chunking and resume are exercised.
    base = dict(
        input=lake.root,
        checkpoint=checkpoint,
        output=output,
        extensions=(),
        rows_per_shard=100,
        read_batch=40,
        batch_size=64,
        num_actors=2,
        cpus_per_actor=0.5,
        cpus_per_decode_task=0.5,
        torch_threads=1,
        max_image_pixels=lake.max_pixels,
        progress=False,
    )
    return EncodeConfig(**{**base, **kw})


def in_process(checkpoint: str, images: list[np.ndarray]) -> np.ndarray:
    return ImageEncoder.from_checkpoint(checkpoint, device="cpu").encode(images)


def check_code_set(m: codeset.CodeSetManifest, lake, checkpoint: str, source_root: str) -> None:
    """Every good image encoded exactly once with the in-process codes; every bad one rejected."""
    assert m.counts == {"inputs": len(lake.good) + 5, "encoded": len(lake.good), "rejected": 5}
    ids, codes, sources = codeset.read_codes(m)
    assert sorted(ids) == sorted(lake.good) and len(set(ids)) == len(ids)
    assert list(sources) == [storage.join(source_root, i) for i in ids]
    np.testing.assert_array_equal(codes, in_process(checkpoint, [lake.good[i] for i in ids]))
    errors = codeset.read_errors(m).to_pylist()
    assert {e["source"]: e["reason"] for e in errors} == {storage.join(source_root, i): r for i, r in lake.bad.items()}
    assert all(e["message"] for e in errors)
    assert m.health == codeset.code_health(codes, 64)


def mtimes(root: str, run: str) -> dict[str, int]:
    d = os.path.join(root, run)
    return {f: os.stat(os.path.join(d, f)).st_mtime_ns for f in sorted(os.listdir(d))}
