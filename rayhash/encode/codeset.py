"""The code set artifact: Parquet shards of codes, committed by a manifest written last.

The manifest records the kind of its codes (``code_kind``, from the checkpoint) and what a code
is (:mod:`rayhash.codespec`): ``binary`` codes by ``nbits`` alone; ``pq`` codes by their spec
(``code_spec``: M, K, d_sub) and a codebooks file beside the shards, whose SHA-256 the manifest
records and :func:`read_spec` checks before a byte of it is parsed.

A code set is a directory (local or ``s3://``)::

    manifest.json                        the commit; readers go only through it
    runs/<key>/codes-00000.parquet       id: string, code: fixed_size_binary[nbits/8 or M], source: string
    runs/<key>/codebooks.npy             pq only: float32 (M, K, d_sub), never unpickled
    runs/<key>/errors-00000.parquet      source, reason, message (inputs that were rejected)

Shards of one write live under their own ``runs/<key>/`` directory, so writing a new version
never touches the files an already committed manifest points to, and a crash before the
manifest leaves the previous code set as it was. The manifest records every shard's row count
and SHA-256; :func:`read_codes` checks the SHA-256 before Parquet parses a byte.

The shards are plain Parquet: any Arrow reader opens them without Ray or rayhash.

The writer, the manifest, the reader and the code-health figures stay in this one module, past
the usual size, on purpose: the format lives in one place, so every reader verifies it the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayhash import storage
from rayhash.codespec import binary as codes_lib
from rayhash.codespec import check_writable
from rayhash.codespec import pq as pq_lib

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "rayhash.codeset"
MANIFEST_FILE = "manifest.json"
RUNS_DIR = "runs"
ERRORS_SCHEMA = pa.schema([("source", pa.string()), ("reason", pa.string()), ("message", pa.string())])
_HEALTH_CHUNK = 1 << 18  # rows unpacked at a time when accumulating bit statistics
CODEBOOKS_FILE = "codebooks.npy"


def codes_schema(nbits: int) -> pa.Schema:
    return bytes_schema(codes_lib.check_nbits(nbits) // 8)


def bytes_schema(nbytes: int) -> pa.Schema:
    """The shard schema for codes of ``nbytes`` bytes (``nbits / 8`` binary, M for pq)."""
    return pa.schema([("id", pa.string()), ("code", pa.binary(int(nbytes))), ("source", pa.string())])


@dataclass(frozen=True)
class ShardInfo:
    """One Parquet file of a code set: ``path`` is relative to the code-set directory."""

    path: str
    rows: int
    sha256: str


@dataclass(frozen=True)
class CodeSetManifest:
    uri: str  # the code-set directory
    nbits: int
    checkpoint_uri: str
    checkpoint_sha256: str
    shards: tuple[ShardInfo, ...]
    errors: tuple[ShardInfo, ...]
    counts: dict  # inputs, encoded, rejected
    health: dict  # bit_balance, mean_abs_bit_correlation, max_items_per_code
    config: dict  # the resolved encode config
    created_at: str = ""
    sha256: str = ""  # of the manifest file's bytes: what an index set records as its source
    format_version: int = FORMAT_VERSION
    code_kind: str = "binary"  # a manifest without one was written when every code was binary
    # pq: PQSpec.to_dict() plus "codebooks": {"path", "sha256"}; empty for binary codes
    code_spec: dict = field(default_factory=dict)
    # Ray node id -> inputs its encoder actors took in the run that committed (chunks reused from
    # an earlier attempt are not counted): where the job ran. Empty when written outside Ray.
    inputs_by_node: dict = field(default_factory=dict)

    @property
    def code_bytes(self) -> int:
        """Bytes per code: ``nbits / 8`` for binary codes, M for pq codes."""
        return int(self.code_spec["m"]) if self.code_kind == pq_lib.KIND else self.nbits // 8

    def shard_uri(self, shard: ShardInfo) -> str:
        return storage.join(self.uri, shard.path)

    @property
    def num_codes(self) -> int:
        return sum(s.rows for s in self.shards)


# --- Arrow <-> numpy -------------------------------------------------------------------------


def codes_to_arrow(codes: np.ndarray, nbits: int) -> pa.FixedSizeBinaryArray:
    """Packed ``uint8 (n, nbits/8)`` -> ``fixed_size_binary[nbits/8]`` without a copy per row."""
    nbytes = codes_lib.check_nbits(nbits) // 8
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise ValueError(f"codes must be uint8 of shape (n, {nbytes}) for {nbits} bits, got {codes.shape}")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), len(codes), [None, pa.py_buffer(codes.tobytes())])


def codes_from_arrow(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A ``fixed_size_binary[n]`` column without nulls -> packed ``uint8 (rows, n)``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    if not pa.types.is_fixed_size_binary(column.type):
        raise ValueError(f"code column has type {column.type}; a code set stores fixed_size_binary[nbits/8]")
    if column.null_count:
        raise ValueError(f"code column has {column.null_count} nulls; every row of a code set has a code")
    nbytes = column.type.byte_width
    data = np.frombuffer(column.buffers()[1], dtype=np.uint8)
    start = column.offset * nbytes
    return data[start : start + len(column) * nbytes].reshape(len(column), nbytes)


def bytes_to_arrow(codes: np.ndarray, nbytes: int) -> pa.FixedSizeBinaryArray:
    """``uint8 (n, nbytes)`` -> ``fixed_size_binary[nbytes]`` without a copy per row."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise ValueError(f"codes must be uint8 of shape (n, {nbytes}), got {codes.shape}")
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), len(codes), [None, pa.py_buffer(codes.tobytes())])


