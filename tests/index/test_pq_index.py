"""PQ indexes built from learned codebooks: faiss answers as numpy ADC does (ties by position),
IVF with every list probed as flat does, and sharded searches merge into one search."""

import faiss
import numpy as np
import pytest

from rayhash.codespec import pq
from rayhash.index.pq import add_codes, build_pq_shards, flat_index, ivf_template, stored_codes
from rayhash.index.search import merge_topk, topk


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the test machine is shared
    yield
    faiss.omp_set_num_threads(saved)


def ref_adc(codebooks, queries, codes):
    """Squared L2 from each query to each code's reconstruction, summed one sub-space at a time (float64)."""
    m, _, d_sub = codebooks.shape
    out = np.zeros((len(queries), len(codes)))
    for j in range(m):
        sub = queries[:, j * d_sub : (j + 1) * d_sub].astype(np.float64)
        centroids = codebooks[j, codes[:, j]].astype(np.float64)
        out += ((sub[:, None, :] - centroids[None]) ** 2).sum(-1)
    return out


def assert_topk(dist, pos, ref, k, *, cut_in_scan_order=False, rtol=1e-5, atol=1e-5):
    """``(dist, pos)`` is the top-k of ``ref`` (distances (nq, n)) by (distance, position).

    Float distances from faiss and numpy differ in the last bits, so positions are held to the
    reference exactly wherever the reference has no other distance within tolerance (exact
    ties, from equal codes, are equal in both); IVF may cut the ties at the k-th distance in
    its scan order instead of by position.
    """
    n = ref.shape[1]
    kk = min(k, n)
    assert dist.shape == pos.shape == (len(ref), k) and dist.dtype == np.float32
    assert (pos[:, kk:] == -1).all() and (dist[:, kk:] == -1).all()
    dist, pos = dist[:, :kk], pos[:, :kk]
    checked = eligible = 0
    for row, r in enumerate(ref):
        order = np.lexsort((np.arange(n), r))[:kk]
        want = r[order]
        np.testing.assert_allclose(dist[row], want, rtol=rtol, atol=atol)  # the k smallest distances
        np.testing.assert_allclose(dist[row], r[pos[row]], rtol=rtol, atol=atol)  # each its own item's
        near = np.abs(r[None, :] - want[:, None]) <= atol + rtol * np.abs(want[:, None])
        held = want < want[-1] if cut_in_scan_order else np.ones(kk, bool)
        clear = held & ~(near & (r[None, :] != want[:, None])).any(axis=1)
        np.testing.assert_array_equal(pos[row, clear], order[clear])
        checked, eligible = checked + int(clear.sum()), eligible + int(held.sum())
    assert checked >= 0.5 * eligible  # most slots are held exactly: the check means something


@pytest.fixture(scope="module", params=[256, 16], ids=["K256", "K16"])
def data(request):
    """Learned codebooks (k-means on random vectors), a database of 1,500 codes drawn from 60
    (thousands of exact ties), and queries: random vectors and a few reconstructions."""
    k = request.param
    rng = np.random.default_rng(k)
    spec = pq.fit(rng.standard_normal((2 * k, 12)).astype(np.float32), 4, k, niter=10, seed=1)
    vocab = rng.integers(0, k, (60, 4)).astype(np.uint8)
    codes = vocab[rng.integers(0, 60, 1500)]
    queries = np.vstack([rng.standard_normal((25, 12)), pq.decode(spec, vocab[:5])]).astype(np.float32)
    return spec, codes, queries


@pytest.mark.parametrize("k", [1, 40, 1500, 1600])
def test_index_pq_from_learned_codebooks_answers_as_numpy_adc(data, k):
    spec, codes, q = data
    index = flat_index(spec)
    add_codes(index, spec, codes)
    np.testing.assert_array_equal(faiss.vector_to_array(index.pq.centroids), spec.codebooks.ravel())
    np.testing.assert_array_equal(stored_codes(index, spec), codes)  # added unchanged, not re-encoded
    dist, pos = topk(index, q, k)
    assert_topk(dist, pos, ref_adc(spec.codebooks, q, codes), k)
    # and as rayhash's own ADC does
    want = np.sort(pq.adc_distances(spec, q, codes), axis=1)[:, : min(k, 1000)]
    np.testing.assert_allclose(dist[:, :1000], want, rtol=1e-5, atol=1e-5)


def test_faiss_index_pq_alone_keeps_the_lowest_positions_at_the_cut(data):
    # What rayhash.index.search's docstring says of IndexPQ: one plain faiss search already keeps
    # the lowest positions among items tied at the k-th distance.
    spec, codes, q = data
    index = flat_index(spec)
    add_codes(index, spec, codes)
    for k in (1, 13, 100):
        d, p = index.search(q, k)
        assert_topk(d, p, ref_adc(spec.codebooks, q, codes), k)


