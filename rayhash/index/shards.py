"""Loaded index shards: search by ``(distance, global key)``, ids by position, and the merge of
the IVF shards one process holds.

A shard's ids ascend within it and from one shard to the next (the order invariant of
:mod:`rayhash.index.indexset`), so a global key (the shard's offset plus the faiss position)
orders items exactly as their ids do. Ids are Arrow strings: compact like numpy's
``StringDType``, and a gathered top-k turns into Python strings without a per-id lookup, which
is the serving cost that grows with every result.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayhash.codespec import pq as pq_lib
from rayhash.index.search import PAD, topk


class IndexShard:
    """One loaded shard: a faiss index and the code-set id of each faiss position.

    Binary shards take packed codes and answer Hamming distances (int32). PQ shards (``spec``
    given) take continuous queries ``(q, dim)``, scored by asymmetric distance, or uint8 codes
    ``(q, M)``, scored symmetrically through the codebooks (by their reconstructions); both
    answer squared L2 distances (float32).
    """

    def __init__(
        self,
        index,
        ids: pa.Array | Sequence[str],
        *,
        offset: int,
        nbits: int,
        number: int = 0,
        spec: pq_lib.PQSpec | None = None,
    ):
        ids = ids if isinstance(ids, pa.Array) else pa.array(np.asarray(ids, dtype=object).tolist(), pa.large_string())
        if index.ntotal != len(ids):
            raise ValueError(f"shard {number}: the index holds {index.ntotal} codes but {len(ids)} ids")
        if spec is None and index.d != nbits:
            raise ValueError(f"shard {number}: the index holds {index.d}-bit codes, the manifest says {nbits}")
        if spec is not None and index.d != spec.dim:
            raise ValueError(f"shard {number}: the index holds {index.d}-dim vectors, the pq spec {spec.dim}")
        self.index, self.ids, self.offset, self.nbits, self.number = index, ids, offset, nbits, number
        self.spec = spec

    @property
    def code_kind(self) -> str:
        return "binary" if self.spec is None else pq_lib.KIND

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _check(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if self.spec is not None:
            return self._check_pq(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.nbits // 8:
            raise ValueError(
                f"queries must be packed uint8 codes of shape (q, {self.nbits // 8}) for this "
                f"{self.nbits}-bit index, got {codes.dtype} {codes.shape}"
            )
        return np.ascontiguousarray(codes)

    def _check_pq(self, queries: np.ndarray) -> np.ndarray:
        spec = self.spec
        if queries.dtype == np.uint8 and queries.ndim == 2 and queries.shape[1] == spec.m:
            return np.ascontiguousarray(pq_lib.decode(spec, queries))  # ADC from a reconstruction is SDC
        if queries.dtype.kind == "f" and queries.ndim == 2 and queries.shape[1] == spec.dim:
            return np.ascontiguousarray(queries, dtype=np.float32)
        raise ValueError(
            f"queries must be float vectors of shape (q, {spec.dim}) or uint8 PQ codes of shape (q, {spec.m}) "
            f"for this index of M={spec.m} sub-spaces, got {queries.dtype} {queries.shape}"
        )

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query by (distance, id): ``(distances int32 or float32 (q, k), ids object (q, k))``,
        pads ``-1`` / None."""
        dist, pos = topk(self.index, self._check(codes), k)
        return dist, self.ids_of(pos)

    def search_keys(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k as ``(distances, global keys)``: the keys are what :func:`rayhash.index.search.merge_topk`
        orders ties by across shards (offset + position, in id order by the module's invariant).
        No ids: callers look up only the ids they answer with, after the merge."""
        dist, pos = topk(self.index, self._check(codes), k)
        return dist, np.where(pos >= 0, pos + self.offset, PAD)

    def range_search(self, codes: np.ndarray, radius: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every item within distance ``radius`` (inclusive: Hamming, or squared L2 for pq) of each
        query, sorted by (distance, id)."""
        if self.spec is None:
            bound, dtype = int(radius) + 1, np.int32  # faiss: exclusive
        else:
            bound, dtype = float(np.nextafter(np.float32(radius), np.float32(np.inf))), np.float32
        lims, dist, pos = self.index.range_search(self._check(codes), bound)
        out = []
        for lo, hi in zip(lims[:-1], lims[1:], strict=True):
            order = np.lexsort((pos[lo:hi], dist[lo:hi]))
            out.append((dist[lo:hi][order].astype(dtype), self.ids_of(pos[lo:hi][order])))
        return out

    def ids_of(self, positions: np.ndarray) -> np.ndarray:
        """Code-set ids (object array) at faiss ``positions``; ``-1`` gives None."""
        return ids_of(self.ids, positions)

    def position_of(self, item_id: str) -> int | None:
        """The faiss position of ``item_id`` in this shard, or None when it is elsewhere."""
        i = bisect.bisect_left(self.ids, item_id, key=lambda s: s.as_py())  # ids ascend: the module's invariant
        return i if i < len(self.ids) and self.ids[i].as_py() == item_id else None

    def code_of(self, item_id: str) -> np.ndarray | None:
        """The code of ``item_id`` (packed bits, uint8 ``(nbits/8,)``, or M centroid numbers for pq),
        or None when it is not here."""
        i = self.position_of(item_id)
        if i is None:
            return None
        if self.spec is not None:  # the code whose reconstruction faiss gives back
            return pq_lib.encode(self.spec, self.index.reconstruct(i)[None])[0]
        return np.asarray(self.index.reconstruct(i), dtype=np.uint8)


# --- ids by position -------------------------------------------------------------------------


def take_ids(ids: pa.Array, positions: np.ndarray) -> pa.Array:
    """``ids`` (strings, or :func:`fixed_width_ids`) at flat ``positions`` as strings, null where a
    position is ``-1`` (a pad): no Python string per id."""
    positions = np.asarray(positions, dtype=np.int64)
    pads = positions < 0
    # A mask only where there are pads: Arrow's take is slower with one.
    found = ids.take(pa.array(positions, mask=pads) if pads.any() else pa.array(positions))
    if not pa.types.is_fixed_size_binary(ids.type):
        return found
    # The gathered bytes are already laid out as strings of one width: give them offsets instead
    # of casting twice (binary, then large_string), which would copy them twice on the hot path.
    width = ids.type.byte_width
    offsets = np.arange(0, (len(positions) + 1) * width, width, dtype=np.int64)
    validity, data = found.buffers()  # a take's result starts at offset 0
    return pa.LargeStringArray.from_buffers(len(found), pa.py_buffer(offsets), data, validity, found.null_count)


def fixed_width_ids(ids: pa.Array) -> pa.Array:
    """A fixed-width copy of string ``ids`` when they all have one byte length (zero-padded
    numbers, hashes, UUIDs), else ``ids`` itself: what :func:`take_ids` gathers fastest, since
    random ids are then read without an offsets lookup, and a top-k answer gathers k ids per query."""
    if len(ids) == 0 or ids.null_count:
        return ids
    lengths = pc.binary_length(ids)
    width = pc.min_max(lengths)
    if width["min"] != width["max"] or width["min"].as_py() == 0:
        return ids
    return ids.cast(pa.binary()).cast(pa.binary(width["min"].as_py()))


def ids_of(ids: pa.Array, positions: np.ndarray) -> np.ndarray:
    """``ids`` at ``positions`` of any shape, as an object array with None for ``-1``."""
    positions = np.asarray(positions, dtype=np.int64)
    return np.array(take_ids(ids, positions.ravel()).to_pylist(), dtype=object).reshape(positions.shape)


# --- shards held together --------------------------------------------------------------------


def shared_ids(shards: Sequence[IndexShard]) -> pa.Array:
    """Every id of consecutive ``shards`` in one array, indexed by global key, each shard's ids
    becoming a slice of it (no second copy): one ``take`` finds the ids of a merged top-k,
    where a take across the chunks of a chunked array is far slower."""
    _check_consecutive(shards)
    if len(shards) == 1:
        return shards[0].ids
    ids = pa.concat_arrays([s.ids for s in shards])
    for s in shards:
        s.ids = ids.slice(s.offset, len(s))
    return ids


def _check_consecutive(shards: Sequence[IndexShard]) -> None:
    if not shards:
        raise ValueError("no shards given")
    ahead = 0
    for s in shards:
        if s.offset != ahead:
            raise ValueError(
                f"shard {s.number} starts at key {s.offset}, not {ahead}: shards must be consecutive, from key 0"
            )
        ahead += len(s)


def merge_shards(shards: Sequence[IndexShard]) -> IndexShard:
    """One IVF index over consecutive loaded IVF shards, for a process that holds them all.

    The shards were built from one trained template (:func:`rayhash.index.build.ivf_template`),
    so they hand their inverted lists over to the first, which then probes the very lists the
    shards would, with one coarse quantizer and one top-k heap per query instead of one per
    shard. A position in the result is the item's global key, keeping the order invariant. The
    input shards are consumed: use only the returned one. (Flat shards have nothing to share:
    searched apart, on a thread each, they answer one query sooner, since faiss splits a flat
    search over queries only.)
    """
    if not all(isinstance(s.index, (faiss.IndexBinaryIVF, faiss.IndexIVF)) for s in shards):
        raise ValueError("merge_shards merges IVF shards; search flat shards apart and merge their top-k")
    serialize = faiss.serialize_index if shards[0].spec is not None else faiss.serialize_index_binary
    shards = sorted(shards, key=lambda s: s.offset)
    ids = shared_ids(shards)  # checks they are consecutive
    first = shards[0].index
    quantizer = serialize(first.quantizer)
    for s in shards[1:]:
        if not np.array_equal(serialize(s.index.quantizer), quantizer):
            raise ValueError(f"shard {s.number} has its own coarse quantizer: only shards of one template merge")
    # faiss will not carry a direct map through a merge: drop it, then rebuild it over the global keys.
    for s in shards:
        s.index.set_direct_map_type(faiss.DirectMap.NoMap)
    for s in shards[1:]:
        first.merge_from(s.index, s.offset)
    first.make_direct_map()
    return IndexShard(first, ids, offset=0, nbits=shards[0].nbits, number=shards[0].number, spec=shards[0].spec)
