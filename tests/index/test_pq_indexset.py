"""An index set built from a pq code set: IndexPQ / IndexIVFPQ shards with the code set's
codebooks, the spec in the manifest, and loaded shards that answer as numpy ADC does."""

import json

import faiss
import numpy as np
import pytest
from test_pq_index import assert_topk, ref_adc

from rayhash import storage
from rayhash.codespec import pq
from rayhash.encode import codeset
from rayhash.index import indexset
from rayhash.index.build import build_index_set
from rayhash.index.search import merge_topk


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the test machine is shared
    yield
    faiss.omp_set_num_threads(saved)


@pytest.fixture(scope="module")
def pq_codeset(tmp_path_factory):
    """A code set of 400 codes over learned codebooks (M=4, K=16, d_sub=3), ids written out of order."""
    rng = np.random.default_rng(3)
    spec = pq.fit(rng.standard_normal((64, 12)).astype(np.float32), 4, 16, niter=10, seed=1)
    codes = rng.integers(0, 16, (400, 4)).astype(np.uint8)
    ids = [f"img/{i:04d}" for i in rng.permutation(400)]
    uri = str(tmp_path_factory.mktemp("pq") / "codes")
    codeset.write_codeset(
        uri, ids=ids, codes=codes, sources=ids, spec=spec, checkpoint_uri="ck", checkpoint_sha256="0" * 64, config={}
    )
    order = np.argsort(ids)
    queries = rng.standard_normal((20, 12)).astype(np.float32)
    return uri, spec, np.asarray(ids)[order], codes[order], queries


def _search_all(m: indexset.IndexSetManifest, queries, k, **load):
    shards = [indexset.load_shard(m, i, **load) for i in range(len(m.shards))]
    dist, keys, _ = merge_topk([s.search_keys(queries, k) for s in shards], k)
    return shards, dist, keys


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_pq_index_set_answers_as_numpy_adc(pq_codeset, tmp_path, kind):
    uri, spec, ids, codes, queries = pq_codeset
    extra = {"nlist": 8, "nprobe": 8} if kind == "ivf" else {}  # every list probed: exact
    m = build_index_set(uri, str(tmp_path / "index"), num_shards=3, kind=kind, **extra)
    body = json.loads((tmp_path / "index" / indexset.MANIFEST_FILE).read_text())
    assert body["code_kind"] == "pq" and m.code_kind == "pq"
    assert body["code_spec"] == {
        **spec.to_dict(),
        "codebooks_sha256": storage.sha256_bytes(pq.codebooks_bytes(spec)),
    }
    shards, dist, keys = _search_all(m, queries, 25)
    assert all(s.code_kind == "pq" for s in shards)
    ref = ref_adc(spec.codebooks, queries, codes)  # keys are positions in id order
    assert_topk(dist, keys, ref, 25, cut_in_scan_order=kind == "ivf")

    # a code given as the query scores every code by the symmetric distance through the codebooks
    _, sdc, _ = _search_all(m, codes[:5], 10)
    want = np.sort(pq.sdc_distances(spec, codes[:5], codes), axis=1)[:, :10]
    np.testing.assert_allclose(sdc, want, rtol=1e-5, atol=1e-5)

    # an item's code comes back by id, and a range search holds every item within the radius
    one = shards[1]
    item = one.ids_of(np.array([7]))[0]
    np.testing.assert_array_equal(one.code_of(item), codes[list(ids).index(item)])
    near = np.sort(ref[0])
    radius = float(near[30] + near[31]) / 2  # between two distances: float rounding cannot move an item across
    answers = [s.range_search(queries[:1], radius)[0] for s in shards]
    for dist_in, _ in answers:
        assert dist_in.dtype == np.float32 and (np.diff(dist_in) >= 0).all()
    found = set().union(*(set(found_ids) for _, found_ids in answers))
    assert found == set(ids[ref[0] <= radius]) and len(found) >= 31


def test_queries_of_the_wrong_shape_name_both_forms(pq_codeset, tmp_path):
    uri, *_ = pq_codeset
    m = build_index_set(uri, str(tmp_path / "index"))
    shard = indexset.load_shard(m, 0)
    with pytest.raises(ValueError, match=r"\(q, 12\) or uint8 PQ codes of shape \(q, 4\)"):
        shard.search(np.zeros((1, 8), np.float32), 3)


def test_an_index_whose_codebooks_differ_from_the_manifest_is_refused(pq_codeset, tmp_path):
    uri, spec, *_ = pq_codeset
    m = build_index_set(uri, str(tmp_path / "index"))
    path = tmp_path / "index" / indexset.MANIFEST_FILE
    body = json.loads(path.read_text())
    body["code_spec"]["codebooks_sha256"] = "0" * 64
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match="codebooks are not the spec's"):
        indexset.load_shard(str(tmp_path / "index"), 0)
    assert m.items == 400


def test_a_code_set_with_tampered_codebooks_builds_nothing(pq_codeset, tmp_path):
    uri, spec, *_ = pq_codeset
    m = codeset.read_manifest(uri)
    book = storage.join(uri, m.code_spec["codebooks"]["path"])
    saved = storage.read_bytes(book)
    try:
        storage.write_bytes_atomic(book, pq.codebooks_bytes(pq.PQSpec.from_codebooks(spec.codebooks + 1)))
        with pytest.raises(storage.ChecksumError):
            build_index_set(uri, str(tmp_path / "index"))
    finally:
        storage.write_bytes_atomic(book, saved)
    assert not (tmp_path / "index").exists()


def test_the_index_set_carries_its_codebooks_checksummed(pq_codeset, tmp_path):
    uri, spec, *_ = pq_codeset
    m = build_index_set(uri, str(tmp_path / "index"))
    np.testing.assert_array_equal(indexset.read_spec(m).codebooks, spec.codebooks)
    book = tmp_path / "index" / indexset.CODEBOOKS_FILE
    book.write_bytes(pq.codebooks_bytes(pq.PQSpec.from_codebooks(spec.codebooks * 2)))
    with pytest.raises(storage.ChecksumError):
        indexset.read_spec(m)


def test_ivf_shards_merged_in_one_process_answer_as_the_shards_do(pq_codeset, tmp_path):
    from rayhash.index.shards import merge_shards

    uri, _, _, _, queries = pq_codeset
    m = build_index_set(uri, str(tmp_path / "index"), num_shards=3, kind="ivf", nlist=8, nprobe=3)
    _, dist, keys = _search_all(m, queries, 20)
    merged = merge_shards([indexset.load_shard(m, i) for i in range(3)])
    assert merged.code_kind == "pq" and len(merged) == 400
    got_dist, got_keys = merged.search_keys(queries, 20)
    np.testing.assert_allclose(got_dist, dist, rtol=1e-6)
    np.testing.assert_array_equal(got_keys, keys)
