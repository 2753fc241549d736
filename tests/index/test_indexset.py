"""The index-set artifact: manifest, checksums before faiss, shard search against brute force."""

import json

import numpy as np
import pyarrow as pa
import pytest
from hamming_reference import brute_force

from rayhash import storage
from rayhash.codespec import binary as codes_lib
from rayhash.encode import codeset
from rayhash.index import build_index_set, indexset
from rayhash.index.search import merge_topk
from rayhash.index.shards import fixed_width_ids, ids_of, merge_shards, shared_ids, take_ids


@pytest.fixture
def tied_codeset(tmp_path):
    # 16-bit codes from 30 distinct values: heavy ties; ids not in sorted order when written.
    rng = np.random.default_rng(1)
    vocab = rng.integers(0, 256, (30, 2), dtype=np.uint8)
    codes = vocab[rng.integers(0, 30, 900)]
    ids = [f"img-{i}" for i in rng.permutation(900)]
    uri = str(tmp_path / "cs")
    codeset.write_codeset(
        uri,
        ids=ids,
        codes=codes,
        sources=[f"src/{i}" for i in ids],
        nbits=16,
        checkpoint_uri="file:///models/m",
        checkpoint_sha256="cd" * 32,
        config={},
        rows_per_shard=400,
    )
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
            full_d, full_ids = brute_force(q[row : row + 1], shard_ids, shard_codes, len(shard_ids))
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


def test_shared_ids_find_a_merged_top_k(tied_codeset, tmp_path):
    cs_uri, ids, codes = tied_codeset
    m = build_index_set(cs_uri, str(tmp_path / "ix"), num_shards=3)
    shards = [indexset.load_shard(m, i) for i in range(3)]
    all_ids = shared_ids(shards)
    assert all_ids.to_pylist() == sorted(ids)
    q = np.random.default_rng(3).integers(0, 256, (25, 2), dtype=np.uint8)
    dist, keys, _ = merge_topk([s.search_keys(q, 120) for s in shards], 120)
    ref_d, ref_ids = brute_force(q, ids, codes, 120)  # far past the ties at every k-th distance
    np.testing.assert_array_equal(dist, ref_d)
    np.testing.assert_array_equal(ids_of(all_ids, keys), ref_ids)
    assert take_ids(all_ids, np.append(keys[0], -1)).to_pylist() == list(ref_ids[0]) + [None]
    for s in shards:  # each shard now reads its ids from the shared array
        np.testing.assert_array_equal(s.search(q, 7)[1], ids_of(all_ids, s.search_keys(q, 7)[1]))
        np.testing.assert_array_equal(s.code_of(s.ids[5].as_py()), codes[list(ids).index(s.ids[5].as_py())])


@pytest.mark.parametrize("make_id", [lambda i: f"img/{i:06d}", lambda i: f"é{i:05d}"], ids=["ascii", "utf8"])
def test_fixed_width_ids_gather_what_the_strings_give(make_id):
    ids = pa.array([make_id(i) for i in range(5000)], pa.large_string())
    fixed = fixed_width_ids(ids.slice(100))  # a slice, as shared_ids makes them
    assert pa.types.is_fixed_size_binary(fixed.type)
    pos = np.random.default_rng(0).integers(-1, 4900, 3000)  # -1: pads
    got = take_ids(fixed, pos)
    assert got.type == pa.large_string() and got.equals(take_ids(ids.slice(100), pos))
    assert got.to_pylist() == [None if p < 0 else make_id(p + 100) for p in pos]
    np.testing.assert_array_equal(ids_of(fixed, pos.reshape(60, 50)), ids_of(ids.slice(100), pos.reshape(60, 50)))
    full = np.abs(pos)  # no pads: the gather skips its mask
    assert take_ids(fixed, full).to_pylist() == [make_id(p + 100) for p in full]


@pytest.mark.parametrize("values", [["a", "bb"], ["é", "abc"], ["x", None], []])
def test_ids_of_mixed_widths_stay_strings(values):
    ids = pa.array(values, pa.large_string())
    assert fixed_width_ids(ids) is ids


def test_merged_ivf_shards_probe_the_same_lists_as_the_shards(tied_codeset, tmp_path):
    cs_uri, ids, codes = tied_codeset
    m = build_index_set(cs_uri, str(tmp_path / "ix"), num_shards=3, kind="ivf", nlist=8, nprobe=2)
    q = np.random.default_rng(4).integers(0, 256, (25, 2), dtype=np.uint8)
    parts = [indexset.load_shard(m, i).search_keys(q, 60) for i in range(3)]
    sharded_d, _, _ = merge_topk(parts, 60)
    merged = merge_shards([indexset.load_shard(m, i) for i in range(3)])
    dist, keys = merged.search_keys(q, 60)
    # The same items are scanned, so the same distances; ties at the k-th may cut differently.
    np.testing.assert_array_equal(dist, sharded_d)
    # Each key's id is the item at the distance reported (checked against the code set, not faiss).
    code_of_id = dict(zip(ids, codes))
    rows, cols = np.nonzero(keys >= 0)
    found_codes = np.stack([code_of_id[i] for i in merged.ids_of(keys[rows, cols])])
    np.testing.assert_array_equal(codes_lib.hamming(q, found_codes)[rows, np.arange(len(rows))], dist[rows, cols])
    for j in [0, 451, 899]:
        np.testing.assert_array_equal(merged.code_of(ids[j]), codes[j])


def test_merge_refuses_shards_that_do_not_fit_together(tied_codeset, tmp_path):
    cs_uri, _, _ = tied_codeset
    m = build_index_set(cs_uri, str(tmp_path / "ix"), num_shards=3)
    with pytest.raises(ValueError, match="consecutive"):
        shared_ids([indexset.load_shard(m, 0), indexset.load_shard(m, 2)])
    with pytest.raises(ValueError, match="merges IVF shards"):
        merge_shards([indexset.load_shard(m, i) for i in range(3)])
    a = build_index_set(cs_uri, str(tmp_path / "a"), num_shards=2, kind="ivf", nlist=8, seed=0)
    b = build_index_set(cs_uri, str(tmp_path / "b"), num_shards=2, kind="ivf", nlist=8, seed=1)
    with pytest.raises(ValueError, match="own coarse quantizer"):
        merge_shards([indexset.load_shard(a, 0), indexset.load_shard(b, 1)])


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


@pytest.mark.parametrize("path", ["/etc/passwd", "../other/shard.faissindex", "shards/../../x", "s3://bucket/x"])
def test_a_manifest_path_outside_its_artifact_is_refused(tmp_path, path):
    rng = np.random.default_rng(0)
    ids = [f"i{n}" for n in range(50)]
    codes = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    kw = dict(ids=ids, codes=codes, sources=ids, nbits=64, checkpoint_uri="c", checkpoint_sha256="0" * 64, config={})
    cs = codeset.write_codeset(str(tmp_path / "codes"), **kw)
    m = build_index_set(cs.uri, str(tmp_path / "index"))
    for manifest, key in (
        (tmp_path / "index" / indexset.MANIFEST_FILE, "ids_path"),
        (tmp_path / "codes" / "manifest.json", "path"),
    ):
        saved = manifest.read_text()
        body = json.loads(saved)
        body["shards"][0][key] = path
        manifest.write_text(json.dumps(body))
        with pytest.raises(ValueError, match="not a plain relative path under the artifact's root"):
            indexset.read_index_manifest(m.uri) if key == "ids_path" else codeset.read_manifest(cs.uri)
        manifest.write_text(saved)