def test_ivf_pq_with_every_list_probed_equals_flat(data):
    spec, codes, q = data
    flat = flat_index(spec)
    add_codes(flat, spec, codes)
    ivf = ivf_template(spec, codes, nlist=8, nprobe=8, train_size=1500, seed=0)
    add_codes(ivf, spec, codes)
    assert not ivf.by_residual and ivf.ntotal == len(codes)
    np.testing.assert_array_equal(stored_codes(ivf, spec), codes)
    # every code sits in the list of its reconstruction's nearest coarse centroid, as faiss would put it
    recon = pq.decode(spec, codes)
    np.testing.assert_array_equal(ivf.sa_encode(recon)[:, ivf.coarse_code_size() :], flat.sa_encode(recon))
    ref = ref_adc(spec.codebooks, q, codes)
    for k in (1, 40, 1600):
        flat_d, flat_p = topk(flat, q, k)
        ivf_d, ivf_p = topk(ivf, q, k)
        np.testing.assert_allclose(ivf_d, flat_d, rtol=1e-5, atol=1e-5)
        assert_topk(ivf_d, ivf_p, ref, k, cut_in_scan_order=True)
    ivf.nprobe = 2  # approximate: still sorted by (distance, position), each its own item's distance
    dist, pos = topk(ivf, q, 40)
    assert (np.diff(dist, axis=1) >= 0).all()
    np.testing.assert_allclose(dist, np.take_along_axis(ref, pos, axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_sharded_pq_search_equals_one_search(data, kind):
    spec, codes, q = data
    rng = np.random.default_rng(9)
    ids = np.array([f"item-{i}" for i in rng.permutation(len(codes))], dtype=object)
    options = {"nlist": 8, "nprobe": 8} if kind == "ivf" else {}
    (whole, whole_ids), *_ = build_pq_shards(ids, codes, spec, kind=kind, **options)[0]
    shards, params = build_pq_shards(ids, codes, spec, num_shards=3, kind=kind, **options)
    assert params == ({"nlist": 8, "nprobe": 8, "train_size": 512, "seed": 0} if kind == "ivf" else {})
    assert [len(i) for _, i in shards] == [500, 500, 500]
    np.testing.assert_array_equal(np.concatenate([i for _, i in shards]), whole_ids)
    by_id = dict(zip(ids, codes, strict=True))
    ref = ref_adc(spec.codebooks, q, np.array([by_id[i] for i in whole_ids.tolist()]))
    for k in (1, 40, 700, 1600):
        parts, offset = [], 0
        for index, shard_ids in shards:
            d, p = topk(index, q, k)
            parts.append((d, np.where(p >= 0, p + offset, -1)))
            offset += len(shard_ids)
        dist, keys, _ = merge_topk(parts, k)
        one_d, one_p = topk(whole, q, k)
        if kind == "flat":  # the same tables, the same codes: the same floats and the same items
            np.testing.assert_array_equal(dist, one_d)
            np.testing.assert_array_equal(keys, one_p)
        else:
            np.testing.assert_allclose(dist, one_d, rtol=1e-5, atol=1e-5)
        assert_topk(dist, keys, ref, k, cut_in_scan_order=kind == "ivf")


def test_queries_given_as_codes_score_by_symmetric_distance(data):
    spec, codes, _ = data
    index = flat_index(spec)
    add_codes(index, spec, codes)
    q_codes = codes[::100]
    dist, pos = topk(index, pq.decode(spec, q_codes), 30)
    assert_topk(dist, pos, pq.sdc_distances(spec, q_codes, codes).astype(np.float64), 30)
    assert (dist[:, 0] == 0).all()


def test_bad_inputs_are_refused(data):
    spec, codes, _ = data
    ids = [str(i) for i in range(len(codes))]
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        build_pq_shards(ids, codes[:, :3], spec)
    with pytest.raises(ValueError, match=r"shape \(1500, 4\) for 1500 ids"):
        build_pq_shards(ids, codes[:10], spec)
    with pytest.raises(ValueError, match="appears more than once"):
        build_pq_shards(["a"] * len(codes), codes, spec)
    with pytest.raises(ValueError, match="not one of"):
        build_pq_shards(ids, codes, spec, kind="hnsw")
    with pytest.raises(ValueError, match="kind='ivf' only"):
        build_pq_shards(ids, codes, spec, nlist=4)
    with pytest.raises(ValueError, match="nprobe must be between 1 and nlist"):
        build_pq_shards(ids, codes, spec, kind="ivf", nlist=4, nprobe=5)
    with pytest.raises(TypeError, match="IndexPQ or IndexIVFPQ"):
        add_codes(faiss.IndexFlatL2(spec.dim), spec, codes)
