"""Live writes through the ingress: ``POST /items`` and ``DELETE /items/{id}``.

``POST /items`` takes ``{"items": [{"id": "a/1", "code": "<hex>"}, ...]}`` (at most
``max_queries`` items; codes of the index's kind and length, as ``/search/codes`` takes them)
and answers ``{"seq": n, "added": [...], "replaced": [...]}``; an id already served is replaced.
``POST /items/{id}/image`` adds (or replaces) one item by an uploaded image, encoded by the
service's own encoder (the model that wrote the index's codes), and answers as ``POST /items``.
``DELETE /items/{id}`` answers ``{"seq": n, "deleted": id}``, or a 404 for an id not served.

A write is acknowledged only once its record is durable in the index set's write log
(:mod:`rayhash.index.writelog`). The ingress then asks every later search for that record
(``min_seq``), and a shard replica that has not applied it yet replays the log first, so the
next search on any replica sees the write. Another ingress replica picks the record up when it
next reads the log's head (every ``HEAD_REFRESH_S``, or on its own next write).
"""

import asyncio
import time

import orjson
from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayhash.index import writelog
from rayhash.serve.fanout import answer_within
from rayhash.serve.parsing import JSON_TYPE, content_type, read_capped

HEAD_REFRESH_S = 1.0
MAX_ID_BYTES = 512


class WrittenItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=MAX_ID_BYTES, description="the item's id, unique in the index")
    code: str = Field(description="its code as hex, as /search/codes takes codes")


class ItemsWrite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[WrittenItem] = Field(min_length=1, description="items to add; an id already served is replaced")


class Writer:
    """One ingress replica's side of the write log: ``shards`` is its :class:`FanOut`."""

    def __init__(self, shards, index_uri: str, index_sha256: str, limits):
        self.shards, self.uri, self.sha256, self.limits = shards, index_uri, index_sha256, limits
        self.first_ids: list[str] | None = None
        self.lock = asyncio.Lock()  # appends from this replica in order, one at a time
        self.refreshed = time.monotonic()
        self.shards.min_seq = writelog.head(index_uri)  # everything acknowledged before this replica started

    async def refresh_head(self) -> None:
        """Read the log's head now and then, for writes acknowledged by other ingress replicas."""
        if time.monotonic() - self.refreshed >= HEAD_REFRESH_S:
            self.refreshed = time.monotonic()
            head = await asyncio.to_thread(writelog.head, self.uri)
            self.shards.min_seq = max(self.shards.min_seq, head)

    async def owners(self) -> list[str]:
        if self.first_ids is None:  # fixed for an index version: asked once
            infos = await asyncio.gather(
                *(
                    answer_within(self.shards.call(i, "info"), f"shard {i}", self.shards.timeout_s)
                    for i in range(len(self.shards))
                )
            )
            self.first_ids = [info["first_id"] for info in infos]
        return self.first_ids

    async def parse(self, request: Request) -> ItemsWrite:
        if content_type(request) != JSON_TYPE:
            raise HTTPException(415, f'send the items as {JSON_TYPE}: {{"items": [{{"id": ..., "code": ...}}]}}')
        cap = self.limits.max_queries * (2 * self.limits.code_bytes + MAX_ID_BYTES + 32) + 1024
        body = await read_capped(request, cap, f"{self.limits.max_queries} items (this service's max_queries)")
        try:
            parsed = ItemsWrite.model_validate(orjson.loads(body))
        except orjson.JSONDecodeError as e:
            raise HTTPException(422, f"the body is not valid JSON: {e}") from None
        except ValidationError as e:
            detail = [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in e.errors()]
            raise HTTPException(422, detail) from None
        if len(parsed.items) > self.limits.max_queries:
            raise HTTPException(
                413, f"{len(parsed.items)} items in one write; this service takes at most {self.limits.max_queries}"
            )
        ids = [item.id for item in parsed.items]
        if len(set(ids)) != len(ids):
            raise HTTPException(422, "an id appears twice in one write; send each id once")
        return parsed

    async def exists(self, item_id: str, shard: int) -> bool:
        # A lost replica or a slow shard is a 503 that says to retry: nothing was written yet.
        call = self.shards.call(shard, "code_of", item_id, self.shards.min_seq)
        return await answer_within(call, f"shard {shard}", self.shards.timeout_s) is not None

    async def add(self, request: Request) -> dict:
        parsed = await self.parse(request)
        codes = self.limits.hex_codes([item.code for item in parsed.items])  # kind and length: a 422 if not
        return await self.add_codes([item.id for item in parsed.items], codes)

    async def add_codes(self, ids: list[str], codes) -> dict:
        """Append ``ids`` with their checked codes (uint8 rows of the index's code length)."""
        first = await self.owners()
        ops = [
            writelog.Op("add", item_id, writelog.owner(first, item_id), bytes(code).hex())
            for item_id, code in zip(ids, codes, strict=True)
        ]
        found = await asyncio.gather(*(self.exists(op.id, op.shard) for op in ops))
        seq = await self.append(ops)
        return {
            "seq": seq,
            "added": [op.id for op, f in zip(ops, found, strict=True) if not f],
            "replaced": [op.id for op, f in zip(ops, found, strict=True) if f],
        }

    async def delete(self, item_id: str) -> dict:
        shard = writelog.owner(await self.owners(), item_id)
        if not await self.exists(item_id, shard):
            raise HTTPException(404, f"no item with id {item_id!r} in this index; nothing to delete")
        return {"seq": await self.append([writelog.Op("delete", item_id, shard)]), "deleted": item_id}

    async def append(self, ops: list) -> int:
        async with self.lock:
            seq = await asyncio.to_thread(writelog.append, self.uri, self.sha256, ops, self.shards.min_seq)
            self.shards.min_seq = max(self.shards.min_seq, seq)  # every later search must reflect it
        return seq
