"""A small HTTP client for the search service (plain ``requests``; no Ray needed)."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import requests

from rayhash.codespec import binary as codes_lib


class SearchError(RuntimeError):
    """The service answered with an error status; ``status`` and the service's ``detail`` say why."""

    def __init__(self, status: int, detail):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def answer_info(table: pa.Table) -> dict:
    """``{"k", "radius", "partial", "missing_shards", "index_version"}`` of an ``"arrow"`` answer."""
    return json.loads(table.schema.metadata[b"rayhash"])


def _parse_answer(r: requests.Response, format: str) -> list | pa.Table:
    """A search answer's results: a ``pyarrow.Table`` for ``"arrow"``, else the JSON ``results``."""
    return pa.ipc.open_stream(r.content).read_all() if format == "arrow" else r.json()["results"]


class SearchClient:
    """``SearchClient("http://127.0.0.1:8000").search_codes(["00ff..."], k=10)`` -> results per query.

    Each result is a list of ``{"id", "distance"}`` sorted by distance, then id.
    """

    def __init__(self, url: str, timeout: float = 30.0, token: str | None = None):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        if token:  # a service started with RAYHASH_API_TOKEN(_FILE) wants it on every call
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _request(self, method: str, path: str, **kw) -> requests.Response:
        r = self.session.request(method, self.url + path, timeout=self.timeout, **kw)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise SearchError(r.status_code, detail)
        return r

    def _send(self, method: str, path: str, **kw) -> dict:
        return self._request(method, path, **kw).json()

    def search_codes(
        self,
        codes: list[str] | np.ndarray,
        k: int = 10,
        radius: float | None = None,
        partial: bool = False,
        format: str = "objects",
    ) -> list[list[dict]] | list[dict] | pa.Table:
        """Nearest items of hex codes (or uint8 codes: packed bits ``(q, nbits/8)``, or pq ``(q, M)``).

        ``format``: ``"objects"``, one list of ``{"id", "distance"}`` per query; ``"columns"``, one
        ``{"ids": [...], "distances": [...]}`` per query; ``"arrow"``, a ``pyarrow.Table`` with a
        row per query (list columns ``ids`` and ``distances``; :func:`answer_info` reads its k,
        radius and partial flags), the cheapest to receive in bulk.
        """
        if isinstance(codes, np.ndarray):
            codes = codes_lib.to_hex(codes)
        body = {
            "codes": list(codes),
            "k": k,
            "partial": partial,
            "format": format,
            **({"radius": radius} if radius is not None else {}),
        }
        return _parse_answer(self._request("POST", "/search/codes", json=body), format)

    def search_packed(
        self, codes: np.ndarray, k: int = 10, radius: float | None = None, partial: bool = False, format: str = "arrow"
    ) -> list[list[dict]] | list[dict] | pa.Table:
        """:meth:`search_codes` for uint8 codes ``(q, nbits/8)`` (pq: ``(q, M)``), sent as raw bytes to
        ``/search/packed``: no hex and no JSON on either side. Answers in ``format`` as there;
        ``"arrow"`` by default, the bulk client's choice."""
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2:
            raise ValueError(f"codes must be uint8 of shape (queries, bytes per code), got shape {codes.shape}")
        params = {"k": k, "partial": partial, "format": format, **({"radius": radius} if radius is not None else {})}
        r = self._request(
            "POST",
            "/search/packed",
            params=params,
            data=codes.tobytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        return _parse_answer(r, format)

    def search_image(self, image: bytes | str | os.PathLike, k: int = 10, partial: bool = False) -> list[dict]:
        """Nearest items of an image given as encoded bytes (PNG, JPEG, ...) or a file path."""
        data = image if isinstance(image, (bytes, bytearray)) else open(image, "rb").read()
        files = {"file": ("image", bytes(data), "application/octet-stream")}
        return self._send("POST", "/search/image", params={"k": k, "partial": partial}, files=files)["results"]

    def neighbors(self, item_id: str, k: int = 10, partial: bool = False) -> list[dict]:
        """Nearest items of an indexed item, itself excluded."""
        return self._send("GET", f"/items/{quote(item_id, safe='')}/neighbors", params={"k": k, "partial": partial})[
            "results"
        ]

    def add_items(self, items: dict[str, str | np.ndarray]) -> dict:
        """Add (or replace) items ``{id: code}`` (hex, or uint8 codes) on a service with writes on;
        answers ``{"seq", "added", "replaced"}`` once the write is durable."""
        body = [
            {"id": i, "code": c if isinstance(c, str) else bytes(np.asarray(c, np.uint8)).hex()}
            for i, c in items.items()
        ]
        return self._send("POST", "/items", json={"items": body})

    def add_image(self, item_id: str, image: bytes | str | os.PathLike) -> dict:
        """Add (or replace) ``item_id`` with the code the service's own encoder gives ``image``."""
        data = image if isinstance(image, (bytes, bytearray)) else open(image, "rb").read()
        files = {"file": ("image", bytes(data), "application/octet-stream")}
        return self._send("POST", f"/items/{quote(item_id, safe='')}/image", files=files)

    def delete_item(self, item_id: str) -> dict:
        """Delete ``item_id``: ``{"seq", "deleted"}``, or :class:`SearchError` 404 if it is not served."""
        return self._send("DELETE", f"/items/{quote(item_id, safe='')}")

    def stats(self) -> dict:
        return self._send("GET", "/stats")

    def healthz(self) -> dict:
        return self._send("GET", "/healthz")
