"""Retrieval quality of product-quantised codes: the database ranked by asymmetric distance (ADC).

Each query keeps its continuous vector; each database code is scored by the squared L2 distance to
its reconstruction, summed from the query's ``(M, K)`` table (:mod:`rayhash.codespec.pq`, as faiss
``IndexPQ`` scores it). Ties are broken by database position, exactly as
:mod:`rayhash.metrics` breaks Hamming ties, and mAP@k and P@N are defined as there, so the two kinds
of code are measured by one protocol (PROTOCOL.md).

The PR curve sweeps a distance threshold t in place of a Hamming radius: everything at distance
<= t is retrieved, and precision and recall are averaged over queries as for the radius. ADC
distances are floats with no natural steps, so the thresholds are quantiles of the query-database
distances at levels ``(i / 100) ** 2``, i = 0..100: a curve of 101 points in every run, denser among
the nearest items, where precision changes fastest. The quantiles are taken over the distances of
every query to an evenly strided sample of the database (all of it when it is small), which bounds
memory; the last threshold is raised to the largest distance any code can have from any query, so
the curve ends by retrieving everything (recall 1), as radius nbits does.
"""

from __future__ import annotations

import math

import numpy as np

from rayhash.codespec import pq as pq_lib
from rayhash.metrics import (
    _check_k,
    _check_labels,
    _check_ns,
    _json_floats,
    _precision_at,
    _query_chunks,
    _relevance,
    average_precision,
)

N_THRESHOLDS = 101
_SAMPLE_ELEMENTS = 1 << 21  # query-database distances sampled to place the thresholds


def _check_inputs(spec: pq_lib.PQSpec, queries, db_codes) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(spec, pq_lib.PQSpec):
        raise TypeError(
            f"spec must be a rayhash.codespec.pq.PQSpec (the codebooks), got {type(spec).__name__}; "
            "a pq checkpoint's is ImageEncoder.spec"
        )
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != spec.dim or q.dtype.kind != "f":
        raise ValueError(
            f"queries must be continuous float vectors (n, {spec.dim}) for M={spec.m} x d_sub={spec.d_sub}, got "
            f"{q.dtype} {q.shape}; ADC ranks the database from each query's z (ImageEncoder.encode_continuous), "
            "not from its code"
        )
    if not np.isfinite(q).all():
        raise ValueError("queries hold NaN or infinite values")
    d = pq_lib.check_codes(spec, db_codes)
    if len(d) == 0:
        raise ValueError("db_codes is empty: there is nothing to rank.")
    return q, d


def _distance_chunks(spec: pq_lib.PQSpec, q: np.ndarray, d: np.ndarray):
    """(query slice, float32 ADC distances of those queries to every code), a chunk at a time."""
    for s in _query_chunks(len(q), len(d)):
        yield s, pq_lib.adc_distances(spec, q[s], d)


