"""Exact top-k over faiss binary indexes, ordered by (distance, position), and its merge.

faiss breaks ties at the k-th distance by whatever order its heap leaves them in, so two
indexes over the same codes (or one index and a sharded copy) can disagree about which of
the tied items make the cut. Here every result is ordered by ``(distance, key)`` where the
key is an item's position: :func:`topk` closes the boundary (it makes sure every item at
the k-th distance was seen before cutting), and :func:`merge_topk` merges per-shard
results whose keys are global, so a sharded search equals one search over all codes.

Rows with fewer than ``k`` results are padded with distance ``-1`` and key ``-1``.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

PAD = -1


def sort_rows(distances: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort each row by ``(distance, key)``, pads last, and keep ``k`` columns (padding if short).

    Returns ``(distances int32, keys int64, source)``: ``source[i, j]`` is the input column
    the entry came from, ``-1`` for pads.
    """
    valid = keys >= 0
    span = int(keys.max(initial=0)) + 1
    # One int64 sort key per entry (distance major, key minor); pads sort after everything.
    order_key = np.where(valid, distances.astype(np.int64) * span + keys, np.iinfo(np.int64).max)
    order = np.argsort(order_key, axis=1, kind="stable")[:, :k].astype(np.int64)
    pad = ~np.take_along_axis(valid, order, axis=1)
    out_d = np.take_along_axis(distances, order, axis=1).astype(np.int32)
    out_k = np.take_along_axis(keys, order, axis=1).astype(np.int64)
    out_d[pad], out_k[pad], order[pad] = PAD, PAD, PAD
    short = k - order.shape[1]  # fewer candidates than k in total
    if short > 0:
        fill = np.full((len(order), short), PAD, dtype=np.int64)
        out_d, out_k, order = np.hstack([out_d, fill.astype(np.int32)]), np.hstack([out_k, fill]), np.hstack([order, fill])
    return out_d, out_k, order


def topk(index, queries: np.ndarray, k: int, margin: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest items per query, ties broken by position: ``(distances int32, positions int64)``.

    ``index`` is any faiss binary index (flat: exact; IVF: exact over the lists it probes).
    One search asks for ``k + margin`` results; a query whose ``(k + margin)``-th distance
    still equals its k-th has ties the search may have cut, and gets a range search at the
    k-th distance instead, which returns every tied item.
    """
    queries = np.ascontiguousarray(queries, dtype=np.uint8)
    nq, n = len(queries), int(index.ntotal)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if nq == 0 or n == 0:
        return np.full((nq, k), PAD, dtype=np.int32), np.full((nq, k), PAD, dtype=np.int64)
    kk = min(k, n)
    probe = min(n, kk + (kk if margin is None else margin))
    dist, pos = index.search(queries, probe)
    kth = dist[:, kk - 1]
    # Open: more items exist than were returned, and the last one returned still ties the k-th.
    open_rows = np.flatnonzero((probe < n) & (pos[:, -1] >= 0) & (dist[:, -1] == kth))
    out_d, out_l, _ = sort_rows(dist, pos, k)
    # Rows whose boundary is open: all items at distance <= kth (faiss's radius is exclusive),
    # grouped by radius so each distinct k-th distance costs one range search.
    for radius in np.unique(kth[open_rows]):
        rows = open_rows[kth[open_rows] == radius]
        lims, rd, rl = index.range_search(queries[rows], int(radius) + 1)
        for j, row in enumerate(rows):
            lo, hi = lims[j], lims[j + 1]
            d, l, _ = sort_rows(rd[None, lo:hi], rl[None, lo:hi].astype(np.int64), k)
            out_d[row], out_l[row] = d[0], l[0]
    return out_d, out_l


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-shard ``(distances, global keys)`` of the same queries into the exact top-k.

    Returns ``(distances, keys, source)`` as :func:`sort_rows` does, ``source`` indexing the
    parts' columns laid side by side (use it to pick the ids returned beside the keys).
    Exact when each part is its shard's top-k under the same ``(distance, key)`` order.
    """
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    return sort_rows(np.hstack([d for d, _ in parts]), np.hstack([l for _, l in parts]), k)
