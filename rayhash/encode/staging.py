"""Chunks staged by an encode run before its manifest, and the proof that one is finished.

A run writes under ``runs/<key>/`` of the code set, where ``key`` hashes what decides the
rows (checkpoint SHA-256 and the input / decode settings): another model or input never
overwrites shards that a committed manifest points to, and rerunning the same job finds its
own earlier work. Chunk ``i`` is ``codes-i.parquet`` (and ``errors-i.parquet`` when it has
rejects), then ``chunk-i.json``, written last, with their row counts and SHA-256s. A chunk
counts as done only when its sidecar names the same inputs and every file still matches
its SHA-256; anything else (a crash mid-write, a changed input) is encoded again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayhash import storage
from rayhash.config import to_dict
from rayhash.encode import codeset
from rayhash.encode.config import EncodeConfig

logger = logging.getLogger(__name__)

# Config fields that change which rows or codes a run produces (batch sizes and widths do not).
RUN_KEY_FIELDS = (
    "input",
    "input_format",
    "extensions",
    "image_column",
    "id_column",
    "rows_per_shard",
    "max_image_bytes",
    "max_image_pixels",
)


@dataclass(frozen=True)
class StagedChunk:
    index: int
    fingerprint: str  # of the chunk's inputs (inputs.chunk_fingerprint)
    codes: codeset.ShardInfo | None
    errors: codeset.ShardInfo | None


def run_dir(checkpoint_sha256: str, cfg: EncodeConfig) -> str:
    """``runs/<key>``, relative to the code set."""
    settings = {k: v for k, v in to_dict(cfg).items() if k in RUN_KEY_FIELDS}
    blob = json.dumps({"format": codeset.FORMAT_VERSION, "checkpoint": checkpoint_sha256, **settings}, sort_keys=True)
    return f"{codeset.RUNS_DIR}/{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _sidecar(run: str, index: int) -> str:
    return f"{run}/chunk-{index:05d}.json"


def stage_chunk(
    output: str, run: str, index: int, fingerprint: str, rows: pa.Table, nbits: int = 0, *, nbytes: int = 0
) -> tuple[StagedChunk, pa.Table]:
    """Write one finished chunk (rows with ``id, code, source, reason, message``; a null code
    marks a rejected input); returns it and its codes table, sorted by id."""
    ok = pc.is_valid(rows["code"])
    schema = codeset.bytes_schema(nbytes) if nbytes else codeset.codes_schema(nbits)
    codes = rows.filter(ok).select(["id", "code", "source"]).sort_by("id").cast(schema)
    errors = codeset.errors_table(rows.filter(pc.invert(ok))).sort_by("source")
    if pc.count_distinct(codes["id"]).as_py() != codes.num_rows:
        raise ValueError(
            f"chunk {index} has duplicate ids; with input_format='parquet' set an id_column "
            "that is unique, or leave it empty for '<file>#<row>' ids"
        )
    chunk = StagedChunk(
        index,
        fingerprint,
        codes=codeset.write_shard(output, f"{run}/codes-{index:05d}.parquet", codes) if codes.num_rows else None,
        errors=codeset.write_shard(output, f"{run}/errors-{index:05d}.parquet", errors) if errors.num_rows else None,
    )
    storage.write_text_atomic(storage.join(output, _sidecar(run, index)), json.dumps(dataclasses.asdict(chunk)))
    return chunk, codes


def load_chunk(
    output: str, run: str, index: int, fingerprint: str, nbits: int = 0, *, nbytes: int = 0
) -> tuple[StagedChunk, pa.Table] | None:
    """A chunk staged earlier for the same inputs and still whole, with its codes; else None.
    (Codes are ``nbits / 8`` bytes, or ``nbytes`` where given: pq codes are M bytes.)"""
    schema = codeset.bytes_schema(nbytes) if nbytes else codeset.codes_schema(nbits)
    sidecar = storage.join(output, _sidecar(run, index))
    if not storage.exists(sidecar):
        return None
    body = json.loads(storage.read_text(sidecar))
    if body["fingerprint"] != fingerprint:
        logger.info("chunk %d of %s was staged for other inputs; encoding it again", index, run)
        return None
    shards = {k: codeset.ShardInfo(**body[k]) if body[k] else None for k in ("codes", "errors")}
    chunk = StagedChunk(index, fingerprint, **shards)
    codes = schema.empty_table()
    for kind, shard in shards.items():
        if shard is None:
            continue
        try:
            data = storage.read_verified(storage.join(output, shard.path), shard.sha256)
        except (FileNotFoundError, storage.ChecksumError) as e:
            logger.warning("staged chunk %d is not whole (%s); encoding it again", index, e)
            return None
        if kind == "codes":
            codes = pq.read_table(pa.BufferReader(data)).cast(schema)
    return chunk, codes