def codes_table(
    ids: Sequence[str], codes: np.ndarray, sources: Sequence[str], nbits: int, *, nbytes: int | None = None
) -> pa.Table:
    """One shard's rows; ``nbytes`` (pq: M) replaces the width ``nbits / 8`` of binary codes."""
    if not len(ids) == len(codes) == len(sources):
        raise ValueError(f"ids, codes and sources differ in length: {len(ids)}, {len(codes)}, {len(sources)}")
    column = codes_to_arrow(codes, nbits) if nbytes is None else bytes_to_arrow(codes, nbytes)
    return pa.Table.from_arrays(
        [pa.array(list(ids), pa.string()), column, pa.array(list(sources), pa.string())],
        schema=bytes_schema(column.type.byte_width),
    )


def errors_table(rows: pa.Table | Sequence[tuple[str, str, str]]) -> pa.Table:
    """Rejected inputs as ``(source, reason, message)`` rows or a table with those columns."""
    if isinstance(rows, pa.Table):
        missing = set(ERRORS_SCHEMA.names) - set(rows.column_names)
        if missing:
            raise ValueError(f"errors table lacks columns {sorted(missing)}; it needs {ERRORS_SCHEMA.names}")
        return rows.select(ERRORS_SCHEMA.names).cast(ERRORS_SCHEMA)
    cols = list(zip(*rows)) if len(rows) else [(), (), ()]
    return pa.Table.from_arrays([pa.array(list(c), pa.string()) for c in cols], schema=ERRORS_SCHEMA)


# --- writing ---------------------------------------------------------------------------------


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_shard(codeset_uri: str, path: str, table: pa.Table) -> ShardInfo:
    """Write ``table`` as one Parquet file at ``path`` (relative to the code set), atomically."""
    data = parquet_bytes(table)
    storage.write_bytes_atomic(storage.join(codeset_uri, path), data)
    return ShardInfo(path=path, rows=table.num_rows, sha256=storage.sha256_bytes(data))


