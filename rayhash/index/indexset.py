"""The index set artifact: faiss index shards over one code set, committed by a manifest.

Binary code sets give ``IndexBinaryFlat`` / ``IndexBinaryIVF`` shards; pq code sets give
``IndexPQ`` / ``IndexIVFPQ`` shards holding the code set's codebooks, and the manifest records
the pq spec (``code_spec``) with the SHA-256 of those codebooks, which every loaded shard is
checked against.

An index set is a directory (local or ``s3://``)::

    index_manifest.json                 the commit, written last; readers go only through it
    codebooks.npy                       pq only: the codebooks (SHA-256 in the manifest), for
                                        whoever turns codes into queries without loading a shard
    shards/shard-00000.faissindex       faiss.serialize_index_binary (pq: serialize_index) bytes
    shards/shard-00000.ids.parquet      one string column ``id``: faiss position -> code-set id

Every shard's bytes are checked against the SHA-256 in the manifest before faiss or Parquet
reads them: faiss deserialises whatever it is given, so nothing unverified reaches it.

Order invariant: the builder sorts the code set's ids and cuts them into contiguous runs, so
ids ascend within a shard and from one shard to the next. An item's global key (its shard's
offset plus its faiss position) therefore orders items exactly as their ids do, and a
sharded flat top-k merged by ``(distance, key)`` equals one flat search with ties broken by id.

This module reads and writes the artifact; :func:`load_shard` hands back a
:class:`rayhash.index.shards.IndexShard`, which searches it.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayhash import storage
from rayhash.codespec import binary as codes_lib
from rayhash.codespec import pq as pq_lib
from rayhash.index.shards import IndexShard

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "rayhash.indexset"
MANIFEST_FILE = "index_manifest.json"
CODEBOOKS_FILE = "codebooks.npy"
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
    code_kind: str = "binary"  # a manifest without one indexes binary codes
    code_spec: dict = field(default_factory=dict)  # pq: PQSpec.to_dict() and "codebooks_sha256"

    @property
    def offsets(self) -> list[int]:
        """Global key of each shard's first item."""
        return np.concatenate([[0], np.cumsum([s.rows for s in self.shards])])[:-1].astype(int).tolist()


# --- writing ---------------------------------------------------------------------------------


def _ids_parquet(ids: np.ndarray) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": pa.array(np.asarray(ids, dtype=object), pa.string())}), buf, compression="zstd")
    return buf.getvalue()


def write_index_set(
    uri: str,
    shards: Sequence[tuple[Any, np.ndarray]],
    *,
    nbits: int,
    kind: str,
    params: dict,
    codeset_uri: str,
    codeset_manifest_sha256: str,
    checkpoint_uri: str,
    checkpoint_sha256: str,
    spec: pq_lib.PQSpec | None = None,
) -> IndexSetManifest:
    """Write ``(faiss index, ids)`` shards and commit them with ``index_manifest.json`` (written last);
    ``spec`` for PQ indexes (built with its codebooks by :func:`rayhash.index.pq.build_pq_shards`).

    The caller keeps the order invariant (module doc): ids sorted within and across shards.
    """
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind {kind!r} is not one of {INDEX_KINDS}")
    serialize = faiss.serialize_index_binary if spec is None else faiss.serialize_index
    entries = []
    for i, (index, ids) in enumerate(shards):
        if index.ntotal != len(ids):
            raise ValueError(f"shard {i}: {index.ntotal} codes in the index but {len(ids)} ids")
        if spec is not None:
            _check_codebooks(_index_spec(index), spec, f"shard {i}")
        index_bytes = serialize(index).tobytes()
        ids_bytes = _ids_parquet(ids)
        entry = ShardEntry(
            index_path=f"shards/shard-{i:05d}.faissindex",
            index_sha256=storage.sha256_bytes(index_bytes),
            ids_path=f"shards/shard-{i:05d}.ids.parquet",
            ids_sha256=storage.sha256_bytes(ids_bytes),
            rows=int(index.ntotal),
        )
        storage.write_bytes_atomic(storage.join(uri, entry.index_path), index_bytes)
        storage.write_bytes_atomic(storage.join(uri, entry.ids_path), ids_bytes)
        entries.append(entry)
    if spec is not None:  # its SHA-256 is the code_spec's codebooks_sha256: the same bytes as the code set's file
        pq_lib.save_codebooks(storage.join(uri, CODEBOOKS_FILE), spec)
    body = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "codeset": {"uri": codeset_uri, "manifest_sha256": codeset_manifest_sha256},
        "checkpoint": {"uri": checkpoint_uri, "sha256": checkpoint_sha256},
        "nbits": int(nbits),
        **({} if spec is None else {"code_kind": pq_lib.KIND, "code_spec": _code_spec(spec)}),
        "index": {"kind": kind, "params": params},
        "shards": [dataclasses.asdict(e) for e in entries],
        "counts": {"items": sum(e.rows for e in entries)},
    }
    text = json.dumps(body, indent=1) + "\n"
    storage.write_text_atomic(storage.join(uri, MANIFEST_FILE), text)
    logger.info("committed index set %s: %s, %d items in %d shards", uri, kind, body["counts"]["items"], len(entries))
    return _parse(uri, text.encode("utf-8"))


def _code_spec(spec: pq_lib.PQSpec) -> dict:
    return {**spec.to_dict(), "codebooks_sha256": storage.sha256_bytes(pq_lib.codebooks_bytes(spec))}


def _index_spec(index) -> pq_lib.PQSpec:
    """The spec a faiss PQ index holds: its quantizer's codebooks."""
    q = index.pq
    return pq_lib.PQSpec.from_codebooks(faiss.vector_to_array(q.centroids).reshape(q.M, q.ksub, q.dsub))


