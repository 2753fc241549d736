"""A pq code set: M-byte codes in fixed_size_binary[M], the spec in the manifest, the codebooks
in a file whose SHA-256 the manifest records, and centroid usage as its code health."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayhash import storage
from rayhash.codespec import pq as pq_lib
from rayhash.encode import codeset


def _spec(m=4, k=16, d_sub=3, seed=0) -> pq_lib.PQSpec:
    books = np.random.default_rng(seed).normal(size=(m, k, d_sub)).astype(np.float32)
    return pq_lib.PQSpec.from_codebooks(books)


def _write(uri, spec, n=90, seed=1, **kw):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, spec.k, size=(n, spec.m), dtype=np.uint8)
    ids = [f"img/{i:05d}.png" for i in range(n)]
    sources = [f"s3://lake/{i}" for i in ids]
    manifest = codeset.write_codeset(
        uri,
        ids=ids,
        codes=codes,
        sources=sources,
        spec=spec,
        checkpoint_uri="s3://models/dq",
        checkpoint_sha256="cd" * 32,
        config={},
        **kw,
    )
    return manifest, ids, codes, sources


def test_pq_code_set_round_trip(tmp_path):
    spec = _spec()
    m, ids, codes, sources = _write(str(tmp_path / "cs"), spec, rows_per_shard=40)
    assert m.code_kind == "pq" and m.code_bytes == 4 and m.nbits == 16 and len(m.shards) == 3
    body = json.loads((tmp_path / "cs" / codeset.MANIFEST_FILE).read_text())
    assert {k: v for k, v in body["code_spec"].items() if k != "codebooks"} == spec.to_dict()
    book = body["code_spec"]["codebooks"]
    assert book["sha256"] == storage.sha256_bytes(pq_lib.codebooks_bytes(spec))
    assert book["path"].startswith(m.shards[0].path.rsplit("/", 1)[0] + "/")  # beside the shards
    # plain Parquet: a fixed-width binary column of M bytes
    table = pq.read_table(tmp_path / "cs" / m.shards[0].path)
    assert str(table.schema.field("code").type) == "fixed_size_binary[4]"

    got_ids, got_codes, got_sources = codeset.read_codes(str(tmp_path / "cs"))
    assert list(got_ids) == ids and list(got_sources) == sources
    np.testing.assert_array_equal(got_codes, codes)
    read = codeset.read_spec(str(tmp_path / "cs"))
    assert read.to_dict() == spec.to_dict()
    np.testing.assert_array_equal(read.codebooks, spec.codebooks)


def test_pq_health_is_centroid_usage_per_sub_space(tmp_path):
    spec = _spec(m=2, k=8, d_sub=2)
    codes = np.array([[0, 1], [0, 1], [3, 1], [7, 2]], dtype=np.uint8)
    m = codeset.write_codeset(
        str(tmp_path / "cs"),
        ids=list("abcd"),
        codes=codes,
        sources=list("abcd"),
        spec=spec,
        checkpoint_uri="c",
        checkpoint_sha256="0" * 64,
        config={},
    )
    # by hand: sub-space 0 picks 0 twice, 3 and 7 once; sub-space 1 picks 1 three times, 2 once
    assert m.health["centroid_usage"] == [[2, 0, 0, 1, 0, 0, 0, 1], [0, 3, 1, 0, 0, 0, 0, 0]]
    assert m.health["used_centroids"] == [3, 2]
    assert m.health["max_items_per_code"] == 2  # (0, 1) twice


def test_tampered_codebooks_are_refused(tmp_path):
    spec = _spec()
    m, *_ = _write(str(tmp_path / "cs"), spec)
    path = tmp_path / "cs" / m.code_spec["codebooks"]["path"]
    other = pq_lib.codebooks_bytes(_spec(seed=5))  # a valid .npy of the same shape, other values
    path.write_bytes(other)
    with pytest.raises(storage.ChecksumError):
        codeset.read_spec(str(tmp_path / "cs"))


def test_pq_codes_must_fit_the_spec_and_kinds_are_not_mixed(tmp_path):
    spec = _spec(k=16)
    with pytest.raises(ValueError, match="centroid 16"):
        codeset.write_codeset(
            str(tmp_path / "a"), ids=["a"], codes=np.array([[16, 0, 0, 0]], np.uint8), sources=["a"],
            spec=spec, checkpoint_uri="c", checkpoint_sha256="0" * 64, config={},
        )  # fmt: skip
    with pytest.raises(ValueError, match="exactly one"):
        codeset.write_codeset(
            str(tmp_path / "b"), ids=["a"], codes=np.zeros((1, 4), np.uint8), sources=["a"], nbits=32,
            spec=spec, checkpoint_uri="c", checkpoint_sha256="0" * 64, config={},
        )  # fmt: skip
    with pytest.raises(ValueError, match="code spec and codebooks"):
        codeset.commit(
            str(tmp_path / "c"), nbits=16, checkpoint_uri="c", checkpoint_sha256="0" * 64, config={},
            shards=[], errors=[], counts={}, health={}, code_kind="pq",
        )  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_binary_code_set_has_no_spec(tmp_path):
    m = codeset.write_codeset(
        str(tmp_path / "cs"), ids=["a"], codes=np.zeros((1, 2), np.uint8), sources=["a"], nbits=16,
        checkpoint_uri="c", checkpoint_sha256="0" * 64, config={},
    )  # fmt: skip
    body = json.loads((tmp_path / "cs" / codeset.MANIFEST_FILE).read_text())
    assert "code_spec" not in body and m.code_spec == {} and codeset.read_spec(m) is None
