"""Index build from a code set: sharded results equal brute force; counts and inputs checked."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hamming_reference import brute_force

from rayhash import storage
from rayhash.encode import codeset
from rayhash.index import build_index_set, build_shards, indexset, merge_topk
from rayhash.index.build import default_nlist

REPO = Path(__file__).resolve().parents[2]


def write_codes(uri, ids, codes, nbits):
    return codeset.write_codeset(
        uri,
        ids=list(ids),
        codes=codes,
        sources=list(ids),
        nbits=nbits,
        checkpoint_uri="m",
        checkpoint_sha256="ef" * 32,
        config={},
        rows_per_shard=500,
    )


def search_index_set(m, q, k, nprobe=None):
    """Every shard's exact top-k, merged as the Serve ingress does: (distances, ids)."""
    shards = [indexset.load_shard(m, i, nprobe=nprobe) for i in range(len(m.shards))]
    parts = [s.search_keys(q, k) for s in shards]
    dist, keys, _ = merge_topk(parts, k)
    all_ids = np.concatenate([np.asarray(s.ids, dtype=object) for s in shards])
    return dist, np.where(keys >= 0, all_ids[np.maximum(keys, 0)], None)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    rng = np.random.default_rng(3)
    vocab = rng.integers(0, 256, (50, 2), dtype=np.uint8)
    codes = vocab[rng.integers(0, 50, 1500)]
    ids = np.array([f"{i}" for i in rng.permutation(1500)], dtype=object)  # "10" < "9": string order
    uri = str(tmp_path_factory.mktemp("cs") / "codes")
    write_codes(uri, ids, codes, 16)
    return uri, ids, codes, rng.integers(0, 256, (40, 2), dtype=np.uint8)


@pytest.mark.parametrize("num_shards", [1, 4])
@pytest.mark.parametrize("k", [1, 60, 1600])
def test_flat_shards_merged_equal_brute_force(tied, tmp_path, num_shards, k):
    uri, ids, codes, q = tied
    m = build_index_set(uri, str(tmp_path / "ix"), num_shards=num_shards)
    dist, got = search_index_set(m, q, k)
    ref_d, ref_ids = brute_force(q, ids, codes, k)
    kk = min(k, len(ids))
    np.testing.assert_array_equal(dist[:, :kk], ref_d)
    np.testing.assert_array_equal(got[:, :kk], ref_ids)
    assert (dist[:, kk:] == -1).all()


def test_ivf_probing_every_list_equals_brute_force(tied, tmp_path):
    uri, ids, codes, q = tied
    m = build_index_set(uri, str(tmp_path / "ix"), num_shards=3, kind="ivf", nlist=8, nprobe=2)
    assert m.params == {"nlist": 8, "nprobe": 2, "train_size": 512, "seed": 0}
    dist, got = search_index_set(m, q, 30, nprobe=8)
    ref_d, ref_ids = brute_force(q, ids, codes, 30)
    np.testing.assert_array_equal(dist, ref_d)  # every list probed: the distances are exact
    all_d, all_ids = brute_force(q, ids, codes, len(ids))
    for row in range(len(q)):
        kth = ref_d[row, -1]
        nearer = dist[row] < kth  # all of these, in id order; then a cut of the items tied at the k-th
        np.testing.assert_array_equal(got[row, nearer], ref_ids[row, ref_d[row] < kth])
        tied_ids = got[row, ~nearer].astype(str)
        assert set(tied_ids) <= set(all_ids[row, all_d[row] == kth]) and list(tied_ids) == sorted(tied_ids)


def test_ivf_on_structured_codes_finds_most_true_neighbours(tmp_path):
    # Clustered 64-bit codes (centres plus a few flipped bits): few lists probed, recall stays high.
    rng = np.random.default_rng(4)
    centres = rng.integers(0, 2, (100, 64), dtype=np.uint8)
    bits = centres[rng.integers(0, 100, 20_000)] ^ (rng.random((20_000, 64)) < 0.04)
    codes = np.packbits(bits.astype(np.uint8), axis=1)
    ids = np.array([f"{i:06d}" for i in range(len(codes))], dtype=object)
    write_codes(str(tmp_path / "cs"), ids, codes, 64)
    m = build_index_set(str(tmp_path / "cs"), str(tmp_path / "ix"), num_shards=2, kind="ivf")
    assert m.params["nlist"] == default_nlist(20_000) == 128 and m.params["nprobe"] == 16
    q = codes[:50] ^ np.uint8(1)
    dist, _ = search_index_set(m, q, 20)
    ref_d, _ = brute_force(q, ids, codes, 20)
    recall = (dist <= ref_d[:, -1:]).sum(1) / 20  # PROTOCOL.md: fair to ties
    assert recall.mean() >= 0.9


def test_counts_that_do_not_add_up_are_refused(tied, tmp_path):
    uri, *_ = tied
    bad = str(tmp_path / "bad")
    for f in storage.list_files(uri):
        storage.write_bytes_atomic(bad + f[len(uri) :], storage.read_bytes(f))
    body = json.loads(storage.read_text(storage.join(bad, "manifest.json")))
    body["counts"]["encoded"] += 1
    storage.write_text_atomic(storage.join(bad, "manifest.json"), json.dumps(body))
    with pytest.raises(ValueError, match="counts.encoded 1501"):
        build_index_set(bad, str(tmp_path / "ix"))
    assert not storage.exists(str(tmp_path / "ix" / indexset.MANIFEST_FILE))


def test_bad_build_inputs_say_what_is_wrong():
    codes = np.zeros((4, 2), np.uint8)
    with pytest.raises(ValueError, match="'a' appears more than once"):
        build_shards(["a", "b", "a", "c"], codes, 16)
    with pytest.raises(ValueError, match="not one of"):
        build_shards(list("abcd"), codes, 16, kind="hnsw")
    with pytest.raises(ValueError, match="num_shards must be between 1 and the number of codes"):
        build_shards(list("abcd"), codes, 16, num_shards=5)
    with pytest.raises(ValueError, match="apply to kind='ivf' only"):
        build_shards(list("abcd"), codes, 16, nlist=2)
    with pytest.raises(ValueError, match=r"shape \(4, 4\)"):
        build_shards(list("abcd"), codes, 32)
    with pytest.raises(ValueError, match="nprobe must be between 1 and nlist"):
        build_shards(list("abcd"), codes, 16, kind="ivf", nlist=2, nprobe=3)


def test_job_script_builds_from_overrides_and_refuses_unknown_keys(tied, tmp_path):
    uri, ids, *_ = tied
    out = str(tmp_path / "ix")
    job = [sys.executable, str(REPO / "jobs" / "build_index.py"), f"--codeset={uri}", f"--out={out}"]
    done = subprocess.run(
        [*job, "--num_shards=2", "--kind=ivf", "--nlist=8", "--threads=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["items"], summary["shards"], summary["kind"]) == (len(ids), 2, "ivf")
    assert indexset.read_index_manifest(out).sha256 == summary["manifest_sha256"]
    bad = subprocess.run([*job, "--num_shard=2"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode != 0 and "Did you mean 'num_shards'" in bad.stderr
