"""The index set artifact: faiss binary index shards over one code set, committed by a manifest.

An index set is a directory (local or ``s3://``)::

    index_manifest.json                 the commit, written last; readers go only through it
    shards/shard-00000.faissindex       faiss.serialize_index_binary bytes
    shards/shard-00000.ids.parquet      one string column ``id``: faiss position -> code-set id

Every shard's bytes are checked against the SHA-256 in the manifest before faiss or Parquet
reads them: faiss deserialises whatever it is given, so nothing unverified reaches it.

Order invariant: the builder sorts the code set's ids and cuts them into contiguous runs, so
ids ascend within a shard and from one shard to the next. An item's global key (its shard's
offset plus its faiss position) therefore orders items exactly as their ids do, and a
sharded flat top-k merged by ``(distance, key)`` equals one flat search with ties broken by id.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import io
import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayhash.codespec import binary as codes_lib
from rayhash import storage
from rayhash.index.search import PAD, topk

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "rayhash.indexset"
MANIFEST_FILE = "index_manifest.json"
INDEX_KINDS = ("flat", "ivf")
ID_DTYPE = np.dtypes.StringDType()  # variable-width, 16 bytes per short id, sortable and searchable


@dataclass(frozen=True)
class ShardEntry:
    index_path: str  # relative to the index-set directory
    index_sha256: str
    ids_path: str
    ids_sha256: str
    rows: int


@dataclass(frozen=True)
class IndexSetManifest:
    uri: str  # the index-set directory
    nbits: int
    kind: str  # "flat" | "ivf"
    params: dict  # index parameters (nlist, nprobe, ...)
    codeset_uri: str
    codeset_manifest_sha256: str
    checkpoint_uri: str  # the model that wrote the codes, copied from the code set
    checkpoint_sha256: str
    shards: tuple[ShardEntry, ...]
    items: int
    created_at: str = ""
    sha256: str = ""  # of the manifest file's bytes
    format_version: int = FORMAT_VERSION

    @property
    def offsets(self) -> list[int]:
        """Global key of each shard's first item."""
        return np.concatenate([[0], np.cumsum([s.rows for s in self.shards])])[:-1].astype(int).tolist()


