"""ADC metrics against slow, obviously-correct reference loops on integer data, where distances are
exact and full of ties (between copies of a code and between different codes alike)."""

import json
import math

import numpy as np
import pytest

from rayhash import metrics, metrics_pq
from rayhash.codespec import pq

# ---- brute-force references: float64 distances to each reconstruction, a full stable argsort ----


def _ref_distances(spec, q, d):
    """Squared L2 from each query to each code's centroids, one pair at a time."""
    cb = spec.codebooks.astype(np.float64)
    out = np.zeros((len(q), len(d)))
    for i in range(len(q)):
        for j in range(len(d)):
            recon = np.concatenate([cb[m, c] for m, c in enumerate(d[j])])
            out[i, j] = np.sum((q[i].astype(np.float64) - recon) ** 2)
    return out


def _is_relevant(a, b) -> bool:
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    if a.shape == (1,):
        return bool(a[0] == b[0])
    return any(x > 0 and y > 0 for x, y in zip(a, b))


def _ref_relevance(dist, ql, dl, k):
    return [[_is_relevant(ql[i], dl[j]) for j in np.argsort(row, kind="stable")[:k]] for i, row in enumerate(dist)]


def _ref_map(dist, ql, dl, k):
    aps = []
    for rel in _ref_relevance(dist, ql, dl, k):
        found, total = 0, 0.0
        for rank, r in enumerate(rel, start=1):
            if r:
                found += 1
                total += found / rank
        aps.append(total / found if found else 0.0)
    return sum(aps) / len(aps)


def _ref_precision_at(dist, ql, dl, ns):
    rel = _ref_relevance(dist, ql, dl, max(ns))
    return [sum(sum(r[:n]) / n for r in rel) / len(rel) for n in ns]


def _ref_pr(dist, ql, dl, thresholds):
    precision, recall = [], []
    for t in thresholds:
        ps, rs = [], []
        for i in range(len(dist)):
            rel = [_is_relevant(ql[i], dl[j]) for j in range(dist.shape[1])]
            got = [j for j in range(dist.shape[1]) if dist[i, j] <= t]
            hits = sum(rel[j] for j in got)
            if got:
                ps.append(hits / len(got))
            if sum(rel):
                rs.append(hits / sum(rel))
        precision.append(sum(ps) / len(ps) if ps else math.nan)
        recall.append(sum(rs) / len(rs))
    return np.array(precision), np.array(recall)


def _random_case(multi_hot: bool, nq=20, ndb=300, seed=0):
    """Integer codebooks and queries: every ADC distance is a small integer, exact in float32 and float64."""
    rng = np.random.default_rng(seed)
    spec = pq.PQSpec(m=3, d_sub=2, k=4, codebooks=rng.integers(-2, 3, (3, 4, 2)).astype(np.float32))
    q = rng.integers(-3, 4, (nq, spec.dim)).astype(np.float32)
    d = rng.integers(0, spec.k, (ndb, spec.m)).astype(np.uint8)
    if multi_hot:
        labels = (rng.random((nq + ndb, 4)) < 0.25).astype(np.int64)  # some rows have no label
    else:
        labels = rng.integers(0, 5, nq + ndb)
    return spec, q, d, labels[:nq], labels[nq:]


@pytest.fixture(params=["single", "multi-hot"])
def case(request):
    return _random_case(request.param == "multi-hot")


def test_case_has_ties_between_different_codes():
    spec, q, d, ql, dl = _random_case(multi_hot=True)
    dist = _ref_distances(spec, q, d)
    np.testing.assert_array_equal(pq.adc_distances(spec, q, d), dist)  # exact: integers
    row = dist[0]
    values, counts = np.unique(row, return_counts=True)
    assert len(values) < len(np.unique(d, axis=0)) < 100  # 300 codes, fewer kinds, fewer distances still
    tied = d[row == values[np.argmax(counts)]]
    assert len(np.unique(tied, axis=0)) > 1  # codes that differ, at the same distance
    assert not (ql.sum(axis=1) > 0).all()  # an unlabelled query retrieves nothing relevant


