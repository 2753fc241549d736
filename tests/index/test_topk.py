"""Exact top-k with ties by position, and the sharded merge, against numpy brute force."""

import faiss
import numpy as np
import pytest

from rayhash.codespec.binary import hamming
from rayhash.index.search import _merged_top, _sorted_top, merge_topk, sort_rows, topk


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


def test_faiss_flat_alone_orders_ties_by_position(tied):
    # What topk relies on for flat indexes (rayhash.index.search's docstring): one plain faiss
    # search, multi-threaded over queries and in query batches, already keeps the lowest
    # positions among items tied at the k-th distance. If a faiss release changes its heap,
    # this fails before any served result is wrong.
    db, q = tied
    index = faiss.IndexBinaryFlat(16)
    index.add(db)
    index.query_batch_size = 7  # several query batches per call
    for k in (1, 13, 100, 1000):
        d, p = index.search(q, k)
        ref_d, ref_p = brute_topk(q, db, k)
        np.testing.assert_array_equal(d, ref_d)
        np.testing.assert_array_equal(p, ref_p)


def test_ivf_returns_the_nearest_of_its_lists_sorted_by_distance_then_position(tied):
    db, q = tied
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(16), 16, 8)
    index.train(db)
    index.add(db)
    index.nprobe = 8  # every list: distances are exact, only the tie cut at the k-th may differ
    k = 40
    dist, pos = topk(index, q, k)
    ref_d, ref_p = brute_topk(q, db, k)
    np.testing.assert_array_equal(dist, ref_d)
    d_all = hamming(q, db)
    for row in range(len(q)):
        kth = ref_d[row, -1]
        inside = dist[row] < kth  # everything nearer than the k-th distance, in position order
        np.testing.assert_array_equal(pos[row, inside], ref_p[row, ref_d[row] < kth])
        tied_cut = pos[row, ~inside]  # then some of the items at the k-th distance, in position order
        assert (np.diff(tied_cut) > 0).all() and (d_all[row, tied_cut] == kth).all()
    index.nprobe = 2  # approximate: still sorted by (distance, position), padded only if short
    dist, pos = topk(index, q, k)
    key = dist.astype(np.int64) * len(db) + pos
    assert (np.diff(key, axis=1) > 0).all()
    np.testing.assert_array_equal(dist, np.take_along_axis(d_all, pos, axis=1))


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


@pytest.mark.parametrize("seed", range(5))
def test_packed_value_sorts_equal_the_argsort_merge(seed):
    # topk's fast path (_sorted_top) and merge_topk's (_merged_top, the column in the low bits, for
    # source) against sort_rows on random rows: ties, pads with the junk distances faiss puts
    # beside them, repeated keys (tie broken by column in both), rows shorter than k; keys up to
    # 2**40 for both, and up to 2**58 for the merge, too wide to pack beside the column (where
    # sort_rows itself answers).
    rng = np.random.default_rng(seed)
    for _ in range(60):
        n, cols, k = rng.integers(1, 12), rng.integers(1, 300), rng.integers(1, 320)
        key_bits = int(rng.choice([1, 8, 24, 40, 58]))
        dist = rng.integers(0, 65, (n, cols)).astype(np.int32)
        keys = rng.integers(0, 2**key_bits, (n, cols)).astype(np.int64)
        pads = rng.random((n, cols)) < 0.2
        keys[pads], dist[pads] = -1, rng.integers(-1, 2**31 - 1, int(pads.sum()))
        want = sort_rows(dist, keys, k)
        for got, expected in zip(_merged_top(dist, keys, k), want):
            np.testing.assert_array_equal(got, expected)
        if key_bits <= 40:
            for got, expected in zip(_sorted_top(dist, keys, k), want[:2]):
                np.testing.assert_array_equal(got, expected)


def python_sorted_rows(dist, keys, k):
    """Reference for float rows: Python's sort of each row's (distance, key, column), pads after, padded to k."""
    out_d, out_k, out_s = [], [], []
    for d_row, k_row in zip(dist, keys):
        entries = sorted((float(d), int(key), col) for col, (d, key) in enumerate(zip(d_row, k_row)) if key >= 0)[:k]
        entries += [(-1.0, -1, -1)] * (k - len(entries))
        out_d.append([e[0] for e in entries])
        out_k.append([e[1] for e in entries])
        out_s.append([e[2] for e in entries])
    return np.array(out_d, np.float32), np.array(out_k, np.int64), np.array(out_s, np.int64)


@pytest.mark.parametrize("seed", range(5))
def test_float_distances_sort_and_merge_as_python_sorts_them(seed):
    # Float32 distances (PQ's ADC) through all three sorts: exact ties, negatives and -0.0 (which
    # equals 0.0), huge values, pads beside inf or junk; keys narrow enough to pack and too wide
    # (2**40, 2**58), where each falls back to the argsort. Distances must come back bit-identical.
    rng = np.random.default_rng(100 + seed)
    for _ in range(40):
        n, cols, k = rng.integers(1, 8), rng.integers(1, 200), rng.integers(1, 220)
        key_bits = int(rng.choice([1, 8, 20, 40, 58]))
        values = np.concatenate([rng.random(6) * 100, [0.0, -0.0, -3.5, 1e30, 1e-30, np.float32(2.5)]]).astype(
            np.float32
        )
        dist = values[rng.integers(0, len(values), (n, cols))]
        dist = np.where(rng.random((n, cols)) < 0.5, dist, rng.random((n, cols)) * 50).astype(np.float32)
        keys = rng.integers(0, 2**key_bits, (n, cols)).astype(np.int64)
        pads = rng.random((n, cols)) < 0.2
        keys[pads] = -1
        dist[pads] = rng.choice(np.array([np.inf, -1.0, 7.0], np.float32), int(pads.sum()))
        want = python_sorted_rows(dist, keys, k)
        for got in (sort_rows(dist, keys, k), _merged_top(dist, keys, k), merge_topk([(dist, keys)], k)):
            assert got[0].dtype == np.float32
            np.testing.assert_array_equal(got[0], want[0])  # -0.0 == 0.0 here, as in the float order
            for g, w in zip(got[1:], want[1:]):
                np.testing.assert_array_equal(g, w)
        sd, sk = _sorted_top(dist, keys, k)
        assert sd.dtype == np.float32
        np.testing.assert_array_equal(sd, want[0])
        np.testing.assert_array_equal(sk, want[1])


def test_float_merge_of_parts_keeps_the_nearest_across_parts():
    parts = [
        (np.array([[0.5, 2.0, np.inf]], np.float32), np.array([[4, 7, -1]])),
        (np.array([[0.5, 1.25]], np.float32), np.array([[2, 9]])),
    ]
    dist, keys, source = merge_topk(parts, 4)
    assert dist.dtype == np.float32
    assert dist.tolist() == [[0.5, 0.5, 1.25, 2.0]] and keys.tolist() == [[2, 4, 9, 7]]
    assert source.tolist() == [[3, 0, 4, 1]]
