"""The search service's own metrics, exported through Ray's metrics agent (``ray.util.metrics``).

Ray serves them in Prometheus format on each node's metrics export port (``ray.nodes()[i]
["MetricsExportPort"]``, or ``--metrics-export-port`` of ``ray start``), prefixed ``ray_``,
beside Ray's and Serve's own; ``infra/README.md`` says where they go on a cluster, and
``infra/grafana/rayhash-search.json`` plots them.

- ``rayhash_requests_total{route, status}``: every HTTP answer of the ingress;
- ``rayhash_request_latency_ms{route}``: time from the request reaching the ingress to its answer;
- ``rayhash_rejects_total{route, reason}``: 4xx and 5xx answers, by what they say was wrong;
- ``rayhash_shard_items{shard, index_version}``: items a loaded shard holds (a gauge per shard
  replica), ``index_version`` being the first 12 hex digits of the index manifest's SHA-256;
- ``rayhash_encoder_batch_size``: images per encoder batch (a histogram).

Routes are labelled by their template (``/items/{id}/neighbors``), never by the raw path, so
the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import time

LATENCY_MS_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
ROUTES = ("/search/codes", "/search/packed", "/search/image", "/stats", "/healthz", "/docs", "/openapi.json")
REASONS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal_error",
    503: "unavailable",
}


def route_of(path: str) -> str:
    """The route template ``path`` falls under (the app's route prefix ignored), or ``other``."""
    path = path.rstrip("/")
    if "/items/" in path and path.endswith("/neighbors"):
        return "/items/{id}/neighbors"
    return next((r for r in ROUTES if path.endswith(r)), "other")


def reason_of(status: int) -> str:
    return REASONS.get(status, f"http_{status}")


class RequestMetrics:
    """ASGI middleware counting and timing every answer of the ingress (outermost, so refusals
    by the token check count too)."""

    def __init__(self, app):
        from ray.util.metrics import Counter, Histogram

        self.app = app
        self.requests = Counter(
            "rayhash_requests_total", description="HTTP answers by route and status", tag_keys=("route", "status")
        )
        self.latency = Histogram(
            "rayhash_request_latency_ms",
            description="time from a request reaching the ingress to its answer",
            boundaries=LATENCY_MS_BOUNDARIES,
            tag_keys=("route",),
        )
        self.rejects = Counter(
            "rayhash_rejects_total", description="4xx and 5xx answers by reason", tag_keys=("route", "reason")
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = route_of(scope.get("path", ""))
            self.requests.inc(1, tags={"route": route, "status": str(status[0])})
            self.latency.observe((time.perf_counter() - started) * 1e3, tags={"route": route})
            if status[0] >= 400:
                self.rejects.inc(1, tags={"route": route, "reason": reason_of(status[0])})


def shard_items_gauge():
    from ray.util.metrics import Gauge

    return Gauge(
        "rayhash_shard_items", description="items a loaded index shard holds", tag_keys=("shard", "index_version")
    )


def encoder_batch_histogram():
    from ray.util.metrics import Histogram

    return Histogram("rayhash_encoder_batch_size", description="images per encoder batch", boundaries=BATCH_BOUNDARIES)
