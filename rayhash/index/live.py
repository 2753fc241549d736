"""A shard with its live writes: the built index, plus an overlay of what the write log changed.

The overlay is small and rebuilt whole as records arrive: a flat index of the codes added or
replaced since the build (sorted by id), and the set of built positions that a delete or a
replacement took out. A search asks the built index for ``k`` plus the number taken out, drops
those, searches the overlay, and merges the two by ``(distance, id)``: exactly the top-k of a
fresh build over the same items, for flat indexes (IVF stays approximate over its own part).

Across shards the order invariant still holds: an id is written to the shard that owns its id
range (:func:`rayhash.index.writelog.owner`), so every id of shard i, built or written, lies
below every id of shard i + 1. A shard's answer is sorted by ``(distance, id)``, so its column
number orders ties as ids do within it; :func:`answer_keys` makes ``shard * k + column`` the
merge key, and :func:`rayhash.index.search.merge_topk` over those keys stays exact.

Pure (faiss, numpy, Arrow): the shard deployment holds one per replica, and the tests hold
them against a numpy model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from rayhash.codespec import binary as codes_lib
from rayhash.codespec import pq as pq_lib
from rayhash.index import pq as pq_index
from rayhash.index import writelog
from rayhash.index.search import PAD, merge_topk, topk
from rayhash.index.shards import IndexShard


@dataclass(frozen=True)
class _View:
    """What a search reads, swapped whole when records arrive."""

    overlay: object  # faiss flat index of the written codes, in id order
    overlay_ids: np.ndarray
    removed_sorted: np.ndarray  # built positions deleted or replaced
    added: dict
    removed: frozenset


class LiveShard:
    """``shard`` (a loaded :class:`IndexShard`) with the write log applied up to :attr:`seq`."""

    def __init__(self, shard: IndexShard):
        self.shard, self.seq = shard, 0
        self.added: dict[str, np.ndarray] = {}  # id -> code, written since the build
        self.removed: set[int] = set()  # built positions deleted or replaced
        self._view = _View(None, np.array([], dtype=object), np.array([], dtype=np.int64), {}, frozenset())

    @property
    def code_bytes(self) -> int:
        return self.shard.nbits // 8 if self.shard.spec is None else self.shard.spec.m

    def __len__(self) -> int:
        return len(self.shard) - len(self.removed) + len(self.added)

    def parse_code(self, text: str) -> np.ndarray:
        """A hex code of this index's kind and length as uint8 ``(code_bytes,)``; ValueError if not."""
        spec = self.shard.spec
        parsed = (
            codes_lib.from_hex([text], self.shard.nbits) if spec is None else pq_lib.from_hex([text], spec.m, spec.k)
        )
        return parsed[0]

    def apply(self, records: Iterable[writelog.Record]) -> int:
        """Apply ``records`` (in sequence order, each after :attr:`seq`) to this shard's overlay;
        ops owned by other shards are skipped. Returns the new :attr:`seq`."""
        changed, seq = False, self.seq
        for record in records:
            if record.seq <= seq:
                continue
            if record.seq != seq + 1:
                raise ValueError(f"write-log record {record.seq} follows {seq}: records must be applied in order")
            for op in record.ops:
                if op.shard != self.shard.number:
                    continue
                changed = True
                pos = self.shard.position_of(op.id)
                if pos is not None:
                    self.removed.add(pos)
                if op.op == "add":
                    self.added[op.id] = self.parse_code(op.code)
                else:
                    self.added.pop(op.id, None)
            seq = record.seq
        if changed:
            self._rebuild()
        # Only now: a search that finds seq far enough along skips the catch-up, so the view must be there.
        self.seq = seq
        return seq

    def _rebuild(self) -> None:
        ids = sorted(self.added)  # faiss positions in id order: ties then break by id
        codes = np.array([self.added[i] for i in ids], dtype=np.uint8).reshape(len(ids), self.code_bytes)
        if self.shard.spec is None:
            index = faiss.IndexBinaryFlat(self.shard.nbits)
            index.add(codes)
        else:
            index = pq_index.flat_index(self.shard.spec)
            pq_index.add_codes(index, self.shard.spec, codes)
        # One assignment: a search running in another thread sees the old overlay or the new, whole.
        self._view = _View(
            index,
            np.array(ids, dtype=object),
            np.array(sorted(self.removed), dtype=np.int64),
            dict(self.added),
            frozenset(self.removed),
        )

    def has(self, item_id: str) -> bool:
        return self.code_of(item_id) is not None

    def code_of(self, item_id: str) -> np.ndarray | None:
        view = self._view
        if item_id in view.added:
            return view.added[item_id]
        pos = self.shard.position_of(item_id)
        return None if pos is None or pos in view.removed else self.shard.code_of(item_id)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by (distance, id) over built and written items: ``(distances (q, k), ids object (q, k))``,
        pads ``-1`` / None. ``queries`` as :meth:`IndexShard.search` takes them."""
        queries, view = self.shard._check(queries), self._view
        if not view.removed and not view.added:
            return self.shard.search(queries, k)
        dist, pos = topk(self.shard.index, queries, k + len(view.removed))
        gone = np.isin(pos, view.removed_sorted) | (pos < 0)
        base_ids = self.shard.ids_of(np.where(gone, PAD, pos))
        base_dist = np.where(gone, PAD, dist)
        if view.added:
            odist, opos = topk(view.overlay, queries, k)
            over_ids = np.where(opos >= 0, view.overlay_ids[np.maximum(opos, 0)], None)
        else:
            odist, over_ids = base_dist[:, :0], base_ids[:, :0]
        return merge_by_id(np.hstack([base_dist, odist]), np.hstack([base_ids, over_ids]), k)


def merge_by_id(dist: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``(distance, id)`` pairs sorted, pads (id None) last, cut or padded to ``k``."""
    valid = np.not_equal(ids, None)
    flat = ids[valid].astype(str)
    # One rank per distinct id across all rows, in string order: a numeric sort key for lexsort.
    rank = np.full(ids.shape, np.iinfo(np.int64).max, dtype=np.int64)
    rank[valid] = np.unique(flat, return_inverse=True)[1] if len(flat) else []
    primary = dist.astype(np.float64 if dist.dtype.kind == "f" else np.int64)
    primary[~valid] = np.inf if dist.dtype.kind == "f" else np.iinfo(np.int64).max  # pads last
    order = np.lexsort((rank, primary))
    order = order[:, :k]
    out_d, out_i = np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)
    pad = np.take_along_axis(~valid, order, 1)
    out_d = np.where(pad, PAD, out_d).astype(dist.dtype)
    out_i = np.where(pad, None, out_i)
    if out_d.shape[1] < k:
        extra = k - out_d.shape[1]
        out_d = np.hstack([out_d, np.full((len(out_d), extra), PAD, dtype=out_d.dtype)])
        out_i = np.hstack([out_i, np.full((len(out_i), extra), None, dtype=object)])
    return out_d, out_i


def answer_keys(number: int, ids: np.ndarray, k: int) -> np.ndarray:
    """Merge keys for a shard's top-k answer sorted by (distance, id): ``number * k + column``,
    ``-1`` for pads (see the module doc for why this orders ties across shards as ids do)."""
    cols = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
    return np.where(np.not_equal(ids, None), number * k + cols, PAD)


def search_all(shards: list[LiveShard], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k over every shard, merged as the service merges them: ``(distances, ids object)``."""
    answers = [s.search(queries, k) for s in shards]
    parts = [(d, answer_keys(s.shard.number, i, k)) for s, (d, i) in zip(shards, answers, strict=True)]
    dist, _, source = merge_topk(parts, k)
    ids = np.hstack([i for _, i in answers])
    return dist, np.where(source >= 0, np.take_along_axis(ids, np.maximum(source, 0), 1), None)


def as_arrow_ids(ids: np.ndarray) -> pa.Array:
    return pa.array(ids.ravel().tolist(), pa.large_string())
