"""The index-set artifact: manifest, checksums before faiss, shard search against brute force."""

import json

import numpy as np
import pytest

from rayhash import codeset, indexset, storage
from hamming_reference import brute_force
from rayhash.index import build_index_set




@pytest.fixture
def tied_codeset(tmp_path):
    # 16-bit codes from 30 distinct values: heavy ties; ids not in sorted order when written.
    rng = np.random.default_rng(1)
    vocab = rng.integers(0, 256, (30, 2), dtype=np.uint8)
    codes = vocab[rng.integers(0, 30, 900)]
    ids = [f"img-{i}" for i in rng.permutation(900)]
    uri = str(tmp_path / "cs")
    codeset.write_codeset(uri, ids=ids, codes=codes, sources=[f"src/{i}" for i in ids], nbits=16,
                          checkpoint_uri="file:///models/m", checkpoint_sha256="cd" * 32, config={},
                          rows_per_shard=400)  # fmt: skip
    return uri, np.array(ids, dtype=object), codes


def test_manifest_records_its_code_set_and_model(tied_codeset, tmp_path):
    cs_uri, ids, _ = tied_codeset
    m = build_index_set(cs_uri, str(tmp_path / "ix"), num_shards=3)
    cs = codeset.read_manifest(cs_uri)
    assert m == indexset.read_index_manifest(str(tmp_path / "ix"))
    assert m == indexset.read_index_manifest(str(tmp_path / "ix" / indexset.MANIFEST_FILE))
    assert (m.codeset_uri, m.codeset_manifest_sha256) == (cs.uri, cs.sha256)
    assert (m.checkpoint_uri, m.checkpoint_sha256) == ("file:///models/m", "cd" * 32)
    assert (m.nbits, m.kind, m.items, [s.rows for s in m.shards]) == (16, "flat", 900, [300, 300, 300])
    assert m.offsets == [0, 300, 600]
    body = json.loads(storage.read_text(str(tmp_path / "ix" / indexset.MANIFEST_FILE)))
    assert body["kind"] == "rayhash.indexset" and body["counts"] == {"items": 900}
    for s in m.shards:
        assert storage.sha256_uri(storage.join(m.uri, s.index_path)) == s.index_sha256
        assert storage.sha256_uri(storage.join(m.uri, s.ids_path)) == s.ids_sha256
    # ids ascend within and across shards: the order invariant the merge relies on
    all_ids = np.concatenate([indexset.load_shard(m, i).ids for i in range(3)])
    assert list(all_ids) == sorted(ids)


def test_each_shard_searches_its_items_like_brute_force(tied_codeset, tmp_path):
    cs_uri, _, _ = tied_codeset
    m = build_index_set(cs_uri, str(tmp_path / "ix"), num_shards=2)
    rng = np.random.default_rng(2)
    q = rng.integers(0, 256, (20, 2), dtype=np.uint8)
    for i in range(2):
        shard = indexset.load_shard(m, i)
        shard_ids = np.asarray(shard.ids, dtype=object)
        shard_codes = np.stack([shard.code_of(x) for x in shard_ids])
        dist, got = shard.search(q, 37)
        ref_d, ref_ids = brute_force(q, shard_ids, shard_codes, 37)
        np.testing.assert_array_equal(dist, ref_d)
        np.testing.assert_array_equal(got, ref_ids)
        for row, (d, found) in enumerate(shard.range_search(q, 3)):
            full_d, full_ids = brute_force(q[row:row + 1], shard_ids, shard_codes, len(shard_ids))
            within = full_d[0] <= 3
            np.testing.assert_array_equal(d, full_d[0][within])
            np.testing.assert_array_equal(found, full_ids[0][within])


def test_code_of_returns_the_code_set_code(tied_codeset, tmp_path):
    cs_uri, ids, codes = tied_codeset
    m = build_index_set(cs_uri, str(tmp_path / "ix"), num_shards=2, kind="ivf", nlist=4)
    shards = [indexset.load_shard(m, i) for i in range(2)]
    for j in [0, 17, 899]:
        found = [s.code_of(ids[j]) for s in shards]
        assert sum(f is not None for f in found) == 1
        np.testing.assert_array_equal(next(f for f in found if f is not None), codes[j])
    assert all(s.code_of("no-such-id") is None for s in shards)


@pytest.mark.parametrize("part", ["index", "ids"])
def test_a_changed_shard_is_refused_before_faiss_reads_it(tied_codeset, tmp_path, part):
    cs_uri, _, _ = tied_codeset
    m = build_index_set(cs_uri, str(tmp_path / "ix"), num_shards=2)
    entry = m.shards[1]
    path = storage.join(m.uri, entry.index_path if part == "index" else entry.ids_path)
    # Bytes that faiss (or Parquet) would choke on: the error must be the checksum's, not theirs.
    storage.write_bytes_atomic(path, b"IBxF" + b"\xff" * 64)
    indexset.load_shard(m, 0)  # the untouched shard still loads
    with pytest.raises(storage.ChecksumError, match="SHA-256"):
        indexset.load_shard(m, 1)


def test_missing_manifest_and_bad_shard_number(tmp_path, tied_codeset):
    with pytest.raises(FileNotFoundError, match="never committed"):
        indexset.read_index_manifest(str(tmp_path / "nothing"))
    m = build_index_set(tied_codeset[0], str(tmp_path / "ix"))
    with pytest.raises(IndexError, match="has 1 shards"):
        indexset.load_shard(m, 1)
    with pytest.raises(ValueError, match="nprobe applies to ivf"):
        indexset.load_shard(m, 0, nprobe=4)


def test_shard_refuses_queries_of_the_wrong_shape(tied_codeset, tmp_path):
    shard = indexset.load_shard(build_index_set(tied_codeset[0], str(tmp_path / "ix")), 0)
    with pytest.raises(ValueError, match=r"shape \(q, 2\) for this 16-bit index"):
        shard.search(np.zeros((1, 8), np.uint8), 5)


def test_roundtrip_on_s3(s3_bucket, tied_codeset):
    cs_uri, ids, codes = tied_codeset
    m = build_index_set(cs_uri, s3_bucket + "/ix", num_shards=2, kind="ivf", nlist=4, nprobe=4)
    assert indexset.read_index_manifest(s3_bucket + "/ix") == m
    shard = indexset.load_shard(s3_bucket + "/ix", 0)
    assert shard.index.nprobe == 4 and len(shard) == 450
    assert indexset.load_shard(m, 0, nprobe=2).index.nprobe == 2