@pytest.mark.parametrize("k", [1, 7, 100, 300])
def test_ranking_is_a_stable_sort_of_the_distances(case, k):
    spec, q, d, _, _ = case
    dist = _ref_distances(spec, q, d)
    indices, distances = metrics_pq.rank_by_adc(spec, q, d, k)
    stable = np.argsort(dist, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(indices, stable)
    assert distances.dtype == np.float32
    np.testing.assert_array_equal(distances, np.take_along_axis(dist, stable, axis=1))


@pytest.mark.parametrize("k", [1, 7, 100, 300])
def test_map_matches_reference(case, k):
    spec, q, d, ql, dl = case
    expected = _ref_map(_ref_distances(spec, q, d), ql, dl, k)
    assert metrics_pq.map_at_k(spec, q, d, ql, dl, k=k) == pytest.approx(expected, abs=1e-12)


def test_precision_at_n_matches_reference(case):
    spec, q, d, ql, dl = case
    ns = [1, 2, 5, 37, 300]
    got = metrics_pq.precision_at_n(spec, q, d, ql, dl, ns=ns)
    np.testing.assert_allclose(got, _ref_precision_at(_ref_distances(spec, q, d), ql, dl, ns))


def test_pr_curve_matches_reference_at_given_thresholds(case):
    spec, q, d, ql, dl = case
    dist = _ref_distances(spec, q, d)
    # integers fall exactly on distances (retrieved: <=), halves between them; -1 retrieves nothing
    thresholds = [-1.0, 0.0, 1.0, 2.5, 3.0, 7.0, 12.5, 20.0, 20.0, float(dist.max())]
    t, precision, recall = metrics_pq.pr_curve_by_distance(spec, q, d, ql, dl, thresholds)
    ref_p, ref_r = _ref_pr(dist, ql, dl, thresholds)
    np.testing.assert_array_equal(t, thresholds)
    np.testing.assert_allclose(precision, ref_p, equal_nan=True)
    np.testing.assert_allclose(recall, ref_r)
    assert math.isnan(precision[0]) and recall[0] == 0 and recall[-1] == pytest.approx(1.0)


def test_default_thresholds_are_quantiles_ending_where_everything_is_retrieved(case):
    spec, q, d, ql, dl = case
    dist = _ref_distances(spec, q, d)
    t, precision, recall = metrics_pq.pr_curve_by_distance(spec, q, d, ql, dl)
    levels = (np.arange(101) / 100) ** 2
    np.testing.assert_allclose(t[:-1], np.quantile(dist, levels)[:-1])
    tables = pq.adc_tables(spec, q).astype(np.float64)
    assert t[-1] == tables.max(axis=2).sum(axis=1).max() >= dist.max()  # the farthest any code can be
    ref_p, ref_r = _ref_pr(dist, ql, dl, t)
    np.testing.assert_allclose(precision, ref_p, equal_nan=True)
    np.testing.assert_allclose(recall, ref_r)
    assert recall[-1] == pytest.approx(1.0)


def test_thresholds_of_a_large_database_come_from_a_strided_sample(monkeypatch):
    spec, q, d, _, _ = _random_case(multi_hot=False)
    monkeypatch.setattr(metrics_pq, "_SAMPLE_ELEMENTS", 1000)  # 20 x 300 distances -> every 6th code
    t = metrics_pq.distance_thresholds(spec, q, d, n=11)
    sample = _ref_distances(spec, q, d[::6])
    np.testing.assert_allclose(t[:-1], np.quantile(sample, (np.arange(11) / 10) ** 2)[:-1])


def test_chunked_evaluation_matches_one_chunk(case, monkeypatch):
    spec, q, d, ql, dl = case
    whole = metrics_pq.evaluate_pq_codes(spec, q, d, ql, dl, k=50)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 1000)  # 3 queries per chunk
    assert metrics_pq.evaluate_pq_codes(spec, q, d, ql, dl, k=50) == whole