def _top_k(dist: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k nearest per row, nearest first, ties by position: the first k of a stable
    argsort, found from the candidates no farther than the k-th distance (a full float sort is ~30x slower)."""
    if k == dist.shape[1]:
        return np.argsort(dist, axis=1, kind="stable")
    kth = np.partition(dist, k - 1, axis=1)[:, k - 1]
    out = np.empty((len(dist), k), dtype=np.int64)
    for i, (row, limit) in enumerate(zip(dist, kth)):
        candidates = np.flatnonzero(row <= limit)  # in position order, so a stable sort keeps ties so
        out[i] = candidates[np.argsort(row[candidates], kind="stable")[:k]]
    return out


def rank_by_adc(spec: pq_lib.PQSpec, queries, db_codes, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database codes per query by ADC: indices (int64) and distances (float32),
    ``(nq, k)`` each, nearest first, ties in database order."""
    q, d = _check_inputs(spec, queries, db_codes)
    k = _check_k(k, len(d))
    indices = np.empty((len(q), k), dtype=np.int64)
    distances = np.empty((len(q), k), dtype=np.float32)
    for s, dist in _distance_chunks(spec, q, d):
        indices[s] = _top_k(dist, k)
        distances[s] = np.take_along_axis(dist, indices[s], axis=1)
    return indices, distances


def _ranked_relevance(spec, queries, db_codes, query_labels, db_labels, k: int) -> np.ndarray:
    """Bool ``(nq, k)``: relevance of each query's k nearest database codes, in rank order."""
    q, d = _check_inputs(spec, queries, db_codes)
    ql, dl = _check_labels(query_labels, db_labels, len(q), len(d))
    if len(q) == 0:
        raise ValueError("queries is empty: there is nothing to average over.")
    indices, _ = rank_by_adc(spec, q, d, k)
    relevant = np.empty(indices.shape, dtype=bool)
    for s in _query_chunks(len(q), k * (dl.shape[1] if dl.ndim == 2 else 1)):
        relevant[s] = _relevance(ql[s], dl, indices[s])
    return relevant


def map_at_k(spec: pq_lib.PQSpec, queries, db_codes, query_labels, db_labels, k: int = 1000) -> float:
    """Mean over queries of AP@k under the ADC ranking (a query with no relevant item in its first k scores 0)."""
    relevant = _ranked_relevance(spec, queries, db_codes, query_labels, db_labels, k)
    return float(average_precision(relevant).mean())


def precision_at_n(spec: pq_lib.PQSpec, queries, db_codes, query_labels, db_labels, ns=range(1, 1001)) -> np.ndarray:
    """Mean precision within the first N codes of the ADC ranking, one value per N in ``ns``."""
    _, d = _check_inputs(spec, queries, db_codes)
    ns = _check_ns(ns, len(d))
    relevant = _ranked_relevance(spec, queries, db_codes, query_labels, db_labels, int(ns.max()))
    return _precision_at(relevant, ns)


def distance_thresholds(spec: pq_lib.PQSpec, queries, db_codes, n: int = N_THRESHOLDS) -> np.ndarray:
    """The PR curve's ``n`` thresholds, non-decreasing float64 (the module docstring says how they are placed)."""
    q, d = _check_inputs(spec, queries, db_codes)
    if n < 2:
        raise ValueError(f"a PR curve needs at least 2 thresholds, got n={n}")
    stride = max(1, math.ceil(len(q) * len(d) / _SAMPLE_ELEMENTS))
    sample = np.concatenate([dist.ravel() for _, dist in _distance_chunks(spec, q, d[::stride])])
    out = np.quantile(sample.astype(np.float64), np.linspace(0.0, 1.0, n) ** 2)
    out[-1] = max(out[-1], _largest_distance(spec, q))
    return out


def _largest_distance(spec: pq_lib.PQSpec, q: np.ndarray) -> float:
    """A distance no code exceeds from any query: each table's largest entry, summed in float64 in
    the order :func:`rayhash.codespec.pq.adc_distances` sums (rounding is monotone), then float32."""
    out = 0.0
    for s in _query_chunks(len(q), spec.m * spec.k):
        farthest = pq_lib.adc_tables(spec, q[s]).max(axis=2)
        total = np.zeros(len(farthest))
        for j in range(spec.m):
            total += farthest[:, j]
        out = max(out, float(total.astype(np.float32).max()))
    return out


def pr_curve_by_distance(
    spec: pq_lib.PQSpec, queries, db_codes, query_labels, db_labels, thresholds=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds, precision and recall when every code at ADC distance <= each threshold is retrieved.

    ``thresholds`` (non-decreasing) defaults to :func:`distance_thresholds`. Precision is averaged
    over the queries that retrieve at least one code at that threshold (NaN where none does);
    recall over the queries that have at least one relevant code in the database.
    """
    q, d = _check_inputs(spec, queries, db_codes)
    ql, dl = _check_labels(query_labels, db_labels, len(q), len(d))
    if len(q) == 0:
        raise ValueError("queries is empty: there is nothing to average over.")
    t = distance_thresholds(spec, q, d) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or len(t) == 0 or not np.isfinite(t).all() or (np.diff(t) < 0).any():
        raise ValueError(f"thresholds must be a non-empty, non-decreasing sequence of finite numbers, got {t!r:.80}")
    width = len(t) + 1  # bin i: distances in (t[i-1], t[i]]; the last bin is beyond every threshold
    retrieved = np.zeros((len(q), width), dtype=np.int64)
    hits = np.zeros((len(q), width), dtype=np.int64)
    for s, dist in _distance_chunks(spec, q, d):
        m = len(dist)
        bins = (np.searchsorted(t, dist, side="left") + width * np.arange(m)[:, None]).ravel()
        relevant = _relevance(ql[s], dl).ravel()
        retrieved[s] = np.bincount(bins, minlength=m * width).reshape(m, width)
        hits[s] = np.bincount(bins[relevant], minlength=m * width).reshape(m, width)
    n_relevant = hits.sum(axis=1)
    retrieved, hits = np.cumsum(retrieved, axis=1)[:, :-1], np.cumsum(hits, axis=1)[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(retrieved > 0, hits / retrieved, np.nan)
        recall = hits[n_relevant > 0] / n_relevant[n_relevant > 0, None]
    counted = (retrieved > 0).sum(axis=0)
    precision = np.where(counted > 0, np.nansum(precision, axis=0) / np.maximum(counted, 1), np.nan)
    recall = recall.mean(axis=0) if len(recall) else np.full(len(t), np.nan)
    return t, precision, recall


def evaluate_pq_codes(spec: pq_lib.PQSpec, queries, db_codes, query_labels, db_labels, k: int = 1000) -> dict:
    """mAP@k, P@N for N = 1..k and the PR curve by distance threshold, as a plain JSON-able dict of
    the shape :func:`rayhash.metrics.evaluate_codes` gives (``pr_curve`` has ``threshold`` for ``radius``)."""
    relevant = _ranked_relevance(spec, queries, db_codes, query_labels, db_labels, k)
    thresholds, precision, recall = pr_curve_by_distance(spec, queries, db_codes, query_labels, db_labels)
    return {
        "code_kind": pq_lib.KIND,
        "map_at_k": float(average_precision(relevant).mean()),
        "k": int(k),
        "nbits": int(spec.nbits),
        "m": int(spec.m),
        "n_queries": int(relevant.shape[0]),
        "n_database": int(len(np.asarray(db_codes))),
        "precision_at_n": _json_floats(_precision_at(relevant, np.arange(1, k + 1))),
        "pr_curve": {
            "threshold": [float(x) for x in thresholds],
            "precision": _json_floats(precision),
            "recall": _json_floats(recall),
        },
    }
