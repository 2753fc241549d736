"""The HTTP ingress: the FastAPI routes of the search service.

Each route checks its input (:mod:`rayhash.serve.parsing`), asks every shard
(:mod:`rayhash.serve.fanout`, which also merges their answers) and answers in the format asked
for (:mod:`rayhash.serve.answers`).

Routes: ``GET /healthz``, ``GET /stats``, ``POST /search/codes``, ``POST /search/packed``,
``POST /search/image``, ``GET /items/{id}/neighbors``; with live writes on (``writes=true``),
``POST /items``, ``POST /items/{id}/image`` and ``DELETE /items/{id}`` too (:mod:`rayhash.serve.writes`: durable in the
write log before they are acknowledged, seen by every search after). Without them those
answer 405 saying how to turn writes on.

Every request runs on one index version (:mod:`rayhash.serve.versions`), taken when it starts:
its answer says which (``index_version``), and a blue/green swap never splits one answer
between two versions.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' types at runtime.

import asyncio
import logging

import numpy as np
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from rayhash.codespec import pq as pq_lib
from rayhash.serve.answers import as_arrow, as_columns, as_objects
from rayhash.serve.auth import BearerAuth
from rayhash.serve.fanout import answer_retried, answer_within
from rayhash.serve.metrics import RequestMetrics
from rayhash.serve.parsing import DECODE_STATUS, CodesQuery, Format
from rayhash.serve.versions import FANOUT_BATCHES, IndexVersion, VersionWatcher, fan_out_by_version, version_rows
from rayhash.serve.writes import ItemsWrite, Writer

logger = logging.getLogger(__name__)

app = FastAPI(
    title="rayhash search",
    description="Nearest images over a sharded faiss index: binary codes by Hamming distance, or product-quantised "
    "(pq) codes by squared L2 (asymmetric from an image, symmetric through the codebooks from a code). Every "
    "result is a list of {id, distance} sorted by distance, then id; /stats names the code kind.",
)
# Built in each replica, which reads its token there (rayhash.serve.auth): none set, no check.
app.add_middleware(BearerAuth)
app.add_middleware(RequestMetrics)  # added last, so outermost: refusals by the token check count too


def _answer(body: dict, missing: list[int], version: str) -> Response:
    body.update(partial=bool(missing), missing_shards=missing, index_version=version)
    # orjson: serialises a many-result answer far faster than Starlette's json.dumps, on every request.
    return Response(orjson.dumps(body), media_type="application/json")


# Module-level helpers go above this class: serve.deployment pickles it where it is defined,
# with the module's globals as they are by then.
@serve.deployment
@serve.ingress(app)
class SearchIngress:
    def __init__(self, shards: list, encoder=None, *, target: dict, settings: dict):
        """``target`` / ``settings``: the index version this app was deployed with and the
        service's options (:class:`rayhash.serve.versions.IndexVersion`); ``shards`` and ``encoder``:
        that version's deployments, bound in this app (no shards when the ingress holds them).
        A swap may since have pointed the service at another version: the watcher opens that one
        before this replica takes a request."""
        self.version = IndexVersion(target, settings, shards, encoder).connect()
        self.fan_out.set_max_batch_size(settings["batch_rows"])
        ctx = serve.get_replica_context()
        self.watcher = VersionWatcher(ctx.app_name, ctx.replica_id.unique_id, self, settings, target)

    @staticmethod
    def _writer(v: IndexVersion) -> Writer:
        if v.writer is None:
            raise HTTPException(
                405, "this service is read-only: start it with writes=true to add and delete items through the API"
            )
        return v.writer

    @app.post(
        "/items",
        summary="add items by code (an id already served is replaced); acknowledged once durable",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ItemsWrite.model_json_schema()}},
            }
        },
    )
    async def add_items(self, request: Request):
        with self.version.use() as v:
            return {**await self._writer(v).add(request), "index_version": v.id}

    @app.post(
        "/items/{item_id:path}/image",
        summary="add (or replace) an item by an image, encoded by this service's encoder; acknowledged once durable",
        description="Send the image as /search/image takes it: multipart/form-data field `file`, or the raw body.",
    )
    async def add_image(self, item_id: str, request: Request):
        with self.version.use() as v:
            writer = self._writer(v)
            if v.encoder is None:
                raise HTTPException(
                    503, "image writes need the encoder: this service runs without one (add codes instead)"
                )
            data = await v.limits.image_upload(request)
            code, _, reason, message = await answer_within(v.encoder.encode.remote(data), "the encoder", v.timeout_s)
            if code is None:
                raise HTTPException(DECODE_STATUS.get(reason, 422), f"not a usable image: {message}")
            return {**await writer.add_codes([item_id], np.asarray(code, dtype=np.uint8)[None]), "index_version": v.id}

    @app.delete("/items/{item_id:path}", summary="delete an item (404 if no such id); acknowledged once durable")
    async def delete_item(self, item_id: str):
        with self.version.use() as v:
            return {**await self._writer(v).delete(item_id), "index_version": v.id}

    @app.get("/healthz", summary="200 when every shard (and the encoder) answers, else 503 naming what is down")
    async def healthz(self):
        v = self.version
        targets = range(len(v.shards))
        names = [f"shard {i}" for i in targets] + (["encoder"] if v.encoder else [])
        calls = [v.shards.call(i, "info") for i in targets] + ([v.encoder.info.remote()] if v.encoder else [])
        answers = await asyncio.gather(
            *(asyncio.wait_for(c, min(v.timeout_s, 5.0)) for c in calls), return_exceptions=True
        )
        down = [name for name, a in zip(names, answers, strict=True) if isinstance(a, BaseException)]
        if down:
            return JSONResponse({"status": "unavailable", "detail": f"not answering: {', '.join(down)}"}, 503)
        body = {"status": "ok", "shards": len(v.manifest.shards), "encoder": v.encoder is not None}
        body["index_version"] = v.id
        if v.shards.handles:  # where each shard deployment answered from (one of its replicas' nodes)
            body["shard_nodes"] = [a.get("node_id") for a in answers[: len(v.shards)]]
        return body

    @app.get(
        "/stats",
        summary="index version, code kind, shards, items (with live writes: items now), nbits, index kind, "
        "code-set and model versions, limits",
    )
    async def stats(self):
        with self.version.use() as v:
            if v.writer is None or v.settings["shards_in_ingress"]:
                return v.stats
            infos = await asyncio.gather(
                *(answer_within(v.shards.call(i, "info"), f"shard {i}", v.timeout_s) for i in range(len(v.shards)))
            )
            # Built items are the index set's; live ones are what the shards hold after the write log.
            return {**v.stats, "live_items": sum(int(i["items"]) for i in infos), "writelog_seq": v.shards.min_seq}

    @app.post(
        "/search/codes",
        summary="k nearest items of each hex code",
        # The body is read capped, then parsed (parsing.Limits.codes_query): declared here for the docs.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": CodesQuery.model_json_schema()}},
            }
        },
    )
    async def search_codes(self, request: Request):
        with self.version.use() as v:
            query = await v.limits.codes_query(request)
            k = v.limits.check_query(query.k, query.radius, len(query.codes))
            codes = v.limits.hex_codes(query.codes)
            return await self._search_answer(v, codes, k, query.radius, query.partial, query.format)

    @app.post(
        "/search/packed",
        summary="k nearest items of codes sent as raw bytes",
        description="The body is the codes themselves: nbits/8 bytes each for binary codes (MSB first, as "
        "/search/codes' hex), M bytes each for pq codes, "
        "with Content-Type application/octet-stream; the options are query parameters and the "
        "answer is /search/codes' in the chosen format. No hex and no JSON to parse: for bulk clients.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def search_packed(
        self,
        request: Request,
        k: int = 10,
        radius: float | None = None,
        partial: bool = False,
        format: Format = "objects",
    ):
        with self.version.use() as v:
            packed = await v.limits.packed_codes(request)
            k = v.limits.check_query(k, radius, len(packed))
            return await self._search_answer(v, packed, k, radius, partial, format)

    @app.post(
        "/search/image",
        summary="k nearest items of an uploaded image",
        description="Send the image as multipart/form-data field `file`, or as the raw body with Content-Type "
        "image/* or application/octet-stream.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    },
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def search_image(self, request: Request, k: int = 10, partial: bool = False):
        with self.version.use() as v:
            k = v.limits.check_k(k)
            if v.encoder is None:
                raise HTTPException(
                    503, "image search is off: this service runs without an encoder (start it with a checkpoint)"
                )
            data = await v.limits.image_upload(request)
            code, query, reason, message = await answer_retried(
                lambda: v.encoder.encode.remote(data), "the encoder", v.timeout_s
            )
            if code is None:
                raise HTTPException(DECODE_STATUS.get(reason, 422), f"not a usable image: {message}")
            # pq: the image's continuous vector, scored by asymmetric distance (finer than its code's).
            dist, ids, missing = await self._search(v, query[None, :], k, partial)
            return _answer({"code": bytes(code).hex(), "results": as_objects(dist, ids)[0], "k": k}, missing, v.id)

    @app.get("/items/{item_id:path}/neighbors", summary="k nearest items of an indexed item (itself excluded)")
    async def neighbors(self, item_id: str, k: int = 10, partial: bool = False):
        with self.version.use() as v:
            k = v.limits.check_k(k)
            live = () if v.shards.min_seq is None else (v.shards.min_seq,)
            found = await asyncio.gather(
                *(
                    answer_within(v.shards.call(i, "code_of", item_id, *live), f"shard {i}", v.timeout_s)
                    for i in range(len(v.shards))
                ),
                return_exceptions=partial,
            )
            codes = [c for c in found if isinstance(c, np.ndarray)]
            if not codes:
                lost = [i for i, c in enumerate(found) if isinstance(c, BaseException)]
                if lost:
                    raise HTTPException(
                        503, f"id {item_id!r} is in none of the shards that answered; shards {lost} did not"
                    )
                raise HTTPException(404, f"no item with id {item_id!r} in this index")
            dist, ids, missing = await self._search(v, self._queries(v, codes[0][None, :]), k + 1, partial)
            keep = ids[0] != item_id
            dist, ids = dist[:, keep][:, :k], ids[:, keep][:, :k]
            body = {"id": item_id, "code": bytes(codes[0]).hex(), "results": as_objects(dist, ids)[0], "k": k}
            return _answer(body, missing, v.id)

    @staticmethod
    def _queries(v: IndexVersion, codes: np.ndarray) -> np.ndarray:
        """What the shards search for ``codes``: the codes themselves (binary), or their
        reconstructions (pq), whose asymmetric distance to a code is the symmetric one through
        the codebooks; every pq query is then a vector, so requests batch together."""
        return codes if v.spec is None else pq_lib.decode(v.spec, codes)

    async def _search_answer(
        self, v: IndexVersion, codes: np.ndarray, k: int, radius: float | None, partial: bool, fmt: str
    ) -> Response:
        arrow = fmt == "arrow"
        if radius is not None and v.spec is None:
            radius = int(radius)  # a Hamming radius: checked to be whole
        dist, ids, missing = await self._search(v, self._queries(v, codes), k, partial, arrow=arrow)
        if arrow:
            meta = {
                "k": k,
                "radius": radius,
                "partial": bool(missing),
                "missing_shards": missing,
                "index_version": v.id,
            }
            return as_arrow(dist, ids, radius, meta)
        if radius is not None:
            ids = np.where(dist <= radius, ids, None)
        results = as_columns(dist, ids) if fmt == "columns" else as_objects(dist, ids)
        return _answer({"results": results, "k": k, "radius": radius}, missing, v.id)

    async def _search(self, v: IndexVersion, codes: np.ndarray, k: int, partial: bool, arrow: bool = False):
        """Exact top-k over every shard of version ``v``: ``(distances, ids, missing shard numbers)``, or a 503."""
        if v.writer is not None:
            await v.writer.refresh_head()
        return v.shards.results(await self.fan_out((v, codes), k), partial, arrow)

    # Batch sizes count query rows (batch_size_fn), not requests: Serve's start-up warning that
    # max_batch_size x max_concurrent_batches exceeds max_ongoing_requests does not apply. The
    # batch lives on the ingress, not on each version: Serve keeps one queue per decorated
    # method and runs a batch on its first request's instance, whatever the others' were.
    @serve.batch(
        max_batch_size=256, batch_wait_timeout_s=0.0, max_concurrent_batches=FANOUT_BATCHES, batch_size_fn=version_rows
    )
    async def fan_out(self, work: list[tuple], ks: list[int]) -> list[tuple]:
        """One fan-out for every request that queued while the last one ran: under load, requests
        share shard calls (each an actor call with its own serialisation) and one merge. Several
        batches run at once, so faiss searches (in worker threads) overlap the event loop's
        parsing, merging and answering."""
        return await fan_out_by_version(work, ks)
