"""What the ingress accepts: request bodies and parameters checked against the service's limits.

Every refusal is an ``HTTPException`` with the 4xx status and a message that says what to send
instead. Bodies are capped while they are read, never after, so an oversized upload costs no
more memory than the cap. No Ray here: these run on any Starlette request.
"""

from dataclasses import dataclass
from typing import Literal

import numpy as np
import orjson
from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from rayhash.codespec import binary as codes_lib
from rayhash.codespec import pq as pq_lib
from rayhash.serve.answers import ARROW_STREAM

# ImageDecodeError.reason -> HTTP status
DECODE_STATUS = {
    "empty": 400,
    "too_large": 413,
    "decompression_bomb": 413,
    "unsupported_format": 415,
    "not_an_image": 422,
    "truncated": 422,
    "corrupt": 422,
}
IMAGE_TYPES = ("multipart/form-data", "application/octet-stream")
PACKED_TYPE = "application/octet-stream"
JSON_TYPE = "application/json"
MULTIPART_SLACK = 64 << 10  # boundaries and part headers around an uploaded file
JSON_SLACK = 4 << 10  # the options beside the codes in a /search/codes body
JSON_PER_CODE = 4  # quotes, comma and a space around each hex string

Format = Literal["objects", "columns", "arrow"]


class CodesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    codes: list[str] = Field(
        min_length=1,
        description="codes as hex: binary codes packed MSB first, nbits/4 digits each; pq codes one byte "
        "(centroid number) per sub-space, 2*M digits each (see /stats' code_kind and code_spec)",
    )
    k: int = Field(10, description="results per query (1..max_k, see /stats)")
    radius: float | None = Field(
        None,
        description="only items within this distance (inclusive): a Hamming distance (an integer) for "
        "binary codes, a squared L2 distance for pq codes",
    )
    partial: bool = Field(False, description="answer from the shards that respond, marked partial, instead of a 503")
    format: Format = Field(
        "objects",
        description='each result as a list of {"id", "distance"} ("objects"), or as '
        '{"ids": [...], "distances": [...]} ("columns": a third of the bytes and the '
        'parsing), or an Apache Arrow IPC stream ("arrow", media type '
        f"{ARROW_STREAM}): one row per query, list columns ids and distances, "
        "and k, radius, partial and missing_shards as JSON under the schema's "
        'metadata key "rayhash" (no per-result parsing: for bulk clients); '
        "the same order either way",
    )