def test_hand_computed_tiny_case():
    # one sub-space of one dim, centroids 0, 2, 5 and 9: a code's reconstruction is its centroid
    spec = pq.PQSpec(m=1, d_sub=1, k=4, codebooks=np.array([[[0.0], [2.0], [5.0], [9.0]]]))
    q = np.array([[1.0]], dtype=np.float32)  # distances to the centroids: 1, 1, 16, 64
    d = np.array([[2], [0], [1], [3]], dtype=np.uint8)  # distances 16, 1, 1, 64
    ql, dl = np.array([1]), np.array([1, 0, 1, 1])
    # ranks positions 1, 2 (tie: lower position first), 0, 3 -> relevance 0, 1, 1, 1
    indices, distances = metrics_pq.rank_by_adc(spec, q, d, k=4)
    assert indices.tolist() == [[1, 2, 0, 3]] and distances.tolist() == [[1, 1, 16, 64]]
    assert metrics_pq.map_at_k(spec, q, d, ql, dl, k=3) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics_pq.map_at_k(spec, q, d, ql, dl, k=1) == 0.0
    np.testing.assert_allclose(metrics_pq.precision_at_n(spec, q, d, ql, dl, ns=[1, 2, 4]), [0, 1 / 2, 3 / 4])
    _, precision, recall = metrics_pq.pr_curve_by_distance(spec, q, d, ql, dl, [0.5, 1, 16, 63.9, 64])
    np.testing.assert_allclose(precision, [np.nan, 1 / 2, 2 / 3, 2 / 3, 3 / 4], equal_nan=True)
    np.testing.assert_allclose(recall, [0, 1 / 3, 2 / 3, 2 / 3, 1])


def test_evaluate_is_plain_json_of_the_binary_shape_and_agrees_with_the_parts(case):
    spec, q, d, ql, dl = case
    ev = metrics_pq.evaluate_pq_codes(spec, q, d, ql, dl, k=100)
    again = json.loads(json.dumps(ev, allow_nan=False))
    assert again == ev
    binary = metrics.evaluate_codes(*(np.zeros((n, 1), np.uint8) for n in (2, 3)), [0, 1], [0, 1, 1], nbits=8, k=2)
    assert set(ev) == set(binary) | {"m"} and binary["code_kind"] == "binary"
    assert (ev["code_kind"], ev["nbits"], ev["m"], ev["k"], len(ev["precision_at_n"])) == ("pq", 6, 3, 100, 100)
    assert ev["map_at_k"] == pytest.approx(metrics_pq.map_at_k(spec, q, d, ql, dl, k=100))
    np.testing.assert_allclose(ev["precision_at_n"], metrics_pq.precision_at_n(spec, q, d, ql, dl, range(1, 101)))
    t, precision, recall = metrics_pq.pr_curve_by_distance(spec, q, d, ql, dl)
    assert ev["pr_curve"]["threshold"] == t.tolist() and len(t) == metrics_pq.N_THRESHOLDS
    as_floats = [math.nan if p is None else p for p in ev["pr_curve"]["precision"]]
    np.testing.assert_allclose(as_floats, precision)
    np.testing.assert_allclose(ev["pr_curve"]["recall"], recall)


def test_bad_inputs_say_what_is_wrong():
    spec, q, d, ql, dl = _random_case(multi_hot=False)
    with pytest.raises(ValueError, match="continuous float vectors"):
        metrics_pq.map_at_k(spec, pq.encode(spec, q), d, ql, dl, k=10)  # codes as queries
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        metrics_pq.map_at_k(spec, q[:, :4], d, ql, dl, k=10)
    with pytest.raises(ValueError, match="NaN"):
        metrics_pq.map_at_k(spec, np.full_like(q, np.nan), d, ql, dl, k=10)
    with pytest.raises(ValueError, match=r"uint8 of shape \(n, 3\)"):
        metrics_pq.map_at_k(spec, q, d[:, :2], ql, dl, k=10)
    with pytest.raises(TypeError, match="PQSpec"):
        metrics_pq.map_at_k(spec.codebooks, q, d, ql, dl, k=10)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 300\]"):
        metrics_pq.map_at_k(spec, q, d, ql, dl, k=1000)
    with pytest.raises(ValueError, match="one label row"):
        metrics_pq.map_at_k(spec, q, d, ql[:-1], dl, k=10)
    with pytest.raises(ValueError, match="non-decreasing"):
        metrics_pq.pr_curve_by_distance(spec, q, d, ql, dl, [2.0, 1.0])
    with pytest.raises(ValueError, match="empty"):
        metrics_pq.map_at_k(spec, q[:0], d, ql[:0], dl, k=10)
    with pytest.raises(ValueError, match="empty"):
        metrics_pq.map_at_k(spec, q, d[:0], ql, dl[:0], k=10)
