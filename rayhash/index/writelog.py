"""The write log of an index set: items added, replaced or deleted since it was built.

A write is durable before the service acknowledges it: each write batch is one record, a new
object that is created whole or not at all, and never rewritten (on S3 a conditional PUT, so
appends never overwrite; locally a hard link of a synced file)::

    <index set>/writelog/000000000001.json
    <index set>/writelog/000000000002.json ...

A record's first line is the SHA-256 of the rest, its JSON body::

    {"seq": 7, "index_sha256": "<manifest SHA-256>", "ops": [
        {"op": "add", "id": "a/17", "code": "<hex>", "shard": 0},
        {"op": "delete", "id": "b/3", "shard": 1}]}

Sequence numbers run 1, 2, 3, ... without gaps: a writer claims the next free number by
creating its record (:func:`rayhash.storage.write_bytes_new`), and on losing the race to another
writer moves to the one after. A reader replays records in order until the first number not
written, so it needs no listing. A record naming another index version is refused: a log
belongs to the index set it sits in, and compaction (:mod:`rayhash.index.compact`) folds it
into a new version with an empty log of its own.

Each op names the shard that owns its id (:func:`owner`): the shard whose id range holds it,
so ids still ascend from one shard to the next, and a replacement lands in the shard that holds
the old code.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rayhash import storage

logger = logging.getLogger(__name__)

LOG_DIR = "writelog"
OPS = ("add", "delete")


class CorruptRecord(storage.ChecksumError):
    """A write-log record whose bytes do not match its checksum (or are not a record at all)."""


@dataclass(frozen=True)
class Op:
    op: str  # "add" (or replace) | "delete"
    id: str
    shard: int
    code: str = ""  # hex, for "add"


@dataclass(frozen=True)
class Record:
    seq: int
    index_sha256: str
    ops: tuple[Op, ...]


def log_uri(index_uri: str) -> str:
    return storage.join(str(index_uri).rstrip("/"), LOG_DIR)


def record_uri(index_uri: str, seq: int) -> str:
    return storage.join(log_uri(index_uri), f"{seq:012d}.json")


def owner(first_ids: Sequence[str], item_id: str) -> int:
    """The shard that owns ``item_id``: the last whose first id is at or below it (shard 0 for ids
    below every shard). ``first_ids`` are the shards' first ids, ascending (the order invariant)."""
    return max(bisect.bisect_right(list(first_ids), item_id) - 1, 0)


def encode_record(record: Record) -> bytes:
    ops = [
        {"op": o.op, "id": o.id, "shard": o.shard, **({"code": o.code} if o.op == "add" else {})} for o in record.ops
    ]
    body = json.dumps({"seq": record.seq, "index_sha256": record.index_sha256, "ops": ops}, sort_keys=True).encode()
    return storage.sha256_bytes(body).encode() + b"\n" + body


def decode_record(data: bytes, where: str) -> Record:
    digest, _, body = data.partition(b"\n")
    if storage.sha256_bytes(body).encode() != digest:
        raise CorruptRecord(
            f"{where}: the record's SHA-256 does not match its bytes; it was changed after it was "
            "written. Restore it from a backup, or compact up to the record before it."
        )
    raw = json.loads(body)
    ops = tuple(Op(o["op"], o["id"], int(o["shard"]), o.get("code", "")) for o in raw["ops"])
    for o in ops:
        if o.op not in OPS:
            raise CorruptRecord(f"{where}: unknown op {o.op!r}; this log was not written by this rayhash")
    return Record(int(raw["seq"]), raw["index_sha256"], ops)


def read_record(index_uri: str, seq: int, index_sha256: str) -> Record | None:
    """Record ``seq``, checked; None when it has not been written (yet)."""
    uri = record_uri(index_uri, seq)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    record = decode_record(data, uri)
    if record.seq != seq:
        raise CorruptRecord(f"{uri}: holds record {record.seq}, not {seq}; the log was rearranged")
    if record.index_sha256 != index_sha256:
        raise ValueError(
            f"{uri}: written against index version {record.index_sha256[:12]}..., not {index_sha256[:12]}...: "
            "a write log belongs to the index set it sits in; compact it into a new version instead of moving it"
        )
    return record


def replay(index_uri: str, index_sha256: str, after: int = 0) -> Iterator[Record]:
    """Records ``after + 1``, ``after + 2``, ... in order, up to the last one written."""
    seq = after + 1
    while (record := read_record(index_uri, seq, index_sha256)) is not None:
        yield record
        seq += 1


def head(index_uri: str) -> int:
    """The highest sequence number written (0 for an empty log), from one listing."""
    uri = log_uri(index_uri)
    if not storage.exists(uri):
        return 0
    names = [u.rsplit("/", 1)[-1] for u in storage.list_files(uri, (".json",))]
    seqs = [int(n[:-5]) for n in names if n[:-5].isdigit()]
    return max(seqs, default=0)


def append(index_uri: str, index_sha256: str, ops: Sequence[Op], after: int = 0) -> int:
    """Write ``ops`` as the next record after ``after`` (a hint: the highest number the caller has
    seen), durably, and return its sequence number. Losing a race to another writer only moves
    this record along: no record is ever overwritten."""
    if not ops:
        raise ValueError("a write-log record needs at least one op")
    seq = after + 1
    while True:
        data = encode_record(Record(seq, index_sha256, tuple(ops)))
        if storage.write_bytes_new(record_uri(index_uri, seq), data):
            logger.debug("write log %s: record %d, %d ops", index_uri, seq, len(ops))
            return seq
        seq += 1