def commit(
    codeset_uri: str,
    *,
    nbits: int,
    checkpoint_uri: str,
    checkpoint_sha256: str,
    config: dict,
    shards: Sequence[ShardInfo],
    errors: Sequence[ShardInfo],
    counts: dict,
    health: dict,
    code_kind: str = "binary",
    code_spec: dict | None = None,
    inputs_by_node: dict[str, int] | None = None,
) -> CodeSetManifest:
    """Write ``manifest.json`` (one atomic write): from here on the code set is these shards.

    ``code_spec`` is what :func:`write_codebooks` returned, for pq codes only;
    ``inputs_by_node`` what the encode job's actors took on each Ray node."""
    if code_kind != pq_lib.KIND:
        check_writable(code_kind, f"checkpoint {checkpoint_uri}")
        if code_spec:
            raise ValueError(f"a code spec is for pq codes; {code_kind} codes are described by nbits")
    elif not code_spec or "codebooks" not in code_spec:
        raise ValueError("'pq' codes need their code spec and codebooks file (write_codebooks) in the manifest")
    body = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "code_kind": code_kind,
        "nbits": int(nbits),
        **({"code_spec": code_spec} if code_spec else {}),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "checkpoint": {"uri": checkpoint_uri, "sha256": checkpoint_sha256},
        "config": config,
        "shards": [dataclasses.asdict(s) for s in shards],
        "errors": [dataclasses.asdict(s) for s in errors],
        "counts": {k: int(v) for k, v in counts.items()},
        "health": health,
        **({"inputs_by_node": {k: int(v) for k, v in inputs_by_node.items()}} if inputs_by_node else {}),
    }
    text = json.dumps(body, indent=1) + "\n"
    storage.write_text_atomic(storage.join(codeset_uri, MANIFEST_FILE), text)
    logger.info(
        "committed code set %s: %d codes in %d shards, %d rejected",
        codeset_uri,
        counts.get("encoded", 0),
        len(shards),
        counts.get("rejected", 0),
    )
    return _parse(codeset_uri, text.encode("utf-8"))


def write_codebooks(codeset_uri: str, run: str, spec: pq_lib.PQSpec) -> dict:
    """Write ``spec``'s codebooks beside a run's shards; returns the manifest's ``code_spec``."""
    path = f"{run}/{CODEBOOKS_FILE}"
    sha256 = pq_lib.save_codebooks(storage.join(codeset_uri, path), spec)
    return {**spec.to_dict(), "codebooks": {"path": path, "sha256": sha256}}


def write_codeset(
    uri: str,
    *,
    ids: Sequence[str],
    codes: np.ndarray,
    sources: Sequence[str],
    nbits: int | None = None,
    checkpoint_uri: str,
    checkpoint_sha256: str,
    config: dict,
    errors: pa.Table | Sequence[tuple[str, str, str]] | None = None,
    rows_per_shard: int = 1_000_000,
    spec: pq_lib.PQSpec | None = None,
) -> CodeSetManifest:
    """Write a whole code set from memory (same layout as the Ray encode job) and commit it.

    Binary codes are described by ``nbits``; pq codes (uint8 ``(n, M)``) by their ``spec``,
    whose codebooks are written beside the shards."""
    if rows_per_shard <= 0:
        raise ValueError(f"rows_per_shard must be positive, got {rows_per_shard}")
    if (spec is None) == (nbits is None):
        raise ValueError("give nbits for binary codes or spec for pq codes (exactly one)")
    codes = np.asarray(codes, dtype=np.uint8)
    if spec is not None:
        codes = pq_lib.check_codes(spec, codes)
        nbits = spec.nbits
    table = codes_table(ids, codes, sources, nbits, nbytes=None if spec is None else spec.m)
    if len(set(table["id"].to_pylist())) != table.num_rows:
        raise ValueError("ids must be unique within a code set")
    err = errors_table(errors if errors is not None else [])
    # Content-addressed run directory: rewriting the same set rewrites identical files, and a
    # different set never overwrites shards that the committed manifest points to.
    h = hashlib.sha256(checkpoint_sha256.encode())
    book = b"" if spec is None else pq_lib.codebooks_bytes(spec)
    for part in ("\0".join(ids), codes.tobytes(), "\0".join(sources), str(err.to_pylist()), book):
        h.update(part if isinstance(part, bytes) else part.encode())
    run = f"{RUNS_DIR}/{h.hexdigest()[:16]}"
    shards = [
        write_shard(uri, f"{run}/codes-{i:05d}.parquet", table.slice(start, rows_per_shard))
        for i, start in enumerate(range(0, table.num_rows, rows_per_shard))
    ]
    err_shards = [write_shard(uri, f"{run}/errors-00000.parquet", err)] if err.num_rows else []
    counts = {"inputs": table.num_rows + err.num_rows, "encoded": table.num_rows, "rejected": err.num_rows}
    kind = {} if spec is None else {"code_kind": pq_lib.KIND, "code_spec": write_codebooks(uri, run, spec)}
    return commit(
        uri,
        nbits=nbits,
        checkpoint_uri=checkpoint_uri,
        checkpoint_sha256=checkpoint_sha256,
        config=config,
        shards=shards,
        errors=err_shards,
        counts=counts,
        health=code_health(codes, nbits) if spec is None else pq_health(spec, codes),
        **kind,
    )


