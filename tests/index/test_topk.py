"""Exact top-k with ties by position, and the sharded merge, against numpy brute force."""

import faiss
import numpy as np
import pytest

from rayhash.codes import hamming
from rayhash.index.search import merge_topk, topk


def brute_topk(queries, database, k):
    """Reference: sort every row by (Hamming distance, position), keep k."""
    d = hamming(queries, database)
    order = np.lexsort((np.broadcast_to(np.arange(len(database)), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.fixture(scope="module")
def tied():
    # 16-bit codes from a small vocabulary: thousands of exact ties at every distance.
    rng = np.random.default_rng(0)
    vocab = rng.integers(0, 256, (40, 2), dtype=np.uint8)
    return vocab[rng.integers(0, 40, 3000)], rng.integers(0, 256, (30, 2), dtype=np.uint8)


@pytest.mark.parametrize("k", [1, 7, 100, 2999, 3000, 3500])
def test_flat_topk_matches_brute_force_with_ties(tied, k):
    db, q = tied
    index = faiss.IndexBinaryFlat(16)
    index.add(db)
    dist, pos = topk(index, q, k)
    ref_d, ref_p = brute_topk(q, db, k)
    kk = min(k, len(db))
    np.testing.assert_array_equal(dist[:, :kk], ref_d)
    np.testing.assert_array_equal(pos[:, :kk], ref_p)
    assert (dist[:, kk:] == -1).all() and (pos[:, kk:] == -1).all()


def test_open_boundary_takes_the_range_search_path(tied):
    # IVF scans list by list, so faiss's own order of ties is not by position; with no margin
    # every row's boundary is open and only the range search can put the ties right.
    db, q = tied
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(16), 16, 8)
    index.train(db)
    index.add(db)
    index.nprobe = 8
    _, plain_p = index.search(q, 50)
    dist, pos = topk(index, q, 50, margin=0)
    ref_d, ref_p = brute_topk(q, db, 50)
    assert (plain_p != ref_p).any(), "faiss alone already orders ties by position: this test would not see a bug"
    np.testing.assert_array_equal(pos, ref_p)
    np.testing.assert_array_equal(dist, ref_d)


def test_ivf_probing_every_list_is_exact(tied):
    db, q = tied
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(16), 16, 8)
    index.train(db)
    index.add(db)
    index.nprobe = 8
    dist, pos = topk(index, q, 40)
    ref_d, ref_p = brute_topk(q, db, 40)
    np.testing.assert_array_equal(pos, ref_p)
    np.testing.assert_array_equal(dist, ref_d)


def test_merged_shards_equal_one_flat_search(tied):
    db, q = tied
    bounds = [0, 700, 701, 2200, 3000]  # uneven, one shard of a single item
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        index = faiss.IndexBinaryFlat(16)
        index.add(db[lo:hi])
        d, p = topk(index, q, 25)
        parts.append((d, np.where(p >= 0, p + lo, -1)))
    dist, keys, source = merge_topk(parts, 25)
    ref_d, ref_p = brute_topk(q, db, 25)
    np.testing.assert_array_equal(keys, ref_p)
    np.testing.assert_array_equal(dist, ref_d)
    # source points at the column each entry came from in the side-by-side parts
    np.testing.assert_array_equal(np.take_along_axis(np.hstack([p for _, p in parts]), source, axis=1), keys)


def test_merge_pads_when_fewer_items_than_k():
    parts = [(np.array([[3, -1]], np.int32), np.array([[5, -1]])), (np.array([[1]], np.int32), np.array([[9]]))]
    dist, keys, source = merge_topk(parts, 4)
    assert dist.tolist() == [[1, 3, -1, -1]] and keys.tolist() == [[9, 5, -1, -1]]
    assert source.tolist() == [[2, 0, -1, -1]]


def test_bad_k_and_empty_inputs():
    index = faiss.IndexBinaryFlat(16)
    with pytest.raises(ValueError, match="k must be positive"):
        topk(index, np.zeros((1, 2), np.uint8), 0)
    dist, pos = topk(index, np.zeros((2, 2), np.uint8), 3)  # empty index
    assert dist.shape == (2, 3) and (pos == -1).all()
