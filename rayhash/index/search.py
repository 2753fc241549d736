"""Top-k over faiss indexes, ordered by (distance, position), and its exact merge.

Distances are Hamming counts (int32, binary codes) or asymmetric squared L2 (float32, PQ
codes); both are ordered by ``(distance, key)`` alike, only the distance type differs.

Every result is ordered by ``(distance, key)`` where the key is an item's position, so that
:func:`merge_topk` over per-shard results whose keys are global equals one search over all
codes, and two replicas of a shard always agree.

Which items tied at the k-th distance make the cut depends on the index:

- ``IndexBinaryFlat`` (exact): faiss scans positions in increasing order into a max-heap
  ordered by ``(distance, id)`` and admits an item only when strictly nearer than the heap's
  top (``faiss/utils/simd_impl/hamming_impl.h``, ``hammings_knn_hc_impl``; ``Heap.h``,
  ``CMax::cmp2``). A later item at the top's distance has a larger position, so it is rightly
  kept out: one plain search already returns the k smallest ``(distance, position)`` pairs.
  ``tests/index/test_topk.py`` holds faiss to that against brute force on heavily tied codes.
- ``IndexPQ`` (exact over its codes): the same scan and strict admission on float ADC
  distances (``faiss/impl/ProductQuantizer.cpp``, ``pq_knn_search_with_tables``); it is
  re-sorted here all the same, and ``tests/index/test_pq_index.py`` holds the tie cut to
  positions against numpy.
- IVF and other sub-linear indexes (approximate): the k nearest items of the lists probed;
  ties at the k-th distance are cut in the index's scan order (probe order, then list order),
  which is deterministic for a given index and ``nprobe`` but not by position. Closing them
  would cost a second, range, search over the same lists: more than the approximation itself
  loses (recall@k, PROTOCOL.md, counts every item within the exact k-th distance).

Rows with fewer than ``k`` results are padded with distance ``-1`` and key ``-1``.

The sorts pack each (distance, key) pair into one int64 where the bits allow: a Hamming
distance as itself, a float32 distance as its order-preserving 32-bit pattern (the sign bit
flipped for non-negative values, every bit for negative ones), which sorts exactly as the
floats do and turns back into the same float.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

logger = logging.getLogger(__name__)

PAD = -1
_SIGN = np.int64(0x80000000)
_LOW32 = np.int64(0xFFFFFFFF)


def _is_float(distances: np.ndarray) -> bool:
    return distances.dtype.kind == "f"


def _ordinals(distances: np.ndarray) -> np.ndarray:
    """Distances as non-negative int64s in the same order: Hamming counts as they are, float32s by bit pattern."""
    if not _is_float(distances):
        return distances.astype(np.int64)
    # + 0.0 turns -0.0 into 0.0, which the float order holds equal.
    bits = (distances.astype(np.float32) + np.float32(0)).view(np.uint32).astype(np.int64)
    return np.where(bits & _SIGN, ~bits & _LOW32, bits | _SIGN)


def _from_ordinals(ordinals: np.ndarray, is_float: bool) -> np.ndarray:
    """:func:`_ordinals` undone: int32 Hamming counts or the very float32s that went in."""
    if not is_float:
        return ordinals.astype(np.int32)
    bits = np.where(ordinals & _SIGN, ordinals ^ _SIGN, ~ordinals & _LOW32)
    return bits.astype(np.uint32).view(np.float32)


def _dist_bits(distances: np.ndarray, valid: np.ndarray) -> int:
    if _is_float(distances):
        return 32
    return max(int(distances[valid].max(initial=0)).bit_length(), 1)


def sort_rows(distances: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort each row by ``(distance, key)``, pads last, and keep ``k`` columns (padding if short).

    Returns ``(distances, keys int64, source)``, distances int32 for integer input and float32
    for float input: ``source[i, j]`` is the input column the entry came from, ``-1`` for pads.
    """
    valid = keys >= 0
    if _is_float(distances):
        # Stable on (distance, key), then column; pads last whatever distance sits beside them.
        top = np.iinfo(np.int64).max
        order = np.lexsort((np.where(valid, keys, top), np.where(valid, _ordinals(distances), top)), axis=1)
        order = order[:, :k].astype(np.int64)
        out_type = np.float32
    else:
        span = int(keys.max(initial=0)) + 1
        # One int64 sort key per entry (distance major, key minor); pads sort after everything.
        order_key = np.where(valid, distances.astype(np.int64) * span + keys, np.iinfo(np.int64).max)
        order = np.argsort(order_key, axis=1, kind="stable")[:, :k].astype(np.int64)
        out_type = np.int32
    pad = ~np.take_along_axis(valid, order, axis=1)
    out_d = np.take_along_axis(distances, order, axis=1).astype(out_type)
    out_k = np.take_along_axis(keys, order, axis=1).astype(np.int64)
    out_d[pad], out_k[pad], order[pad] = PAD, PAD, PAD
    return _pad_to(k, out_d, out_k, order)