# --- reading ---------------------------------------------------------------------------------


def _manifest_uri(uri: str) -> tuple[str, str]:
    uri = str(uri).rstrip("/")
    if uri.endswith(MANIFEST_FILE):
        return uri[: -len(MANIFEST_FILE)].rstrip("/"), uri
    return uri, storage.join(uri, MANIFEST_FILE)


def _parse(codeset_uri: str, data: bytes) -> CodeSetManifest:
    body = json.loads(data)
    if body.get("kind") != KIND:
        raise ValueError(f"{codeset_uri}: manifest kind is {body.get('kind')!r}, not {KIND!r}")
    if body.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{codeset_uri}: code set format {body.get('format_version')!r}; this rayhash reads format {FORMAT_VERSION}"
        )
    where = f"{codeset_uri} manifest"
    for s in (*body["shards"], *body["errors"], *([body["code_spec"]["codebooks"]] if "code_spec" in body else [])):
        storage.check_relative(s["path"], where)
    return CodeSetManifest(
        uri=codeset_uri,
        nbits=int(body["nbits"]),
        checkpoint_uri=body["checkpoint"]["uri"],
        checkpoint_sha256=body["checkpoint"]["sha256"],
        shards=tuple(ShardInfo(**s) for s in body["shards"]),
        errors=tuple(ShardInfo(**s) for s in body["errors"]),
        counts=body["counts"],
        health=body["health"],
        config=body["config"],
        created_at=body.get("created_at", ""),
        sha256=storage.sha256_bytes(data),
        format_version=body["format_version"],
        code_kind=body.get("code_kind", "binary"),
        code_spec=body.get("code_spec", {}),
        inputs_by_node=body.get("inputs_by_node", {}),
    )


def read_manifest(uri: str) -> CodeSetManifest:
    """The committed manifest of a code set (``uri`` is its directory or its manifest.json)."""
    codeset_uri, manifest_uri = _manifest_uri(uri)
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(
            f"no {MANIFEST_FILE} at {codeset_uri}: the code set was never committed "
            "(an encode job that did not finish leaves none). Run the encode job to the end."
        )
    return _parse(codeset_uri, storage.read_bytes(manifest_uri))


def _as_manifest(manifest_or_uri: CodeSetManifest | str) -> CodeSetManifest:
    return manifest_or_uri if isinstance(manifest_or_uri, CodeSetManifest) else read_manifest(manifest_or_uri)


def _read_parquet(uri: str, shard: ShardInfo, verify: bool) -> pa.Table:
    data = storage.read_verified(uri, shard.sha256) if verify else storage.read_bytes(uri)
    table = pq.read_table(pa.BufferReader(data))
    if table.num_rows != shard.rows:
        raise ValueError(f"{uri}: {table.num_rows} rows, the manifest records {shard.rows}")
    return table


def read_shard(manifest_or_uri: CodeSetManifest | str, i: int, verify: bool = True) -> pa.Table:
    """Shard ``i`` as an Arrow table ``(id, code, source)``; its SHA-256 is checked first."""
    m = _as_manifest(manifest_or_uri)
    shard = m.shards[i]
    table = _read_parquet(m.shard_uri(shard), shard, verify)
    want = bytes_schema(m.code_bytes)
    if not table.schema.equals(want):
        what = f"{m.nbits}-bit" if m.code_kind == "binary" else f"{m.code_kind} (M={m.code_bytes})"
        raise ValueError(f"{m.shard_uri(shard)}: schema {table.schema} is not a {what} code shard ({want})")
    return table


