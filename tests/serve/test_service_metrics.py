"""The service's own metrics, scraped from Ray's metrics endpoint after real HTTP requests."""

import time

import numpy as np
import pytest
import requests
from test_search_service import free_port, png

from rayhash.encode.codeset import write_codeset
from rayhash.index import build_index_set
from rayhash.models.encoder import ImageEncoder
from rayhash.serve import SearchClient, SearchError, start
from rayhash.serve.metrics import reason_of, route_of

APP = "rayhash-metrics"


@pytest.mark.parametrize(
    "path,route",
    [
        ("/search/codes", "/search/codes"),
        ("/prefix/search/image", "/search/image"),
        ("/items/a%2Fb/neighbors", "/items/{id}/neighbors"),
        ("/items/x/neighbors/", "/items/{id}/neighbors"),
        ("/healthz", "/healthz"),
        ("/etc/passwd", "other"),
    ],
)
def test_routes_are_labelled_by_template(path, route):
    assert route_of(path) == route


def test_reasons_name_the_status():
    assert [reason_of(s) for s in (401, 413, 422, 503, 418)] == [
        "unauthorized",
        "too_large",
        "invalid",
        "unavailable",
        "http_418",
    ]


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_the_service_exports_its_metrics(ray_cluster, tmp_path, fashion_mnist, tiny_checkpoint):
    from ray import serve

    encoder = ImageEncoder.from_checkpoint(tiny_checkpoint, device="cpu")
    images = fashion_mnist.images[:100]
    ids = [f"img/{i}" for i in range(100)]
    cs = write_codeset(
        str(tmp_path / "codes"),
        ids=ids,
        codes=encoder.encode(list(images)),
        sources=ids,
        nbits=64,
        checkpoint_uri=tiny_checkpoint,
        checkpoint_sha256=encoder.checkpoint_sha256,
        config={},
    )
    index = build_index_set(cs.uri, str(tmp_path / "index"), num_shards=2)
    url = start(index.uri, port=free_port(), name=APP, route_prefix="/metrics-test")
    try:
        client = SearchClient(url)
        client.search_codes(np.zeros((2, 8), np.uint8), k=5)
        client.search_image(png(images[3]), k=5)
        with pytest.raises(SearchError):
            client.search_codes(["00ff"], k=5)  # a 422: wrong code length
        with pytest.raises(SearchError):
            client.neighbors("no/such/item")  # a 404
        port = ray_cluster.nodes()[0]["MetricsExportPort"]
        version = index.sha256[:12]
        wanted = [
            "ray_rayhash_requests_total{",
            'route="/search/codes"',
            'status="422"',
            "ray_rayhash_request_latency_ms_bucket{",
            'reason="invalid"',
            'reason="not_found"',
            'route="/items/{id}/neighbors"',
            f'index_version="{version}"',
            "ray_rayhash_encoder_batch_size_bucket{",
        ]
        deadline, text = time.monotonic() + 90, ""
        while time.monotonic() < deadline:  # Ray's agent exports every few seconds
            text = scrape(port)
            if all(w in text for w in wanted):
                break
            time.sleep(2)
        missing = [w for w in wanted if w not in text]
        assert not missing, missing
        items = [line for line in text.splitlines() if line.startswith("ray_rayhash_shard_items{")]
        assert sorted(float(line.rsplit(" ", 1)[1]) for line in items if version in line)[-2:] == [50.0, 50.0]
    finally:
        serve.delete(APP)


def test_the_grafana_dashboard_plots_the_exported_metrics():
    import json
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "infra" / "grafana" / "rayhash-search.json").read_text()
    )
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for name in ("requests_total", "request_latency_ms_bucket", "rejects_total", "shard_items", "encoder_batch_size"):
        assert f"ray_rayhash_{name}" in exprs, name
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