def _pad_to(k: int, distances: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """``distances`` (int32 or float32) and int64 ``columns`` of the same rows, padded with PAD to
    ``k`` columns where there were fewer candidates than ``k`` in total."""
    short = k - distances.shape[1]
    if short <= 0:
        return (distances, *columns)
    fill = np.full((len(distances), short), PAD, dtype=np.int64)
    return (np.hstack([distances, fill.astype(distances.dtype)]), *(np.hstack([c, fill]) for c in columns))


def _sorted_top(distances: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sort_rows` without ``source``: each row's (distance, key) pairs packed into one int64
    (distance above the key's bits) and the values sorted in place, which avoids an argsort and
    four gathers that a served sub-linear search would pay on every query. Falls back to
    :func:`sort_rows` where a float distance and the key do not fit in 63 bits together."""
    shift = max(int(keys.max(initial=0)).bit_length(), 1)
    is_float = _is_float(distances)
    if is_float and 32 + shift > 63:
        return sort_rows(distances, keys, k)[:2]
    packed = (_ordinals(distances) << shift) | np.maximum(keys, 0)
    pad = keys < 0
    packed[pad] = np.iinfo(np.int64).max  # pads last
    packed.sort(axis=1)
    packed = packed[:, :k]
    pad = packed == np.iinfo(np.int64).max
    out_d = _from_ordinals(packed >> shift, is_float)
    out_k = packed & ((1 << shift) - 1)
    out_d[pad], out_k[pad] = PAD, PAD
    return _pad_to(k, out_d, out_k)


def is_exact(index) -> bool:
    """Whether ``index`` returns the exact top-k with ties by position (see the module docstring)."""
    return (
        type(index) is faiss.IndexBinaryFlat
        and bool(index.use_heap)
        and int(index.approx_topk_mode) == int(faiss.EXACT_TOPK)
    )


def topk(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest items per query, sorted by ``(distance, position)``: ``(distances, positions int64)``.

    A binary index takes packed uint8 codes and answers int32 Hamming distances; any other
    (``IndexPQ``, ``IndexIVFPQ``) takes float32 vectors and answers float32 distances.
    Exact for :func:`is_exact` indexes and ``IndexPQ`` (ties at the k-th distance go to the
    lowest positions); for IVF, the k nearest of the probed lists, ties at the k-th distance
    cut in scan order.
    """
    binary = isinstance(index, faiss.IndexBinary)
    queries = np.ascontiguousarray(queries, dtype=np.uint8 if binary else np.float32)
    nq, n = len(queries), int(index.ntotal)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if nq == 0 or n == 0:
        return np.full((nq, k), PAD, dtype=np.int32 if binary else np.float32), np.full((nq, k), PAD, dtype=np.int64)
    dist, pos = index.search(queries, min(k, n))
    if dist.shape[1] == k and is_exact(index):  # already in (distance, position) order, nothing to pad
        return dist.astype(np.int32, copy=False), pos.astype(np.int64, copy=False)
    return _sorted_top(dist, pos, k)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge per-shard ``(distances, global keys)`` of the same queries into the top-k by ``(distance, key)``.

    Returns ``(distances, keys, source)`` as :func:`sort_rows` does, ``source`` indexing the
    parts' columns laid side by side (use it to pick the ids returned beside the keys).
    Exact when each part is its shard's exact top-k under the same order.
    """
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    return _merged_top(np.hstack([d for d, _ in parts]), np.hstack([keys for _, keys in parts]), k)


def _merged_top(distances: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`sort_rows` by :func:`_sorted_top`'s packed-value sort, the column carried in the
    value's low bits for ``source``: the merge of every shard deployment's top-k runs on each
    served request, so it avoids the argsort and gathers too. Falls back to :func:`sort_rows`
    where distance, key and column do not fit in 63 bits together."""
    valid = keys >= 0
    col_bits = max(int(keys.shape[1] - 1).bit_length(), 1)
    key_bits = max(int(keys.max(initial=0)).bit_length(), 1)
    if col_bits + key_bits + _dist_bits(distances, valid) > 63:
        return sort_rows(distances, keys, k)
    cols = np.arange(keys.shape[1], dtype=np.int64)
    packed = (_ordinals(distances) << (key_bits + col_bits)) | (np.maximum(keys, 0) << col_bits) | cols
    packed[~valid] = np.iinfo(np.int64).max  # pads last, whatever distance faiss put beside them
    packed.sort(axis=1)
    packed = packed[:, :k]
    pad = packed == np.iinfo(np.int64).max
    out_d = _from_ordinals(packed >> (key_bits + col_bits), _is_float(distances))
    out_k = (packed >> col_bits) & ((1 << key_bits) - 1)
    source = packed & ((1 << col_bits) - 1)
    out_d[pad], out_k[pad], source[pad] = PAD, PAD, PAD
    return _pad_to(k, out_d, out_k, source)
