"""The HTTP ingress: FastAPI routes, input checks, fan-out to every shard, exact merge.

Every query goes to every shard at once; each shard answers its own top-k by
(distance, id) and :func:`rayhash.index.search.merge_topk` cuts the union at k, which equals
one flat search over all codes. A shard that does not answer (all replicas gone, or past the
request timeout) fails the request with a 503 naming it, unless the caller asked for
``partial`` results, which are then marked as such.

With ``local`` shards (``ServeConfig.shards_in_ingress``) the ingress loads every shard itself,
checksums first, and searches them in worker threads: no actor hop per query, for indexes
that fit in one replica's memory; a shard cannot then fail apart from the ingress. IVF shards
are merged into one index first (:func:`rayhash.index.indexset.merge_shards`): the same lists
probed, without repeating the coarse quantizer and the top-k heap per shard.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures' types at runtime.

import asyncio
import logging
from typing import Literal

import numpy as np
import orjson
import pyarrow as pa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from starlette.datastructures import UploadFile

from rayhash.codespec import binary as codes_lib
from rayhash.index import indexset
from rayhash.index.search import merge_topk
from rayhash.serve.answers import ARROW_STREAM, as_arrow, as_columns, as_objects, id_lookup
from rayhash.serve.shard import query_rows, search_shard, shard_info

logger = logging.getLogger(__name__)

# ImageDecodeError.reason -> HTTP status
DECODE_STATUS = {"empty": 400, "too_large": 413, "decompression_bomb": 413, "unsupported_format": 415,
                 "not_an_image": 422, "truncated": 422, "corrupt": 422}  # fmt: skip
IMAGE_TYPES = ("multipart/form-data", "application/octet-stream")
MULTIPART_SLACK = 64 << 10  # boundaries and part headers around an uploaded file

app = FastAPI(
    title="rayhash search",
    description="Nearest images by Hamming distance over a sharded faiss binary index. Every result is a list "
                "of {id, distance} sorted by distance, then id.",
)  # fmt: skip


class CodesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    codes: list[str] = Field(min_length=1, description="packed codes as hex, nbits/4 digits each (MSB first)")
    k: int = Field(10, description="results per query (1..max_k, see /stats)")
    radius: int | None = Field(None, description="only items within this Hamming distance (inclusive)")
    partial: bool = Field(False, description="answer from the shards that respond, marked partial, instead of a 503")
    format: Literal["objects", "columns", "arrow"] = Field(
        "objects", description='each result as a list of {"id", "distance"} ("objects"), or as '
                               '{"ids": [...], "distances": [...]} ("columns": a third of the bytes and the '
                               'parsing), or an Apache Arrow IPC stream ("arrow", media type '
                               f"{ARROW_STREAM}): one row per query, list columns ids and distances, "
                               "and k, radius, partial and missing_shards as JSON under the schema's "
                               'metadata key "rayhash" (no per-result parsing: for bulk clients); '
                               "the same order either way")  # fmt: skip


class ShardUnavailable(Exception):
    def __init__(self, shard: int, reason: str):
        super().__init__(f"shard {shard} ({reason})")
        self.shard = shard


def _content_type(request: Request) -> str:
    """The request's media type, lower case, without parameters (boundary, charset)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