def _check_codebooks(got: pq_lib.PQSpec, want: pq_lib.PQSpec | dict, where: str) -> None:
    want = want if isinstance(want, dict) else _code_spec(want)
    if _code_spec(got) != want:
        raise ValueError(f"{where}: the index's codebooks are not the spec's ({_code_spec(got)} vs {want})")


# --- reading ---------------------------------------------------------------------------------


def _parse(uri: str, data: bytes) -> IndexSetManifest:
    body = json.loads(data)
    if body.get("kind") != KIND:
        raise ValueError(f"{uri}: manifest kind is {body.get('kind')!r}, not {KIND!r}")
    if body.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{uri}: index set format {body.get('format_version')!r}; this rayhash reads {FORMAT_VERSION}")
    shards = tuple(ShardEntry(**s) for s in body["shards"])
    for s in shards:
        storage.check_relative(s.index_path, f"{uri} manifest")
        storage.check_relative(s.ids_path, f"{uri} manifest")
    if sum(s.rows for s in shards) != body["counts"]["items"]:
        raise ValueError(
            f"{uri}: shard rows add up to {sum(s.rows for s in shards)}, counts say {body['counts']['items']}"
        )
    return IndexSetManifest(
        uri=uri,
        nbits=int(body["nbits"]) if "code_spec" in body else codes_lib.check_nbits(int(body["nbits"])),
        kind=body["index"]["kind"],
        params=body["index"]["params"],
        codeset_uri=body["codeset"]["uri"],
        codeset_manifest_sha256=body["codeset"]["manifest_sha256"],
        checkpoint_uri=body["checkpoint"]["uri"],
        checkpoint_sha256=body["checkpoint"]["sha256"],
        shards=shards,
        items=int(body["counts"]["items"]),
        created_at=body.get("created_at", ""),
        sha256=storage.sha256_bytes(data),
        format_version=body["format_version"],
        code_kind=body.get("code_kind", "binary"),
        code_spec=body.get("code_spec", {}),
    )


def read_index_manifest(uri: str, sha256: str | None = None) -> IndexSetManifest:
    """The committed manifest of an index set (``uri`` is its directory or its manifest file);
    with ``sha256``, only that version of it (:class:`rayhash.storage.ChecksumError` otherwise)."""
    uri = str(uri).rstrip("/")
    if uri.endswith(MANIFEST_FILE):
        uri = uri[: -len(MANIFEST_FILE)].rstrip("/")
    manifest_uri = storage.join(uri, MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(
            f"no {MANIFEST_FILE} at {uri}: the index set was never committed. "
            "Build it with `python jobs/build_index.py --codeset=... --out=...`."
        )
    data = storage.read_bytes(manifest_uri)
    if sha256 is not None and storage.sha256_bytes(data) != sha256:
        raise storage.ChecksumError(
            f"{manifest_uri}: SHA-256 is {storage.sha256_bytes(data)}, but {sha256} is pinned: this is "
            "not the index set version asked for (rebuilt or replaced since); pin the new one to serve it"
        )
    return _parse(uri, data)


def read_spec(manifest: IndexSetManifest | str) -> pq_lib.PQSpec | None:
    """The pq spec of a pq index set, its codebooks read only once their SHA-256 matches the
    manifest's (:class:`rayhash.storage.ChecksumError` otherwise); None for binary codes."""
    m = manifest if isinstance(manifest, IndexSetManifest) else read_index_manifest(manifest)
    if m.code_kind != pq_lib.KIND:
        return None
    spec = {k: v for k, v in m.code_spec.items() if k != "codebooks_sha256"}
    return pq_lib.load_codebooks(storage.join(m.uri, CODEBOOKS_FILE), m.code_spec["codebooks_sha256"], spec)


def load_shard(manifest: IndexSetManifest | str, i: int, nprobe: int | None = None) -> IndexShard:
    """Verify shard ``i``'s SHA-256s, then deserialise it; ``nprobe`` overrides the built one (IVF)."""
    m = manifest if isinstance(manifest, IndexSetManifest) else read_index_manifest(manifest)
    if not 0 <= i < len(m.shards):
        raise IndexError(f"{m.uri} has {len(m.shards)} shards (0..{len(m.shards) - 1}), not shard {i}")
    entry = m.shards[i]
    index_bytes = storage.read_verified(storage.join(m.uri, entry.index_path), entry.index_sha256)
    ids_bytes = storage.read_verified(storage.join(m.uri, entry.ids_path), entry.ids_sha256)
    if m.code_kind == pq_lib.KIND:
        index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
        spec = _index_spec(index)
        _check_codebooks(spec, m.code_spec, f"{m.uri} shard {i}")
    else:
        index, spec = faiss.deserialize_index_binary(np.frombuffer(index_bytes, dtype=np.uint8)), None
    ids = pq.read_table(pa.BufferReader(ids_bytes))["id"].combine_chunks().cast(pa.large_string())
    if len(ids) > 1 and not pc.all(pc.greater(ids[1:], ids[:-1])).as_py():
        raise ValueError(
            f"{m.uri} shard {i}: ids are not strictly ascending; this index set was not written by rayhash"
        )
    if m.kind == "ivf":
        index.make_direct_map()  # lets code_of() reconstruct an item's code by position
        if nprobe is not None:
            index.nprobe = int(nprobe)
    elif nprobe is not None:
        raise ValueError(f"nprobe applies to ivf indexes; {m.uri} is {m.kind!r}")
    return IndexShard(index, ids, offset=m.offsets[i], nbits=m.nbits, number=i, spec=spec)
