import collections
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayhash import storage
from rayhash.encode import codeset


def _random_set(n: int, nbits: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)
    ids = [f"img/{i:05d}.png" for i in range(n)]
    sources = [f"s3://lake/img/{i:05d}.png" for i in range(n)]
    return ids, codes, sources


def _write(uri, ids, codes, sources, nbits=64, **kw):
    return codeset.write_codeset(
        uri,
        ids=ids,
        codes=codes,
        sources=sources,
        nbits=nbits,
        checkpoint_uri="s3://models/m1",
        checkpoint_sha256="ab" * 32,
        config={"batch_size": 8},
        **kw,
    )


@pytest.mark.parametrize("where", ["local", "s3"])
def test_roundtrip_in_shards(where, tmp_path, request):
    uri = str(tmp_path / "cs") if where == "local" else request.getfixturevalue("s3_bucket") + "/cs"
    ids, codes, sources = _random_set(250)
    errors = [("s3://lake/bad.png", "truncated", "PNG 28x28: image file is truncated")]
    written = _write(uri, ids, codes, sources, errors=errors, rows_per_shard=100)

    m = codeset.read_manifest(uri)
    assert m == written and m.sha256 == storage.sha256_uri(storage.join(uri, "manifest.json"))
    assert [s.rows for s in m.shards] == [100, 100, 50]
    assert m.counts == {"inputs": 251, "encoded": 250, "rejected": 1}
    assert (m.nbits, m.checkpoint_sha256, m.config) == (64, "ab" * 32, {"batch_size": 8})
    got_ids, got_codes, got_sources = codeset.read_codes(uri)
    assert list(got_ids) == ids and list(got_sources) == sources
    np.testing.assert_array_equal(got_codes, codes)
    assert codeset.read_errors(m).to_pylist() == [dict(zip(["source", "reason", "message"], errors[0]))]
    # Plain Parquet: pyarrow alone opens a shard and sees fixed_size_binary[8].
    fs, path = storage.arrow_filesystem(m.shard_uri(m.shards[0]))
    table = pq.read_table(path, filesystem=fs)
    assert table.schema.field("code").type == pa.binary(8)
    np.testing.assert_array_equal(
        np.frombuffer(table["code"].combine_chunks().buffers()[1], np.uint8).reshape(-1, 8), codes[:100]
    )


def test_manifest_is_the_only_way_in(tmp_path):
    uri = str(tmp_path / "cs")
    with pytest.raises(FileNotFoundError, match="never committed"):
        codeset.read_manifest(uri)
    ids, codes, sources = _random_set(20)
    m = _write(uri, ids, codes, sources)
    assert codeset.read_manifest(storage.join(uri, "manifest.json")) == m
    body = json.loads(storage.read_text(storage.join(uri, "manifest.json")))
    assert body["kind"] == "rayhash.codeset" and body["format_version"] == 1
    assert set(body) >= {"nbits", "created_at", "checkpoint", "config", "shards", "errors", "counts", "health"}


def test_tampered_shard_is_refused(tmp_path):
    uri = str(tmp_path / "cs")
    m = _write(uri, *_random_set(30))
    path = m.shard_uri(m.shards[0])
    data = bytearray(storage.read_bytes(path))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes_atomic(path, bytes(data))
    with pytest.raises(storage.ChecksumError, match="SHA-256"):
        codeset.read_codes(uri)


def test_new_version_leaves_committed_shards_alone(tmp_path):
    uri = str(tmp_path / "cs")
    old = _write(uri, *_random_set(40, seed=1))
    old_bytes = {s.path: storage.read_bytes(old.shard_uri(s)) for s in old.shards}
    new = _write(uri, *_random_set(40, seed=2))
    assert codeset.read_manifest(uri) == new and {s.path for s in new.shards}.isdisjoint(old_bytes)
    # A reader holding the old manifest still reads the old, intact shards.
    assert {s.path: storage.read_bytes(old.shard_uri(s)) for s in old.shards} == old_bytes
    np.testing.assert_array_equal(codeset.read_codes(old)[1], _random_set(40, seed=1)[1])


def test_bad_inputs_are_named(tmp_path):
    ids, codes, sources = _random_set(5)
    with pytest.raises(ValueError, match="unique"):
        _write(str(tmp_path / "a"), ids[:4] + ids[:1], codes, sources)
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        _write(str(tmp_path / "b"), ids, codes[:, :4], sources)
    with pytest.raises(ValueError, match="differ in length"):
        _write(str(tmp_path / "c"), ids, codes, sources[:3])
    assert not os.path.exists(tmp_path / "a" / "manifest.json")


def test_empty_code_set(tmp_path):
    m = _write(str(tmp_path / "cs"), [], np.empty((0, 8), np.uint8), [], errors=[("a.png", "empty", "zero bytes")])
    ids, codes, sources = codeset.read_codes(m)
    assert codes.shape == (0, 8) and m.counts == {"inputs": 1, "encoded": 0, "rejected": 1}


def test_code_health_matches_brute_force():
    rng = np.random.default_rng(3)
    nbits = 32
    bits = (rng.random((5000, nbits)) < np.linspace(0.1, 0.9, nbits)).astype(np.uint8)
    bits[:, 5] = bits[:, 4] ^ (rng.random(5000) < 0.1)  # a strongly correlated pair
    bits[:, 7] = 1  # a constant bit: no correlation defined, counted as 0
    bits[100:160] = bits[0]  # 61 rows share one code
    codes = np.packbits(bits, axis=1)
    health = codeset.code_health(codes, nbits)

    np.testing.assert_allclose(health["bit_balance"], bits.mean(0), atol=1e-6)
    varying = [i for i in range(nbits) if bits[:, i].std() > 0]
    corr = np.zeros((nbits, nbits))
    corr[np.ix_(varying, varying)] = np.corrcoef(bits[:, varying].T)
    iu = np.triu_indices(nbits, 1)
    assert health["mean_abs_bit_correlation"] == pytest.approx(np.abs(corr[iu]).mean(), rel=1e-9)
    assert health["max_items_per_code"] == max(collections.Counter(map(bytes, codes)).values()) >= 61