def content_type(request: Request) -> str:
    """The request's media type, lower case, without parameters (boundary, charset)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@dataclass(frozen=True)
class Limits:
    """What one request may ask of this service (the ``limits`` of ``/stats``), and what its codes
    look like: ``nbits``-bit binary codes, or pq codes of ``pq_m`` bytes (``pq_k`` centroids each)."""

    nbits: int
    max_k: int
    max_queries: int
    max_upload_bytes: int
    pq_m: int = 0  # 0: binary codes
    pq_k: int = 256

    @property
    def code_bytes(self) -> int:
        return self.pq_m or self.nbits // 8

    @property
    def kind(self) -> str:
        return pq_lib.KIND if self.pq_m else "binary"

    def describe(self) -> str:
        """The codes this index holds, in words, for error messages."""
        if self.pq_m:
            return f"pq codes of M={self.pq_m} bytes"
        return f"{self.nbits}-bit codes, {self.code_bytes} bytes each"

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise HTTPException(422, f"k must be between 1 and {self.max_k} (this service's cap), got {k}")
        return k

    def check_query(self, k: int, radius: float | None, num_codes: int) -> int:
        """``k``, once it, the number of codes and ``radius`` are within the limits."""
        k = self.check_k(k)
        if num_codes > self.max_queries:
            raise HTTPException(413, f"{num_codes} codes in one request; this service takes at most {self.max_queries}")
        if radius is None:
            return k
        if self.pq_m:
            if not (np.isfinite(radius) and radius >= 0):
                raise HTTPException(422, f"radius must be a squared L2 distance of 0 or more (pq codes), got {radius}")
        elif radius != int(radius) or not 0 <= radius <= self.nbits:
            raise HTTPException(
                422, f"radius must be an integer between 0 and {self.nbits} (the code length), got {radius}"
            )
        return k

    def hex_codes(self, codes: list[str]) -> np.ndarray:
        """Hex codes as ``uint8 (n, code_bytes)``; a 422 saying what is wrong with them if not."""
        try:
            if self.pq_m:
                return pq_lib.from_hex(codes, self.pq_m, self.pq_k)
            return codes_lib.from_hex(codes, self.nbits)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None

    @property
    def max_json_bytes(self) -> int:
        """The largest ``/search/codes`` body: ``max_queries`` hex codes and the options."""
        return self.max_queries * (2 * self.code_bytes + JSON_PER_CODE) + JSON_SLACK

    async def codes_query(self, request: Request) -> CodesQuery:
        """The ``/search/codes`` body, read up to :attr:`max_json_bytes` and only then parsed:
        an oversized body costs no more memory than the cap, and its JSON is never built."""
        ctype = content_type(request)
        if ctype != JSON_TYPE:
            raise HTTPException(415, f"Content-Type {ctype or '(none)'} is not JSON: send {JSON_TYPE}")
        limit = f"{self.max_json_bytes} bytes ({self.max_queries} codes, this service's max_queries)"
        body = await read_capped(request, self.max_json_bytes, limit)
        try:
            parsed = orjson.loads(body)  # nesting deeper than orjson's limit (1,024) fails here too
        except orjson.JSONDecodeError as e:
            raise HTTPException(422, f"the body is not valid JSON: {e}") from None
        codes = parsed.get("codes") if isinstance(parsed, dict) else None
        if isinstance(codes, list) and len(codes) > self.max_queries:
            raise HTTPException(
                413, f"{len(codes)} codes in one request; this service takes at most {self.max_queries}"
            )
        try:
            return CodesQuery.model_validate(parsed)
        except ValidationError as e:
            detail = [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in e.errors()]
            raise HTTPException(422, detail) from None

    async def packed_codes(self, request: Request) -> np.ndarray:
        """The body's raw codes, ``code_bytes`` each (packed bits, or one byte per pq sub-space),
        as ``uint8 (n, code_bytes)``."""
        nbytes = self.code_bytes
        ctype = content_type(request)
        if ctype != PACKED_TYPE:
            raise HTTPException(
                415,
                f"Content-Type {ctype or '(none)'} is not packed codes: send the codes' bytes "
                "with Content-Type application/octet-stream, or hex codes as JSON to /search/codes",
            )
        body = await read_capped(
            request,
            self.max_queries * nbytes,
            f"{self.max_queries} codes of {nbytes} bytes (this service's max_queries)",
        )
        if not body:
            raise HTTPException(400, "the body is empty: send at least one packed code")
        if len(body) % nbytes:
            raise HTTPException(
                422,
                f"the body of {len(body)} bytes is not a whole number of codes: this index holds {self.describe()}",
            )
        codes = np.frombuffer(body, dtype=np.uint8).reshape(-1, nbytes)
        if self.pq_m and self.pq_k < 256 and int(codes.max()) >= self.pq_k:
            raise HTTPException(422, f"a code names centroid {int(codes.max())}, but each sub-space has K={self.pq_k}")
        return codes

    async def image_upload(self, request: Request) -> bytes:
        """The uploaded image's bytes: a multipart field ``file``, or the whole body."""
        ctype = content_type(request)
        multipart = ctype == "multipart/form-data"
        if not (ctype in IMAGE_TYPES or ctype.startswith("image/")):
            raise HTTPException(
                415,
                f"Content-Type {ctype or '(none)'} is not an image upload: send the image as "
                "multipart/form-data field 'file', or as the raw body with Content-Type image/* "
                "or application/octet-stream",
            )
        limit = f"the upload limit of {self.max_upload_bytes} bytes"
        body = await read_capped(request, self.max_upload_bytes + (MULTIPART_SLACK if multipart else 0), limit)
        data = await form_file(request, body) if multipart else body
        if not data:
            raise HTTPException(400, "the upload is empty")
        if len(data) > self.max_upload_bytes:
            raise HTTPException(413, f"the image of {len(data)} bytes exceeds {limit}")
        return data


async def read_capped(request: Request, cap: int, limit: str) -> bytes:
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


async def form_file(request: Request, body: bytes) -> bytes:
    """The bytes of the multipart ``body``'s field ``file``."""

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