# Module-level helpers go above this class: serve.deployment pickles it where it is defined,
# with the module's globals as they are by then.
@serve.deployment
@serve.ingress(app)
class SearchIngress:
    def __init__(self, shards: list, encoder=None, *, stats: dict, max_k: int, max_queries: int,
                 max_upload_bytes: int, timeout_s: float, batch_rows: int = 256, local: dict | None = None):
        """``shards``: one handle per shard deployment; or none, and ``local={"uri", "nprobe", "threads"}``:
        the index set whose shards this replica loads and searches itself."""
        self.shards, self.encoder, self.stats_body = shards, encoder, stats
        self.local, self.local_ids, self.threads = [], None, 1
        if local:
            m = indexset.read_index_manifest(local["uri"])
            shards = [indexset.load_shard(m, i, nprobe=local.get("nprobe")) for i in range(len(m.shards))]
            self.local = [indexset.merge_shards(shards)] if m.kind == "ivf" and len(shards) > 1 else shards
            # ids by global key, for the merged top-k; fixed-width when they allow it, gathered 4x faster
            self.local_ids = indexset.fixed_width_ids(indexset.shared_ids(self.local))
            self.threads = int(local.get("threads", 1))
            logger.info("ingress holds the %d shards of %s itself, searched as %d (%d items)", len(shards), m.uri,
                        len(self.local), m.items)  # fmt: skip
        # What a fan-out asks: every shard deployment, or the indexes held here.
        self.num_targets = len(self.local) or len(self.shards)
        self.num_shards = int(stats["shards"])
        self.nbits = int(stats["nbits"])
        self.max_k, self.max_queries, self.max_upload_bytes, self.timeout_s = max_k, max_queries, max_upload_bytes, timeout_s
        self.fan_out.set_max_batch_size(batch_rows)

    # --- routes --------------------------------------------------------------------------------

    @app.get("/healthz", summary="200 when every shard (and the encoder) answers, else 503 naming what is down")
    async def healthz(self):
        names = [f"shard {i}" for i in range(self.num_targets)] + (["encoder"] if self.encoder else [])
        calls = [self._shard_call(i, "info") for i in range(self.num_targets)] + ([self.encoder.info.remote()] if self.encoder else [])
        answers = await asyncio.gather(*(asyncio.wait_for(c, min(self.timeout_s, 5.0)) for c in calls),
                                       return_exceptions=True)  # fmt: skip
        down = [name for name, a in zip(names, answers) if isinstance(a, BaseException)]
        if down:
            return JSONResponse({"status": "unavailable", "detail": f"not answering: {', '.join(down)}"}, 503)
        return {"status": "ok", "shards": self.num_shards, "encoder": self.encoder is not None}

    @app.get("/stats", summary="shards, items, nbits, index kind, code-set and model versions, limits")
    async def stats(self):
        return self.stats_body

    @app.post("/search/codes", summary="k nearest items of each hex code")
    async def search_codes(self, query: CodesQuery):
        k = self._check_query(query.k, query.radius, len(query.codes))
        try:
            packed = codes_lib.from_hex(query.codes, self.nbits)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return await self._search_answer(packed, k, query.radius, query.partial, query.format)

    @app.post(
        "/search/packed",
        summary="k nearest items of packed binary codes, sent as raw bytes",
        description="The body is the codes themselves, nbits/8 bytes each (MSB first, as /search/codes' hex), "
                    "with Content-Type application/octet-stream; the options are query parameters and the "
                    "answer is /search/codes' in the chosen format. No hex and no JSON to parse: for bulk clients.",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    )  # fmt: skip
    async def search_packed(self, request: Request, k: int = 10, radius: int | None = None, partial: bool = False,
                            format: Literal["objects", "columns", "arrow"] = "objects"):
        nbytes = self.nbits // 8
        ctype = _content_type(request)
        if ctype != "application/octet-stream":
            raise HTTPException(415, f"Content-Type {ctype or '(none)'} is not packed codes: send the codes' bytes "
                                     "with Content-Type application/octet-stream, or hex codes as JSON to /search/codes")  # fmt: skip
        body = await self._read_capped(request, self.max_queries * nbytes,
                                       f"{self.max_queries} codes of {nbytes} bytes (this service's max_queries)")  # fmt: skip
        if not body:
            raise HTTPException(400, "the body is empty: send at least one packed code")
        if len(body) % nbytes:
            raise HTTPException(422, f"the body of {len(body)} bytes is not a whole number of codes: this index "
                                     f"holds {self.nbits}-bit codes, {nbytes} bytes each")  # fmt: skip
        k = self._check_query(k, radius, len(body) // nbytes)
        packed = np.frombuffer(body, dtype=np.uint8).reshape(-1, nbytes)
        return await self._search_answer(packed, k, radius, partial, format)

    @app.post(
        "/search/image",
        summary="k nearest items of an uploaded image",
        description="Send the image as multipart/form-data field `file`, or as the raw body with Content-Type "
                    "image/* or application/octet-stream.",
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        }}},
    )  # fmt: skip
    async def search_image(self, request: Request, k: int = 10, partial: bool = False):
        k = self._check_k(k)
        if self.encoder is None:
            raise HTTPException(503, "image search is off: this service runs without an encoder (start it with a checkpoint)")
        data = await self._read_upload(request)
        code, reason, message = await self._call(self.encoder.encode.remote(data), "the encoder")
        if code is None:
            raise HTTPException(DECODE_STATUS.get(reason, 422), f"not a usable image: {message}")
        dist, ids, missing = await self._search(code[None, :], k, partial)
        return self._answer({"code": codes_lib.to_hex(code[None, :])[0], "results": as_objects(dist, ids)[0], "k": k},
                            missing)  # fmt: skip

    @app.get("/items/{item_id:path}/neighbors", summary="k nearest items of an indexed item (itself excluded)")
    async def neighbors(self, item_id: str, k: int = 10, partial: bool = False):
        k = self._check_k(k)
        found = await asyncio.gather(*(self._call(self._shard_call(i, "code_of", item_id), f"shard {i}")
                                       for i in range(self.num_targets)), return_exceptions=partial)  # fmt: skip
        codes = [c for c in found if isinstance(c, np.ndarray)]
        if not codes:
            lost = [i for i, c in enumerate(found) if isinstance(c, BaseException)]
            if lost:
                raise HTTPException(503, f"id {item_id!r} is in none of the shards that answered; shards {lost} did not")
            raise HTTPException(404, f"no item with id {item_id!r} in this index")
        dist, ids, missing = await self._search(codes[0][None, :], k + 1, partial)
        keep = ids[0] != item_id
        dist, ids = dist[:, keep][:, :k], ids[:, keep][:, :k]
        return self._answer({"id": item_id, "code": codes_lib.to_hex(codes[0][None, :])[0],
                             "results": as_objects(dist, ids)[0], "k": k}, missing)  # fmt: skip

    # --- helpers -------------------------------------------------------------------------------

    def _check_k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise HTTPException(422, f"k must be between 1 and {self.max_k} (this service's cap), got {k}")
        return k

    def _check_query(self, k: int, radius: int | None, num_codes: int) -> int:
        k = self._check_k(k)
        if num_codes > self.max_queries:
            raise HTTPException(413, f"{num_codes} codes in one request; this service takes at most {self.max_queries}")
        if radius is not None and not 0 <= radius <= self.nbits:
            raise HTTPException(422, f"radius must be between 0 and {self.nbits} (the code length), got {radius}")
        return k

    async def _search_answer(self, packed: np.ndarray, k: int, radius: int | None, partial: bool, fmt: str) -> Response:
        arrow = fmt == "arrow"
        dist, ids, missing = await self._search(packed, k, partial, arrow=arrow)
        if arrow:
            meta = {"k": k, "radius": radius, "partial": bool(missing), "missing_shards": missing}
            return as_arrow(dist, ids, radius, meta)
        if radius is not None:
            ids = np.where(dist <= radius, ids, None)
        results = as_columns(dist, ids) if fmt == "columns" else as_objects(dist, ids)
        return self._answer({"results": results, "k": k, "radius": radius}, missing)

    @staticmethod
    def _answer(body: dict, missing: list[int]) -> Response:
        body.update(partial=bool(missing), missing_shards=missing)
        # orjson: a 64-query, k=100 answer in a third of the time of Starlette's json.dumps.
        return Response(orjson.dumps(body), media_type="application/json")

    async def _read_upload(self, request: Request) -> bytes:
        """The uploaded image's bytes; the size cap holds before the body is read, not after."""
        ctype = _content_type(request)
        multipart = ctype == "multipart/form-data"
        if not (ctype in IMAGE_TYPES or ctype.startswith("image/")):
            raise HTTPException(415, f"Content-Type {ctype or '(none)'} is not an image upload: send the image as "
                                     "multipart/form-data field 'file', or as the raw body with Content-Type image/* "
                                     "or application/octet-stream")  # fmt: skip
        limit = f"the upload limit of {self.max_upload_bytes} bytes"
        body = await self._read_capped(request, self.max_upload_bytes + (MULTIPART_SLACK if multipart else 0), limit)
        data = await self._form_file(request, body) if multipart else body
        if not data:
            raise HTTPException(400, "the upload is empty")
        if len(data) > self.max_upload_bytes:
            raise HTTPException(413, f"the image of {len(data)} bytes exceeds {limit}")
        return data

    @staticmethod
    async def _read_capped(request: Request, cap: int, limit: str) -> bytes:
        """The request body, refused with a 413 naming ``limit`` once it passes ``cap`` bytes:
        by its declared Content-Length before reading, else counted as it arrives."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise HTTPException(413, f"the body of {declared} bytes exceeds {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise HTTPException(413, f"the body exceeds {limit}")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    async def _form_file(request: Request, body: bytes) -> bytes:
        async def receive():  # replay the body already read (and capped) to Starlette's form parser
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, receive).form(max_files=1, max_fields=16)  # bad framing: 400
        try:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise HTTPException(422, f"the multipart body has no file field 'file' (fields: {sorted(form.keys())})")
            return await file.read()
        finally:
            await form.close()

    async def _call(self, response, what: str):
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"{what} did not answer within {self.timeout_s:g} s") from None
        except RayActorError as e:
            raise HTTPException(503, f"{what} lost its replica ({type(e).__name__}); retry") from None

    def _shard_call(self, i: int, method: str, *args):
        """An awaitable of shard ``i``'s ``search``, ``code_of`` or ``info``: an actor call, or a
        worker thread on the ``i``-th index this replica holds."""
        if not self.local:
            return getattr(self.shards[i], method).remote(*args)
        shard = self.local[i]
        if method == "search":
            return asyncio.to_thread(search_shard, shard, *args, self.threads)
        if method == "code_of":
            return asyncio.to_thread(shard.code_of, *args)
        return asyncio.to_thread(shard_info, shard)

    async def _ask_shard(self, i: int, codes: np.ndarray, k: int):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        error = "no answer"
        while (left := deadline - loop.time()) > 0:
            try:
                return await asyncio.wait_for(self._shard_call(i, "search", codes, k), left)
            except RayActorError as e:
                # The replica died while running this request (Serve re-routes only requests it had
                # not started). Searching is idempotent: the router has dropped the dead replica,
                # so the retry goes to another one, or waits for a new one until the deadline.
                error = f"replica lost: {type(e).__name__}"
                logger.warning("shard %d: %s; retrying", i, error)
                await asyncio.sleep(0.05)
            except asyncio.TimeoutError:
                break
        raise ShardUnavailable(i, f"{error} within the {self.timeout_s:g} s request timeout")

    async def _search(self, codes: np.ndarray, k: int, partial: bool,
                      arrow: bool = False) -> tuple[np.ndarray, np.ndarray | pa.Array, list[int]]:
        """Exact top-k over every shard: ``(distances, ids, missing shard numbers)``, or a 503.

        ``ids``: object array (None for pads), or with ``arrow`` one flat Arrow string array
        (null for pads), gathered without making a Python string per result."""
        dist, lookup, id_table, failed = await self.fan_out(codes, k)
        if failed and (not partial or len(failed) == self.num_targets):
            raise HTTPException(503, "index unavailable, results would be incomplete: " + "; ".join(map(str, failed))
                                + ". Retry later, or pass partial=true to accept results from the other shards.")
        # Only the answer's ids become strings, in the form it needs.
        ids = indexset.take_ids(id_table, lookup.ravel()) if arrow else indexset.ids_of(id_table, lookup)
        return dist, ids, sorted(f.shard for f in failed)

    # Batch sizes count query rows (batch_size_fn), not requests: Serve's start-up warning that
    # max_batch_size x max_concurrent_batches exceeds max_ongoing_requests does not apply.
    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.0, max_concurrent_batches=4, batch_size_fn=query_rows)
    async def fan_out(self, codes: list[np.ndarray], ks: list[int]) -> list[tuple]:
        """One fan-out for every request that queued while the last one ran: under load, requests
        share shard calls (each an actor call with its own serialisation) and one merge. Up to
        four batches at once, so faiss searches (in worker threads) overlap the event loop's
        parsing, merging and answering (1M IVF held in the ingress, 64-query requests, three
        alternating runs: 17.6k q/s against 16.3k with two; with two ingress replicas 21.5k)."""
        rows = np.cumsum([0] + [len(c) for c in codes])
        k, queries = max(ks), np.concatenate(codes)
        answers = await asyncio.gather(*(self._ask_shard(i, queries, k) for i in range(self.num_targets)),
                                       return_exceptions=True)  # fmt: skip
        for a in answers:
            if isinstance(a, BaseException) and not isinstance(a, ShardUnavailable):
                raise a
        failed = [a for a in answers if isinstance(a, ShardUnavailable)]
        parts = [a for a in answers if not isinstance(a, BaseException)]
        if not parts:
            return [(None, None, None, failed)] * len(codes)
        if len(parts) == 1:  # already sorted by (distance, key)
            dist, keys = parts[0][:2]
            source = None
        else:
            dist, keys, source = merge_topk([p[:2] for p in parts], k)
        if self.local:  # the indexes held here answer keys into every id, held here too
            lookup, id_table = keys, self.local_ids
        else:
            if source is None:
                source = np.where(keys >= 0, np.arange(keys.shape[1]), -1)
            lookup, id_table = id_lookup(source, parts)
        # Rows are sorted by (distance, id): the first k' columns of a top-k are the top-k'.
        return [(dist[lo:hi, :kk], lookup[lo:hi, :kk], id_table, failed)
                for lo, hi, kk in zip(rows[:-1], rows[1:], ks)]  # fmt: skip

