"""The hostile requests of ``benchmarks/chaos.py``: every limit, parser and route of the search
service fed what a careless or hostile client sends. Each should get a 4xx that says what is
wrong; the suite records whatever comes back."""

from __future__ import annotations

import io
import socket
import struct
import time
import zlib
from urllib.parse import quote, urlsplit

import numpy as np
import requests
from PIL import Image

TOKEN = "chaos-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"headers": {"Content-Type": "application/json"}}


def _image(fmt: str, size=(28, 28)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, fmt)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` with almost no pixel data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


def _slow_partial_body(url: str, path: str, declared: int, wait_s: float = 10.0) -> int | str:
    """Declare a body of ``declared`` bytes, send 100, then stall: the answer's status, or ``no_answer``."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=wait_s) as s:
        head = (
            f"POST {parts.path}{path} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {declared}\r\n\r\n"
        )
        s.sendall(head.encode() + b'{"codes": [' + b'"00",' * 19)
        try:
            reply = s.recv(256)
        except TimeoutError:
            return "no_answer"
    return int(reply.split()[1]) if reply.startswith(b"HTTP/") else "closed"


# What each case should get where it is not its group's usual refusal (see EXPECTED).
EXPECTED = {
    "deep JSON nesting (100k levels)": 413,
    "deep JSON nesting within the size cap": 422,
    "100k codes in one request": 413,
    "257 codes (max_queries 256)": 413,
    "a 1 MB string": 413,
    "text/plain": 415,
    "an empty packed body": 400,
    "packed codes as JSON": 415,
    "300 packed codes": 413,
    "an empty upload": 400,
    "a decompression bomb header": 413,
    "a 6.8 MP PNG (over the 4 MP cap)": 413,
    "a TIFF upload": 415,
    "a GIF upload": 415,
    "a BMP upload": 415,
    "a 9 MB upload": 413,
    "an image as JSON": 415,
    "a unicode id": 404,
    "a path-like id": 404,
    "an id with a NUL": 404,
    "a 10k-character id": 404,
    "PUT on a search route": 405,
    "an unknown route": 404,
    "a 64 kB header": 200,  # large but harmless: answered
    "a slow body declaring more than the cap": 413,
    "a slow body within the cap": "no_answer",  # the connection waits for its body; others are served
}


def expected(case: str) -> int | str:
    if case in EXPECTED:
        return EXPECTED[case]
    return 401 if "token" in case or case == "basic auth" else 422


def hostile_requests(url: str, corpus) -> tuple[list[tuple[str, int | str]], list[float]]:
    """``([(case, status)], latencies in ms)``; at least 40 cases."""
    code = corpus.to_hex(corpus.codes[:1])[0]
    big_png = io.BytesIO()
    Image.fromarray(np.zeros((2600, 2600), np.uint8)).save(big_png, "PNG")  # 6.8 MP, a small file
    cases = {
        # authentication
        "no token": ("post", "/search/codes", {"json": {"codes": [code]}}, False),
        "wrong token": (
            "post",
            "/search/codes",
            {"json": {"codes": [code]}, "headers": {"Authorization": "Bearer x"}},
            False,
        ),
        "token in the query string": ("post", f"/search/codes?token={TOKEN}", {"json": {"codes": [code]}}, False),
        "basic auth": ("post", "/search/codes", {"json": {"codes": [code]}, "auth": ("u", TOKEN)}, False),
        "stats without a token": ("get", "/stats", {}, False),
        "docs without a token": ("get", "/docs", {}, False),
        # /search/codes bodies
        "deep JSON nesting (100k levels)": (
            "post",
            "/search/codes",
            {"data": b"[" * 100_000 + b"]" * 100_000, **JSON},
            True,
        ),
        "deep JSON nesting within the size cap": (
            "post",
            "/search/codes",
            {"data": b"[" * 2000 + b"]" * 2000, **JSON},
            True,
        ),
        "100k codes in one request": ("post", "/search/codes", {"json": {"codes": [code] * 100_000}}, True),
        "257 codes (max_queries 256)": ("post", "/search/codes", {"json": {"codes": [code] * 257}}, True),
        "a code of the wrong length": ("post", "/search/codes", {"json": {"codes": ["00ff"]}}, True),
        "a code that is not hex": ("post", "/search/codes", {"json": {"codes": ["zz" * 8]}}, True),
        "a code as a number": ("post", "/search/codes", {"json": {"codes": [12345]}}, True),
        "no codes": ("post", "/search/codes", {"json": {"codes": []}}, True),
        "k = 0": ("post", "/search/codes", {"json": {"codes": [code], "k": 0}}, True),
        "k = 10^9": ("post", "/search/codes", {"json": {"codes": [code], "k": 10**9}}, True),
        "k as a word": ("post", "/search/codes", {"json": {"codes": [code], "k": "ten"}}, True),
        "a negative radius": ("post", "/search/codes", {"json": {"codes": [code], "radius": -1}}, True),
        "a radius of 1e308": ("post", "/search/codes", {"json": {"codes": [code], "radius": 1e308}}, True),
        "an unknown key": ("post", "/search/codes", {"json": {"codes": [code], "kk": 1}}, True),
        "a body that is not JSON": (
            "post",
            "/search/codes",
            {"data": b"codes=00", "headers": {"Content-Type": "application/json"}},
            True,
        ),
        "a JSON array body": ("post", "/search/codes", {"json": [code]}, True),
        "JSON null": (
            "post",
            "/search/codes",
            {"data": b"null", "headers": {"Content-Type": "application/json"}},
            True,
        ),
        "text/plain": ("post", "/search/codes", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}, True),
        "unicode in a code": ("post", "/search/codes", {"json": {"codes": ["ü" * 16]}}, True),
        "a 1 MB string": ("post", "/search/codes", {"json": {"codes": ["0" * (1 << 20)]}}, True),
        # /search/packed
        "7 bytes of packed codes": (
            "post",
            "/search/packed",
            {"data": bytes(7), "headers": {"Content-Type": "application/octet-stream"}},
            True,
        ),
        "an empty packed body": (
            "post",
            "/search/packed",
            {"data": b"", "headers": {"Content-Type": "application/octet-stream"}},
            True,
        ),
        "packed codes as JSON": ("post", "/search/packed", {"json": {"codes": [code]}}, True),
        "300 packed codes": (
            "post",
            "/search/packed",
            {"data": bytes(8 * 300), "headers": {"Content-Type": "application/octet-stream"}},
            True,
        ),
        # /search/image
        "an empty upload": ("post", "/search/image", {"files": {"file": ("a.png", b"")}}, True),
        "not an image": ("post", "/search/image", {"files": {"file": ("a.png", b"hello, world")}}, True),
        "a truncated PNG": ("post", "/search/image", {"files": {"file": ("a.png", corpus.png(0)[:60])}}, True),
        "a decompression bomb header": (
            "post",
            "/search/image",
            {"files": {"file": ("b.png", _png_header(100_000, 100_000))}},
            True,
        ),
        "a 6.8 MP PNG (over the 4 MP cap)": (
            "post",
            "/search/image",
            {"files": {"file": ("big.png", big_png.getvalue())}},
            True,
        ),
        "a TIFF upload": ("post", "/search/image", {"files": {"file": ("a.tif", _image("TIFF"))}}, True),
        "a GIF upload": ("post", "/search/image", {"files": {"file": ("a.gif", _image("GIF"))}}, True),
        "a BMP upload": ("post", "/search/image", {"files": {"file": ("a.bmp", _image("BMP"))}}, True),
        "a 9 MB upload": (
            "post",
            "/search/image",
            {"data": bytes(9 << 20), "headers": {"Content-Type": "image/png"}},
            True,
        ),
        "multipart without a file field": (
            "post",
            "/search/image",
            {"files": {"other": ("a.png", corpus.png(0))}},
            True,
        ),
        "an image as JSON": ("post", "/search/image", {"json": {"image": "aGVsbG8="}}, True),
        # /items/{id}/neighbors
        "a unicode id": ("get", f"/items/{quote('ünïcødé/😀', safe='')}/neighbors", {}, True),
        "a path-like id": ("get", f"/items/{quote('../../etc/passwd', safe='')}/neighbors", {}, True),
        "an id with a NUL": ("get", "/items/a%00b/neighbors", {}, True),
        "a 10k-character id": ("get", f"/items/{'x' * 10_000}/neighbors", {}, True),
        "k = -1 for neighbours": ("get", "/items/fmnist%2F00001/neighbors", {"params": {"k": -1}}, True),
        # anything else
        "PUT on a search route": ("put", "/search/codes", {"json": {"codes": [code]}}, True),
        "an unknown route": ("get", "/admin", {}, True),
        "a 64 kB header": (
            "post",
            "/search/codes",
            {"json": {"codes": [code]}, "headers": {"X-Big": "x" * 65536}},
            True,
        ),
    }
    answers, latencies = [], []
    for name, (method, path, kw, with_token) in cases.items():
        headers = {**(AUTH if with_token else {}), **kw.pop("headers", {})}
        started = time.perf_counter()
        try:
            status = getattr(requests, method)(url + path, headers=headers, timeout=30, **kw).status_code
        except requests.RequestException as e:
            status = f"exception: {type(e).__name__}"
        latencies.append((time.perf_counter() - started) * 1e3)
        answers.append((name, status))
    for name, declared in (("a slow body declaring more than the cap", 100_000), ("a slow body within the cap", 2000)):
        started = time.perf_counter()
        answers.append((name, _slow_partial_body(url, "/search/codes", declared)))
        latencies.append((time.perf_counter() - started) * 1e3)
    return answers, latencies
