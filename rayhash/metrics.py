"""Retrieval quality of packed binary codes, measured as ``PROTOCOL.md`` defines it
(:mod:`rayhash.metrics_pq` measures product-quantised codes, by asymmetric distance).

The database is ranked by Hamming distance to each query, ties broken by database position
(a stable sort), so every figure is deterministic. Labels are integer classes ``(n,)``
(relevant = same class) or multi-hot ``(n, C)`` (relevant = at least one label shared, as
on NUS-WIDE).

- mAP@k: AP@k averages the precision at each relevant item within the first k, divided by
  the number of relevant items found there; a query with none scores 0 and still counts.
- P@N: the fraction of relevant items in the first N, averaged over all queries.
- PR curve by Hamming radius r = 0..nbits: everything within distance r is retrieved.
  Precision is averaged over the queries that retrieve at least one item at that radius
  (NaN where none does); recall, over all relevant items in the database, is averaged over
  the queries that have at least one.
"""

from __future__ import annotations

import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

# Distances held in memory at once; small chunks keep the per-row sort in cache.
_CHUNK_ELEMENTS = 1 << 21


def _check_codes(query_codes: np.ndarray, db_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q, d = np.asarray(query_codes), np.asarray(db_codes)
    for name, c in (("query_codes", q), ("db_codes", d)):
        if c.dtype != np.uint8 or c.ndim != 2:
            raise ValueError(
                f"{name} must be packed uint8 codes of shape (n, nbits/8), got {c.dtype} "
                f"{c.shape}; pack +-1 or continuous codes with rayhash.codespec.binary.pack first."
            )
    if q.shape[1] != d.shape[1]:
        raise ValueError(
            f"query codes have {8 * q.shape[1]} bits but database codes have {8 * d.shape[1]}; "
            "both must come from the same model."
        )
    if len(d) == 0:
        raise ValueError("db_codes is empty: there is nothing to rank.")
    return q, d


def _check_labels(query_labels: np.ndarray, db_labels: np.ndarray, nq: int, ndb: int) -> tuple[np.ndarray, np.ndarray]:
    """Class labels as given; multi-hot labels as float32 0/1, so overlap is one matmul."""
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    if len(ql) != nq or len(dl) != ndb:
        raise ValueError(
            f"{len(ql)} query labels for {nq} query codes and {len(dl)} database labels for "
            f"{ndb} database codes; each code needs one label row."
        )
    if ql.ndim not in (1, 2) or ql.ndim != dl.ndim:
        raise ValueError(
            f"labels must be both (n,) class ids or both (n, C) multi-hot, got query labels "
            f"{ql.shape} and database labels {dl.shape}."
        )
    if ql.ndim == 2:
        if ql.shape[1] != dl.shape[1]:
            raise ValueError(f"multi-hot labels disagree on C: queries {ql.shape[1]}, database {dl.shape[1]}.")
        return (ql > 0).astype(np.float32), (dl > 0).astype(np.float32)
    return ql, dl


def _check_k(k: int, ndb: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= ndb:
        raise ValueError(f"{name} must be an integer in [1, {ndb}] (the database size), got {k!r}.")
    return int(k)


def _as_words(codes: np.ndarray) -> np.ndarray:
    """Packed codes as uint64 words, zero-padded: padding bits agree, so distances do not change."""
    pad = -codes.shape[1] % 8
    if pad:
        codes = np.pad(codes, ((0, 0), (0, pad)))
    return np.ascontiguousarray(codes).view(np.uint64)


def _word_distances(qw: np.ndarray, dw: np.ndarray) -> np.ndarray:
    # uint16 keeps numpy's stable argsort on its radix path (a plain int32 sort is ~10x slower).
    out = np.zeros((qw.shape[0], dw.shape[0]), dtype=np.uint16)
    for j in range(qw.shape[1]):
        out += np.bitwise_count(qw[:, j, None] ^ dw[None, :, j])
    return out


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Hamming distances ``(nq, ndb)`` as uint16: :func:`rayhash.codespec.binary.hamming` a word at a time."""
    q, d = _check_codes(query_codes, db_codes)
    return _word_distances(_as_words(q), _as_words(d))


def _query_chunks(nq: int, row_elements: int):
    rows = max(1, _CHUNK_ELEMENTS // max(1, row_elements))
    for start in range(0, nq, rows):
        yield slice(start, min(start + rows, nq))


def rank_by_hamming(query_codes: np.ndarray, db_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database rows per query: indices (int64) and distances (int32),
    ``(nq, k)`` each, nearest first, ties in database order."""
    q, d = _check_codes(query_codes, db_codes)
    k = _check_k(k, len(d))
    qw, dw = _as_words(q), _as_words(d)
    indices = np.empty((len(q), k), dtype=np.int64)
    distances = np.empty((len(q), k), dtype=np.int32)
    for s in _query_chunks(len(q), len(d)):
        dist = _word_distances(qw[s], dw)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        indices[s] = order
        distances[s] = np.take_along_axis(dist, order, axis=1)
    return indices, distances


def _relevance(ql: np.ndarray, dl: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Bool ``(m, n)``: does each database item share a label with each of ``m`` queries.

    Against the whole database, or against ``dl[rows[i]]`` for query ``i`` when ``rows`` is given.
    """
    if ql.ndim == 1:
        return ql[:, None] == (dl[None, :] if rows is None else dl[rows])
    if rows is None:
        return ql @ dl.T > 0
    return np.einsum("mc,mkc->mk", ql, dl[rows]) > 0


def _ranked_relevance(query_codes, db_codes, query_labels, db_labels, k: int) -> np.ndarray:
    """Bool ``(nq, k)``: relevance of each query's k nearest database items, in rank order."""
    q, d = _check_codes(query_codes, db_codes)
    ql, dl = _check_labels(query_labels, db_labels, len(q), len(d))
    if len(q) == 0:
        raise ValueError("query_codes is empty: there is nothing to average over.")
    indices, _ = rank_by_hamming(q, d, k)
    relevant = np.empty(indices.shape, dtype=bool)
    for s in _query_chunks(len(q), k * (dl.shape[1] if dl.ndim == 2 else 1)):
        relevant[s] = _relevance(ql[s], dl, indices[s])
    return relevant


def average_precision(relevant: np.ndarray) -> np.ndarray:
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    found = hits[:, -1]
    return np.where(found > 0, (precision * relevant).sum(axis=1) / np.maximum(found, 1), 0.0)


def map_at_k(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    k: int = 1000,
) -> float:
    """Mean over queries of AP@k (a query with no relevant item in its first k scores 0)."""
    relevant = _ranked_relevance(query_codes, db_codes, query_labels, db_labels, k)
    return float(average_precision(relevant).mean())


def _precision_at(relevant: np.ndarray, ns: np.ndarray) -> np.ndarray:
    hits = np.cumsum(relevant, axis=1)
    return hits[:, ns - 1].mean(axis=0) / ns


def _check_ns(ns, ndb: int) -> np.ndarray:
    ns = np.asarray(list(ns) if not isinstance(ns, np.ndarray) else ns)
    if ns.ndim != 1 or len(ns) == 0 or not np.issubdtype(ns.dtype, np.integer):
        raise ValueError(f"ns must be a non-empty sequence of integers, got {ns!r}.")
    if ns.min() < 1 or ns.max() > ndb:
        raise ValueError(f"every N in ns must be in [1, {ndb}] (the database size), got {ns.min()}..{ns.max()}.")
    return ns.astype(np.int64)


def precision_at_n(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    ns=range(1, 1001),
) -> np.ndarray:
    """Mean precision within the first N ranked items, one value per N in ``ns``."""
    _, d = _check_codes(query_codes, db_codes)
    ns = _check_ns(ns, len(d))
    relevant = _ranked_relevance(query_codes, db_codes, query_labels, db_labels, int(ns.max()))
    return _precision_at(relevant, ns)


def pr_curve_by_radius(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    nbits: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall ``(nbits + 1,)`` when everything within Hamming radius 0..nbits is
    retrieved (see the module docstring for which queries each mean is over)."""
    q, d = _check_codes(query_codes, db_codes)
    if nbits != 8 * q.shape[1]:
        raise ValueError(f"nbits={nbits!r} but the packed codes hold {8 * q.shape[1]} bits ({q.shape[1]} bytes).")
    ql, dl = _check_labels(query_labels, db_labels, len(q), len(d))
    if len(q) == 0:
        raise ValueError("query_codes is empty: there is nothing to average over.")
    width = nbits + 1
    retrieved = np.zeros((len(q), width), dtype=np.int64)  # items at each distance, then cumulative
    hits = np.zeros((len(q), width), dtype=np.int64)
    qw, dw = _as_words(q), _as_words(d)
    for s in _query_chunks(len(q), len(d)):
        dist = _word_distances(qw[s], dw)
        m = len(dist)
        # One bincount over all rows: row i's distances are shifted into bins i*width..
        bins = (dist.astype(np.int64) + width * np.arange(m)[:, None]).ravel()
        relevant = _relevance(ql[s], dl).ravel()
        retrieved[s] = np.bincount(bins, minlength=m * width).reshape(m, width)
        hits[s] = np.bincount(bins[relevant], minlength=m * width).reshape(m, width)
    n_relevant = hits.sum(axis=1)
    retrieved, hits = np.cumsum(retrieved, axis=1), np.cumsum(hits, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(retrieved > 0, hits / retrieved, np.nan)
        recall = hits[n_relevant > 0] / n_relevant[n_relevant > 0, None]
    counted = (retrieved > 0).sum(axis=0)
    precision = np.where(counted > 0, np.nansum(precision, axis=0) / np.maximum(counted, 1), np.nan)
    recall = recall.mean(axis=0) if len(recall) else np.full(width, np.nan)
    return precision, recall


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def evaluate_codes(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    nbits: int,
    k: int = 1000,
) -> dict:
    """mAP@k, P@N for N = 1..k and the PR curve by radius, as a plain JSON-able dict
    (NaN precision, where no query retrieves anything, becomes ``None``)."""
    relevant = _ranked_relevance(query_codes, db_codes, query_labels, db_labels, k)
    precision, recall = pr_curve_by_radius(query_codes, db_codes, query_labels, db_labels, nbits)
    return {
        "code_kind": "binary",
        "map_at_k": float(average_precision(relevant).mean()),
        "k": int(k),
        "nbits": int(nbits),
        "n_queries": int(relevant.shape[0]),
        "n_database": int(len(np.asarray(db_codes))),
        "precision_at_n": _json_floats(_precision_at(relevant, np.arange(1, k + 1))),
        "pr_curve": {
            "radius": list(range(nbits + 1)),
            "precision": _json_floats(precision),
            "recall": _json_floats(recall),
        },
    }
