"""Metrics against slow, obviously-correct reference loops on data full of distance ties."""

import json
import math

import numpy as np
import pytest

from rayhash import metrics
from rayhash.codespec import binary as codes

# ---- brute-force references: one query at a time over a full stable argsort ----------------


def _is_relevant(a, b) -> bool:
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    if a.shape == (1,):
        return bool(a[0] == b[0])
    return any(x > 0 and y > 0 for x, y in zip(a, b))


def _ranking(q, d):
    return [np.argsort(row, kind="stable") for row in codes.hamming(q, d)]


def _ref_map(q, d, ql, dl, k):
    aps = []
    for i, order in enumerate(_ranking(q, d)):
        found, total = 0, 0.0
        for rank, j in enumerate(order[:k], start=1):
            if _is_relevant(ql[i], dl[j]):
                found += 1
                total += found / rank
        aps.append(total / found if found else 0.0)
    return sum(aps) / len(aps)


def _ref_precision_at(q, d, ql, dl, ns):
    orders = _ranking(q, d)
    out = []
    for n in ns:
        per_query = [sum(_is_relevant(ql[i], dl[j]) for j in order[:n]) / n for i, order in enumerate(orders)]
        out.append(sum(per_query) / len(per_query))
    return out


def _ref_pr(q, d, ql, dl, nbits):
    dist = codes.hamming(q, d)
    precision, recall = [], []
    for r in range(nbits + 1):
        ps, rs = [], []
        for i in range(len(q)):
            rel = [_is_relevant(ql[i], dl[j]) for j in range(len(d))]
            got = [j for j in range(len(d)) if dist[i, j] <= r]
            hits = sum(rel[j] for j in got)
            if got:
                ps.append(hits / len(got))
            if sum(rel):
                rs.append(hits / sum(rel))
        precision.append(sum(ps) / len(ps) if ps else math.nan)
        recall.append(sum(rs) / len(rs))
    return np.array(precision), np.array(recall)


def _random_case(multi_hot: bool, nq=25, ndb=300, nbits=16, seed=0):
    rng = np.random.default_rng(seed)
    # Biased bits crowd the codes into few distances: many ties for the tie-break to decide.
    bits = rng.random((nq + ndb, nbits)) < 0.15
    packed = np.packbits(bits, axis=1)
    if multi_hot:
        labels = (rng.random((nq + ndb, 4)) < 0.25).astype(np.int64)  # some rows have no label
    else:
        labels = rng.integers(0, 5, nq + ndb)
    return packed[:nq], packed[nq:], labels[:nq], labels[nq:]


@pytest.fixture(params=["single", "multi-hot"])
def case(request):
    return _random_case(request.param == "multi-hot")


def test_case_has_ties_and_queries_without_relevant_items():
    q, d, ql, dl = _random_case(multi_hot=True)
    dist = codes.hamming(q, d)
    assert len(np.unique(dist[0])) < 10  # 300 items over < 10 distinct distances
    assert not (ql.sum(axis=1) > 0).all()  # an unlabelled query retrieves nothing relevant


@pytest.mark.parametrize("k", [1, 7, 100, 300])
def test_map_matches_reference(case, k):
    q, d, ql, dl = case
    assert metrics.map_at_k(q, d, ql, dl, k=k) == pytest.approx(_ref_map(q, d, ql, dl, k), abs=1e-12)


def test_precision_at_n_matches_reference(case):
    q, d, ql, dl = case
    ns = [1, 2, 5, 37, 300]
    got = metrics.precision_at_n(q, d, ql, dl, ns=ns)
    np.testing.assert_allclose(got, _ref_precision_at(q, d, ql, dl, ns))


def test_pr_curve_matches_reference(case):
    q, d, ql, dl = case
    precision, recall = metrics.pr_curve_by_radius(q, d, ql, dl, nbits=16)
    ref_p, ref_r = _ref_pr(q, d, ql, dl, 16)
    np.testing.assert_allclose(precision, ref_p, equal_nan=True)
    np.testing.assert_allclose(recall, ref_r)
    assert recall[-1] == pytest.approx(1.0)  # radius nbits retrieves everything


def test_chunked_evaluation_matches_one_chunk(case, monkeypatch):
    q, d, ql, dl = case
    whole = metrics.evaluate_codes(q, d, ql, dl, nbits=16, k=50)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 1000)  # 3 queries per chunk
    assert metrics.evaluate_codes(q, d, ql, dl, nbits=16, k=50) == whole