class IndexShard:
    """One loaded shard: a faiss binary index and the code-set id of each faiss position."""

    def __init__(self, index, ids: pa.Array | Sequence[str], *, offset: int, nbits: int, number: int = 0):
        # Arrow strings: compact like numpy's StringDType, but a gathered top-k turns into
        # Python strs in a third of the time (0.35 against 0.9 ms for 64 x 100 ids), which is
        # the serving cost that grows with every result.
        ids = ids if isinstance(ids, pa.Array) else pa.array(np.asarray(ids, dtype=object).tolist(), pa.large_string())
        if index.ntotal != len(ids):
            raise ValueError(f"shard {number}: the index holds {index.ntotal} codes but {len(ids)} ids")
        if index.d != nbits:
            raise ValueError(f"shard {number}: the index holds {index.d}-bit codes, the manifest says {nbits}")
        self.index, self.ids, self.offset, self.nbits, self.number = index, ids, offset, nbits, number

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _check(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.nbits // 8:
            raise ValueError(f"queries must be packed uint8 codes of shape (q, {self.nbits // 8}) for this "
                             f"{self.nbits}-bit index, got {codes.dtype} {codes.shape}")  # fmt: skip
        return np.ascontiguousarray(codes)

    def search(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query by (distance, id): ``(distances int32 (q, k), ids object (q, k))``, pads ``-1`` / None."""
        dist, pos = topk(self.index, self._check(codes), k)
        return dist, self.ids_of(pos)

    def search_keys(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k as ``(distances, global keys)``: the keys are what :func:`rayhash.index.search.merge_topk`
        orders ties by across shards (offset + position, in id order by the module's invariant).
        No ids: callers look up only the ids they answer with, after the merge."""
        dist, pos = topk(self.index, self._check(codes), k)
        return dist, np.where(pos >= 0, pos + self.offset, PAD)

    def range_search(self, codes: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every item within Hamming distance ``radius`` (inclusive) of each query, sorted by (distance, id)."""
        lims, dist, pos = self.index.range_search(self._check(codes), int(radius) + 1)  # faiss: exclusive
        out = []
        for lo, hi in zip(lims[:-1], lims[1:]):
            order = np.lexsort((pos[lo:hi], dist[lo:hi]))
            out.append((dist[lo:hi][order].astype(np.int32), self.ids_of(pos[lo:hi][order])))
        return out

    def ids_of(self, positions: np.ndarray) -> np.ndarray:
        """Code-set ids (object array) at faiss ``positions``; ``-1`` gives None."""
        return ids_of(self.ids, positions)

    def position_of(self, item_id: str) -> int | None:
        """The faiss position of ``item_id`` in this shard, or None when it is elsewhere."""
        i = bisect.bisect_left(self.ids, item_id, key=lambda s: s.as_py())  # ids ascend: the module's invariant
        return i if i < len(self.ids) and self.ids[i].as_py() == item_id else None

    def code_of(self, item_id: str) -> np.ndarray | None:
        """The packed code of ``item_id`` (uint8 ``(nbits/8,)``), or None when it is not here."""
        i = self.position_of(item_id)
        return None if i is None else np.asarray(self.index.reconstruct(i), dtype=np.uint8)


# --- writing ---------------------------------------------------------------------------------


def _ids_parquet(ids: np.ndarray) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array(np.asarray(ids, dtype=object), pa.string())}), buf, compression="zstd")
    return buf.getvalue()


def write_index_set(uri: str, shards: Sequence[tuple[Any, np.ndarray]], *, nbits: int, kind: str, params: dict,
                    codeset_uri: str, codeset_manifest_sha256: str, checkpoint_uri: str,
                    checkpoint_sha256: str) -> IndexSetManifest:
    """Write ``(faiss index, ids)`` shards and commit them with ``index_manifest.json`` (written last).

    The caller keeps the order invariant (module doc): ids sorted within and across shards.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {kind!r} is not one of {INDEX_KINDS}")
    entries = []
    for i, (index, ids) in enumerate(shards):
        if index.ntotal != len(ids):
            raise ValueError(f"shard {i}: {index.ntotal} codes in the index but {len(ids)} ids")
        index_bytes = faiss.serialize_index_binary(index).tobytes()
        ids_bytes = _ids_parquet(ids)
        entry = ShardEntry(index_path=f"shards/shard-{i:05d}.faissindex", index_sha256=storage.sha256_bytes(index_bytes),
                           ids_path=f"shards/shard-{i:05d}.ids.parquet", ids_sha256=storage.sha256_bytes(ids_bytes),
                           rows=int(index.ntotal))  # fmt: skip
        storage.write_bytes_atomic(storage.join(uri, entry.index_path), index_bytes)
        storage.write_bytes_atomic(storage.join(uri, entry.ids_path), ids_bytes)
        entries.append(entry)
    body = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "codeset": {"uri": codeset_uri, "manifest_sha256": codeset_manifest_sha256},
        "checkpoint": {"uri": checkpoint_uri, "sha256": checkpoint_sha256},
        "nbits": int(nbits),
        "index": {"kind": kind, "params": params},
        "shards": [dataclasses.asdict(e) for e in entries],
        "counts": {"items": sum(e.rows for e in entries)},
    }
    text = json.dumps(body, indent=1) + "\n"
    storage.write_text_atomic(storage.join(uri, MANIFEST_FILE), text)
    logger.info("committed index set %s: %s, %d items in %d shards", uri, kind, body["counts"]["items"], len(entries))
    return _parse(uri, text.encode("utf-8"))


# --- reading ---------------------------------------------------------------------------------


def _parse(uri: str, data: bytes) -> IndexSetManifest:
    body = json.loads(data)
    if body.get("kind") != KIND:
        raise ValueError(f"{uri}: manifest kind is {body.get('kind')!r}, not {KIND!r}")
    if body.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{uri}: index set format {body.get('format_version')!r}; this rayhash reads {FORMAT_VERSION}")
    shards = tuple(ShardEntry(**s) for s in body["shards"])
    if sum(s.rows for s in shards) != body["counts"]["items"]:
        raise ValueError(f"{uri}: shard rows add up to {sum(s.rows for s in shards)}, counts say {body['counts']['items']}")
    return IndexSetManifest(
        uri=uri, nbits=codes_lib.check_nbits(int(body["nbits"])), kind=body["index"]["kind"],
        params=body["index"]["params"], codeset_uri=body["codeset"]["uri"],
        codeset_manifest_sha256=body["codeset"]["manifest_sha256"], checkpoint_uri=body["checkpoint"]["uri"],
        checkpoint_sha256=body["checkpoint"]["sha256"], shards=shards, items=int(body["counts"]["items"]),
        created_at=body.get("created_at", ""), sha256=storage.sha256_bytes(data), format_version=body["format_version"],
    )  # fmt: skip


def read_index_manifest(uri: str) -> IndexSetManifest:
    """The committed manifest of an index set (``uri`` is its directory or its manifest file)."""
    uri = str(uri).rstrip("/")
    if uri.endswith(MANIFEST_FILE):
        uri = uri[: -len(MANIFEST_FILE)].rstrip("/")
    manifest_uri = storage.join(uri, MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(f"no {MANIFEST_FILE} at {uri}: the index set was never committed. "
                                "Build it with `python jobs/build_index.py --codeset=... --out=...`.")  # fmt: skip
    return _parse(uri, storage.read_bytes(manifest_uri))


def load_shard(manifest: IndexSetManifest | str, i: int, nprobe: int | None = None) -> IndexShard:
    """Verify shard ``i``'s SHA-256s, then deserialise it; ``nprobe`` overrides the built one (IVF)."""
    m = manifest if isinstance(manifest, IndexSetManifest) else read_index_manifest(manifest)
    if not 0 <= i < len(m.shards):
        raise IndexError(f"{m.uri} has {len(m.shards)} shards (0..{len(m.shards) - 1}), not shard {i}")
    entry = m.shards[i]
    index_bytes = storage.read_verified(storage.join(m.uri, entry.index_path), entry.index_sha256)
    ids_bytes = storage.read_verified(storage.join(m.uri, entry.ids_path), entry.ids_sha256)
    index = faiss.deserialize_index_binary(np.frombuffer(index_bytes, dtype=np.uint8))
    ids = pq.read_table(pa.BufferReader(ids_bytes))["id"].combine_chunks().cast(pa.large_string())
    if len(ids) > 1 and not pc.all(pc.greater(ids[1:], ids[:-1])).as_py():
        raise ValueError(f"{m.uri} shard {i}: ids are not strictly ascending; this index set was not written by rayhash")
    if m.kind == "ivf":
        index.make_direct_map()  # lets code_of() reconstruct an item's code by position
        if nprobe is not None:
            index.nprobe = int(nprobe)
    elif nprobe is not None:
        raise ValueError(f"nprobe applies to ivf indexes; {m.uri} is {m.kind!r}")
    return IndexShard(index, ids, offset=m.offsets[i], nbits=m.nbits, number=i)


def take_ids(ids: pa.Array, positions: np.ndarray) -> pa.Array:
    """``ids`` (strings, or :func:`fixed_width_ids`) at flat ``positions`` as strings, null where a
    position is ``-1`` (a pad): no Python string per id."""
    positions = np.asarray(positions, dtype=np.int64)
    pads = positions < 0
    # A mask only where there are pads: Arrow's take is slower with one (100k of 1M fixed-width
    # ids, scratch timings on a loaded machine: 2.9 against 1.2 ms, 5.3 against 4.9).
    found = ids.take(pa.array(positions, mask=pads) if pads.any() else pa.array(positions))
    if not pa.types.is_fixed_size_binary(ids.type):
        return found
    # The gathered bytes are already laid out as strings of one width: give them offsets instead
    # of casting twice (binary, then large_string), which copied them twice (the casts were 1.8%
    # of a served 1M IVF search's samples, the gather with them 7.1%).
    width = ids.type.byte_width
    offsets = np.arange(0, (len(positions) + 1) * width, width, dtype=np.int64)
    validity, data = found.buffers()  # a take's result starts at offset 0
    return pa.LargeStringArray.from_buffers(len(found), pa.py_buffer(offsets), data, validity, found.null_count)


def fixed_width_ids(ids: pa.Array) -> pa.Array:
    """A fixed-width copy of string ``ids`` when they all have one byte length (zero-padded
    numbers, hashes, UUIDs), else ``ids`` itself: what :func:`take_ids` gathers fastest. Random
    ids are read without an offsets lookup: 100k of 1M 9-byte ids in 0.8 ms against 3.6 ms
    (take and cast back to strings); a top-k answer gathers k ids per query."""
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


def shared_ids(shards: Sequence[IndexShard]) -> pa.Array:
    """Every id of consecutive ``shards`` in one array, indexed by global key, each shard's ids
    becoming a slice of it (no second copy): one ``take`` finds the ids of a merged top-k,
    where a take across chunks costs 15x more."""
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
            raise ValueError(f"shard {s.number} starts at key {s.offset}, not {ahead}: shards must be consecutive, from key 0")
        ahead += len(s)


def merge_shards(shards: Sequence[IndexShard]) -> IndexShard:
    """One IVF index over consecutive loaded IVF shards, for a process that holds them all.

    The shards were built from one trained template (:func:`rayhash.index.build.ivf_template`),
    so they hand their inverted lists over to the first, which then probes the very lists the
    shards would, with one coarse quantizer and one top-k heap per query instead of one per
    shard (at 1M codes in 2 shards, the repeats cost 1.6x the faiss time of one search). A
    position in the result is the item's global key, keeping the order invariant. The input
    shards are consumed: use only the returned one. (Flat shards have nothing to share: searched
    apart, on a thread each, they answer one query sooner, since faiss splits a flat search
    over queries only.)
    """
    if not all(isinstance(s.index, faiss.IndexBinaryIVF) for s in shards):
        raise ValueError("merge_shards merges IVF shards; search flat shards apart and merge their top-k")
    shards = sorted(shards, key=lambda s: s.offset)
    ids = shared_ids(shards)  # checks they are consecutive
    first = shards[0].index
    quantizer = faiss.serialize_index_binary(first.quantizer)
    for s in shards[1:]:
        if not np.array_equal(faiss.serialize_index_binary(s.index.quantizer), quantizer):
            raise ValueError(f"shard {s.number} has its own coarse quantizer: only shards of one template merge")
    # faiss will not carry a direct map through a merge: drop it, then rebuild it over the global keys.
    for s in shards:
        s.index.set_direct_map_type(faiss.DirectMap.NoMap)
    for s in shards[1:]:
        first.merge_from(s.index, s.offset)
    first.make_direct_map()
    return IndexShard(first, ids, offset=0, nbits=shards[0].nbits, number=shards[0].number)
