"""rayhash.serve.parsing on real Starlette requests, without Ray or Serve: every limit and every
malformed input is the 4xx the service answers (tests/serve/test_search_service.py sends the
same over HTTP to a running service)."""

import asyncio

import numpy as np
import pytest
from fastapi import HTTPException
from pydantic import ValidationError
from starlette.requests import Request

from rayhash.serve.parsing import MULTIPART_SLACK, CodesQuery, Limits

LIMITS = Limits(nbits=64, max_k=500, max_queries=64, max_upload_bytes=1000)
OCTETS = "application/octet-stream"


class Body:
    """An ASGI ``receive`` that hands out ``chunks`` one message each, counting the reads."""

    def __init__(self, *chunks: bytes):
        self.chunks, self.reads = list(chunks), 0

    async def __call__(self):
        self.reads += 1
        if not self.chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}


def request(body: Body, content_type: str | None = None, content_length: int | None = None) -> Request:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "query_string": b"", "headers": headers}, body)


def refused(check, *args) -> HTTPException:
    """What ``check(*args)`` refuses with (a coroutine's result is awaited)."""
    with pytest.raises(HTTPException) as e:
        result = check(*args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    return e.value


def multipart(field: str, data: bytes, boundary: str = "xyz") -> tuple[bytes, str]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="a.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("k,ok", [(0, False), (1, True), (500, True), (501, False), (-3, False)])
def test_k_is_held_to_one_through_max_k(k, ok):
    if ok:
        assert LIMITS.check_k(k) == k
    else:
        e = refused(LIMITS.check_k, k)
        assert e.status_code == 422 and "k must be between 1 and 500" in e.detail


@pytest.mark.parametrize(
    "radius,num_codes,status,words",
    [
        (None, 64, None, ""),
        (0, 1, None, ""),
        (64, 1, None, ""),
        (65, 1, 422, "radius must be an integer between 0 and 64"),
        (-1, 1, 422, "radius must be an integer between 0 and 64"),
        (2.5, 1, 422, "radius must be an integer between 0 and 64"),
        (None, 65, 413, "at most 64"),
    ],
)
def test_a_query_is_held_to_max_queries_and_the_code_length(radius, num_codes, status, words):
    if status is None:
        assert LIMITS.check_query(7, radius, num_codes) == 7
    else:
        e = refused(LIMITS.check_query, 7, radius, num_codes)
        assert e.status_code == status and words in e.detail


def test_hex_codes_parse_or_say_what_is_wrong():
    np.testing.assert_array_equal(LIMITS.hex_codes(["0123456789abcdef"]), [[1, 35, 69, 103, 137, 171, 205, 239]])
    for codes, words in [(["00ff"], "4 hex digits (16 bits); this index holds 64-bit"), (["zz" * 8], "not valid hex")]:
        e = refused(LIMITS.hex_codes, codes)
        assert e.status_code == 422 and words in e.detail


@pytest.mark.parametrize(
    "body,words",
    [
        ({"codes": []}, "at least 1 item"),
        ({"codes": ["00"], "kk": 5}, "Extra inputs"),
        ({"codes": ["00"], "format": "rows"}, "'columns' or 'arrow'"),
    ],
)
def test_a_codes_query_refuses_what_it_does_not_know(body, words):
    with pytest.raises(ValidationError, match=words):
        CodesQuery.model_validate(body)
    assert CodesQuery.model_validate({"codes": ["00"]}).k == 10


def test_packed_codes_are_whole_codes_of_the_index_length():
    codes = np.arange(24, dtype=np.uint8).reshape(3, 8)
    got = asyncio.run(LIMITS.packed_codes(request(Body(codes[:2].tobytes(), codes[2].tobytes()), OCTETS)))
    np.testing.assert_array_equal(got, codes)
    cap = asyncio.run(LIMITS.packed_codes(request(Body(bytes(8 * 64)), OCTETS, 8 * 64)))  # exactly max_queries
    assert cap.shape == (64, 8)


@pytest.mark.parametrize(
    "content_type,chunks,length,status,words",
    [
        ("application/json", [b'{"codes": []}'], None, 415, "Content-Type application/json is not packed codes"),
        (None, [bytes(8)], None, 415, "Content-Type (none) is not packed codes"),
        (OCTETS, [b""], None, 400, "the body is empty"),
        (OCTETS, [bytes(12)], None, 422, "12 bytes is not a whole number of codes"),
        (OCTETS, [bytes(8 * 40)] * 2, None, 413, "the body exceeds 64 codes of 8 bytes"),
    ],
)
def test_packed_bodies_that_are_not_codes_are_refused(content_type, chunks, length, status, words):
    e = refused(LIMITS.packed_codes, request(Body(*chunks), content_type, length))
    assert e.status_code == status and words in e.detail


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read():
    body = Body(bytes(8 * 65))
    e = refused(LIMITS.packed_codes, request(body, OCTETS, 8 * 65))
    assert e.status_code == 413 and "the body of 520 bytes exceeds" in e.detail
    assert body.reads == 0


def test_a_streamed_body_stops_being_read_at_the_cap():
    body = Body(*[bytes(300)] * 10)
    e = refused(LIMITS.image_upload, request(body, "image/png"))
    assert e.status_code == 413 and "upload limit of 1000 bytes" in e.detail
    assert body.reads == 4  # 1,200 bytes read of 3,000: the fourth chunk passed the cap


@pytest.mark.parametrize("content_type", ["image/png", "IMAGE/JPEG; q=1", OCTETS])
def test_a_raw_image_upload_is_its_body(content_type):
    assert asyncio.run(LIMITS.image_upload(request(Body(b"\x89PNG", b"rest"), content_type))) == b"\x89PNGrest"


def test_a_multipart_upload_is_its_file_field():
    body, ctype = multipart("file", b"\x89PNG" * 250)  # the limit exactly, plus the framing
    assert asyncio.run(LIMITS.image_upload(request(Body(body), ctype, len(body)))) == b"\x89PNG" * 250


@pytest.mark.parametrize(
    "make,status,words",
    [
        (lambda: (b"", "image/png"), 400, "the upload is empty"),
        (lambda: (bytes(1001), "image/png"), 413, "exceeds the upload limit of 1000 bytes"),
        (lambda: (b"{}", "application/json"), 415, "Content-Type application/json is not an image upload"),
        (lambda: (b"x", None), 415, "Content-Type (none) is not an image upload"),
        (lambda: multipart("file", b""), 400, "the upload is empty"),
        (lambda: multipart("other", b"x"), 422, "no file field 'file' (fields: ['other'])"),
        (lambda: multipart("file", bytes(1001)), 413, "the image of 1001 bytes exceeds the upload limit"),
        (lambda: multipart("file", bytes(1000 + MULTIPART_SLACK)), 413, "bytes exceeds the upload limit of 1000 bytes"),
    ],
)
def test_image_uploads_that_are_not_usable_are_refused(make, status, words):
    data, ctype = make()
    e = refused(LIMITS.image_upload, request(Body(data), ctype, len(data)))
    assert e.status_code == status and words in e.detail


PQ_LIMITS = Limits(nbits=32, max_k=500, max_queries=64, max_upload_bytes=1000, pq_m=4, pq_k=16)


def test_pq_limits_take_m_byte_codes_and_a_float_radius():
    assert PQ_LIMITS.code_bytes == 4 and PQ_LIMITS.kind == "pq"
    np.testing.assert_array_equal(PQ_LIMITS.hex_codes(["000f0102"]), [[0, 15, 1, 2]])
    assert PQ_LIMITS.check_query(3, 123.5, 1) == 3
    for codes, words in ((["00" * 3], "M=4 bytes, i.e. 8 hex digits"), (["00000010"], "centroid 16")):
        assert words in refused(PQ_LIMITS.hex_codes, codes).detail
    for radius in (-0.5, float("inf"), float("nan")):
        assert "squared L2 distance of 0 or more" in refused(PQ_LIMITS.check_query, 3, radius, 1).detail


def _codes_body(n: int, **options) -> bytes:
    import orjson

    return orjson.dumps({"codes": ["ab" * 8] * n, **options})


def test_a_codes_body_is_capped_before_it_is_parsed():
    cap = LIMITS.max_json_bytes
    assert cap == 64 * (16 + 4) + 4096
    full = _codes_body(64, k=5, format="columns")
    query = asyncio.run(LIMITS.codes_query(request(Body(full), "application/json")))
    assert len(query.codes) == 64 and query.k == 5
    # one byte over the cap, announced: refused unread; streamed: refused at the byte that passes it
    over = full + b" " * (cap + 1 - len(full))
    assert "exceeds" in refused(LIMITS.codes_query, request(Body(), "application/json", len(over))).detail
    body = Body(*[over[i : i + 512] for i in range(0, len(over), 512)])
    assert refused(LIMITS.codes_query, request(body, "application/json")).status_code == 413
    assert body.reads == -(-(cap + 1) // 512)  # stopped reading there
    at_cap = full + b" " * (cap - len(full))  # exactly the cap: whitespace is valid JSON
    assert len(asyncio.run(LIMITS.codes_query(request(Body(at_cap), "application/json"))).codes) == 64


@pytest.mark.parametrize(
    "body,ctype,status,words",
    [
        (_codes_body(65), "application/json", 413, "65 codes in one request; this service takes at most 64"),
        (_codes_body(100_000), "application/json", 413, "exceeds"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 413, "exceeds"),
        (b"[" * 2000 + b"]" * 2000, "application/json", 422, "not valid JSON"),
        (b'{"codes": ["00"], "kk": 1}', "application/json", 422, "Extra inputs are not permitted"),
        (b'{"codes": "00"}', "application/json", 422, "valid list"),
        (_codes_body(1), "text/plain", 415, "is not JSON"),
    ],
)
def test_a_codes_body_that_is_too_big_deep_or_wrong_is_refused(body, ctype, status, words):
    e = refused(LIMITS.codes_query, request(Body(body), ctype))
    assert e.status_code == status and words in str(e.detail), e.detail