def read_codes(
    manifest_or_uri: CodeSetManifest | str, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, codes uint8 (n, nbits/8 or M), sources)`` of every shard, in manifest order."""
    m = _as_manifest(manifest_or_uri)
    tables = [read_shard(m, i, verify) for i in range(len(m.shards))]
    table = pa.concat_tables(tables) if tables else bytes_schema(m.code_bytes).empty_table()
    ids = np.array(table["id"].to_pylist(), dtype=object)
    sources = np.array(table["source"].to_pylist(), dtype=object)
    return ids, codes_from_arrow(table["code"]).copy(), sources


def read_errors(manifest_or_uri: CodeSetManifest | str, verify: bool = True) -> pa.Table:
    """Every rejected input as ``(source, reason, message)``."""
    m = _as_manifest(manifest_or_uri)
    tables = [_read_parquet(m.shard_uri(s), s, verify) for s in m.errors]
    return pa.concat_tables(tables).cast(ERRORS_SCHEMA) if tables else ERRORS_SCHEMA.empty_table()


def read_spec(manifest_or_uri: CodeSetManifest | str) -> pq_lib.PQSpec | None:
    """The pq spec of a pq code set, its codebooks read only once their SHA-256 matches the
    manifest's (:class:`rayhash.storage.ChecksumError` otherwise); None for binary codes."""
    m = _as_manifest(manifest_or_uri)
    if m.code_kind != pq_lib.KIND:
        return None
    book = m.code_spec["codebooks"]
    spec = {k: v for k, v in m.code_spec.items() if k != "codebooks"}
    return pq_lib.load_codebooks(storage.join(m.uri, book["path"]), book["sha256"], spec)


# --- code health -----------------------------------------------------------------------------


def code_health(codes: np.ndarray, nbits: int) -> dict[str, Any]:
    """Per-bit fraction of ones, mean |Pearson correlation| over bit pairs, largest bucket.

    Healthy codes have balance near 0.5, correlation near 0 and small buckets. A constant bit
    has no correlation; it counts as 0 here and shows up in its balance instead.
    """
    codes = np.asarray(codes, dtype=np.uint8)
    nbytes = codes_lib.check_nbits(nbits) // 8
    if codes.ndim != 2 or codes.shape[1] != nbytes:
        raise ValueError(f"codes must be uint8 of shape (n, {nbytes}), got {codes.shape}")
    n = len(codes)
    if n == 0:
        return {"bit_balance": [], "mean_abs_bit_correlation": 0.0, "max_items_per_code": 0}
    ones = np.zeros(nbits)
    gram = np.zeros((nbits, nbits))  # sum over rows of b b^T, accumulated in chunks
    for start in range(0, n, _HEALTH_CHUNK):
        bits = codes_lib.unpack(codes[start : start + _HEALTH_CHUNK], nbits).astype(np.float64)
        ones += bits.sum(0)
        gram += bits.T @ bits
    p = ones / n
    cov = gram / n - np.outer(p, p)
    std = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    denom = np.outer(std, std)
    corr = np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)
    pairs = np.triu_indices(nbits, k=1)
    _, counts = np.unique(np.ascontiguousarray(codes).view(np.dtype((np.void, nbytes))).ravel(), return_counts=True)
    return {
        "bit_balance": [round(float(x), 6) for x in p],
        "mean_abs_bit_correlation": float(np.abs(corr[pairs]).mean()) if nbits > 1 else 0.0,
        "max_items_per_code": int(counts.max()),
    }


def pq_health(spec: pq_lib.PQSpec, codes: np.ndarray) -> dict[str, Any]:
    """How many codes pick each centroid of each sub-space, how many centroids each sub-space
    uses, and the largest bucket: healthy codes use most centroids, evenly."""
    usage = pq_lib.centroid_usage(spec, codes)
    codes = np.ascontiguousarray(codes)
    largest = 0
    if len(codes):
        _, counts = np.unique(codes.view(np.dtype((np.void, spec.m))).ravel(), return_counts=True)
        largest = int(counts.max())
    return {
        "centroid_usage": usage.tolist(),
        "used_centroids": [int(u) for u in (usage > 0).sum(axis=1)],
        "max_items_per_code": largest,
    }