def test_hand_computed_tiny_case():
    q = np.array([[0b00000000], [0b00000000]], dtype=np.uint8)
    d = np.array([[0b00000011], [0b00000001], [0b10000000]], dtype=np.uint8)  # distances 2, 1, 1
    ql, dl = np.array([1, 7]), np.array([1, 0, 1])
    # Query 0 ranks positions 1, 2 (tie: lower position first), 0 -> relevance 0, 1, 1.
    # AP@3 = (1/2 + 2/3) / 2; query 1 (class 7) has nothing relevant: AP 0, still counted.
    assert metrics.map_at_k(q[:1], d, ql[:1], dl, k=3) == pytest.approx(7 / 12)
    # 1.0 if the tie between positions 1 and 2 broke the other way:
    assert metrics.map_at_k(q[:1], d, ql[:1], dl, k=2) == pytest.approx(0.5)
    assert metrics.map_at_k(q[:1], d, ql[:1], dl, k=1) == 0.0
    assert metrics.map_at_k(q, d, ql, dl, k=3) == pytest.approx(7 / 24)
    got = metrics.precision_at_n(q[:1], d, ql[:1], dl, ns=[1, 2, 3])
    np.testing.assert_allclose(got, [0, 1 / 2, 2 / 3])
    precision, recall = metrics.pr_curve_by_radius(q[:1], d, ql[:1], dl, nbits=8)
    assert math.isnan(precision[0]) and recall[0] == 0  # radius 0 retrieves nothing
    np.testing.assert_allclose(precision[1:], [1 / 2] + [2 / 3] * 7)
    np.testing.assert_allclose(recall[1:], [1 / 2] + [1.0] * 7)


@pytest.mark.parametrize("nbits", [8, 24, 64, 72, 128])
def test_hamming_distances_and_ranking_match_codes_hamming(nbits):
    rng = np.random.default_rng(nbits)
    q = rng.integers(0, 256, (13, nbits // 8), dtype=np.uint8)
    d = rng.integers(0, 256, (500, nbits // 8), dtype=np.uint8)
    d[250:] = d[:250]  # exact duplicates: equal distances at different positions
    ref = codes.hamming(q, d)
    np.testing.assert_array_equal(metrics.hamming_distances(q, d), ref)
    indices, distances = metrics.rank_by_hamming(q, d, k=400)
    stable = np.argsort(ref, axis=1, kind="stable")[:, :400]
    np.testing.assert_array_equal(indices, stable)
    np.testing.assert_array_equal(distances, np.take_along_axis(ref, stable, axis=1))


def test_evaluate_codes_is_plain_json_and_agrees_with_the_parts(case):
    q, d, ql, dl = case
    ev = metrics.evaluate_codes(q, d, ql, dl, nbits=16, k=100)
    again = json.loads(json.dumps(ev, allow_nan=False))
    assert again == ev
    assert ev["k"] == 100 and len(ev["precision_at_n"]) == 100
    assert ev["map_at_k"] == pytest.approx(metrics.map_at_k(q, d, ql, dl, k=100))
    got = metrics.precision_at_n(q, d, ql, dl, ns=range(1, 101))
    np.testing.assert_allclose(ev["precision_at_n"], got)
    precision, recall = metrics.pr_curve_by_radius(q, d, ql, dl, 16)
    assert ev["pr_curve"]["radius"] == list(range(17))
    as_floats = [math.nan if p is None else p for p in ev["pr_curve"]["precision"]]
    np.testing.assert_allclose(as_floats, precision)
    np.testing.assert_allclose(ev["pr_curve"]["recall"], recall)


def test_bad_inputs_say_what_is_wrong():
    q, d, ql, dl = _random_case(multi_hot=False)
    with pytest.raises(ValueError, match="rayhash.codespec.binary.pack"):
        metrics.map_at_k(np.unpackbits(q, axis=1).astype(np.float32), d, ql, dl)
    with pytest.raises(ValueError, match="8 bits"):
        metrics.map_at_k(q[:, :1], d, ql, dl, k=10)
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 300\]"):
        metrics.map_at_k(q, d, ql, dl, k=1000)
    with pytest.raises(ValueError, match="one label row"):
        metrics.map_at_k(q, d, ql[:-1], dl, k=10)
    with pytest.raises(ValueError, match="multi-hot"):
        metrics.map_at_k(q, d, ql, np.eye(5)[dl], k=10)
    with pytest.raises(ValueError, match="nbits=32"):
        metrics.pr_curve_by_radius(q, d, ql, dl, nbits=32)
    with pytest.raises(ValueError, match="ns"):
        metrics.precision_at_n(q, d, ql, dl, ns=[0, 5])
    with pytest.raises(ValueError, match="empty"):
        metrics.map_at_k(q[:0], d, ql[:0], dl, k=10)
