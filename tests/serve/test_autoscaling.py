"""Serve autoscaling that load reaches: under a bounded load loop on loopback the ingress and a
shard scale up, and come back down once it stops. A target no load could reach is refused."""

import threading
import time

import numpy as np
import pytest
import requests
from test_search_service import free_port

from rayhash.encode.codeset import write_codeset
from rayhash.index import build_index_set
from rayhash.serve import ServeConfig, build_app, start

APP = "rayhash-autoscale"
FAST = {"upscale_delay_s": 0.5, "downscale_delay_s": 3.0, "metrics_interval_s": 0.5, "look_back_period_s": 1.0}


def running_replicas(role: str) -> int:
    from ray import serve

    deployments = serve.status().applications[APP].deployments
    return deployments[role].replica_states.get("RUNNING", 0)


def wait_for(condition, timeout_s: float, what: str) -> float:
    start_t = time.monotonic()
    while time.monotonic() - start_t < timeout_s:
        if condition():
            return time.monotonic() - start_t
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout_s:g} s")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("autoscale")
    rng = np.random.default_rng(0)
    ids = [f"{i:07d}" for i in range(200_000)]  # enough codes that a search takes a while
    cs = write_codeset(
        str(root / "codes"),
        ids=ids,
        codes=rng.integers(0, 256, (len(ids), 8), dtype=np.uint8),
        sources=ids,
        nbits=64,
        checkpoint_uri="none",
        checkpoint_sha256="0" * 64,
        config={},
    )
    return build_index_set(cs.uri, str(root / "index"))


def test_a_shard_target_no_load_reaches_is_refused(index):
    scaling = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16}}
    with pytest.raises(ValueError, match="target_ongoing_requests=16 is never reached.*below 4"):
        build_app(ServeConfig(index=index.uri, encode_images=False, shards=scaling))
    ok = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}}
    build_app(ServeConfig(index=index.uri, encode_images=False, shards=ok))


def test_replicas_go_up_under_load_and_back_down(ray_cluster, index):
    from ray import serve

    url = start(
        index.uri,
        encode_images=False,
        port=free_port(),
        name=APP,
        route_prefix="/autoscale",
        ingress={"autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, **FAST}},
        shards={"autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, **FAST}},
    )
    stop, answered, failed = threading.Event(), [], []
    body = {"codes": [bytes(range(8)).hex()] * 8, "k": 100}

    def client():
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(f"{url}/search/codes", json=body, timeout=30)
                (answered if r.status_code == 200 else failed).append(r.status_code)

    try:
        assert running_replicas("ingress") == 1 and running_replicas("shard-0") == 1
        clients = [threading.Thread(target=client, daemon=True) for _ in range(12)]
        for t in clients:
            t.start()
        wait_for(lambda: running_replicas("shard-0") == 2, 90, "the shard did not scale to 2 replicas under load")
        wait_for(lambda: running_replicas("ingress") == 2, 90, "the ingress did not scale to 2 replicas under load")
        stop.set()
        for t in clients:
            t.join(timeout=60)
        wait_for(
            lambda: running_replicas("shard-0") == 1 and running_replicas("ingress") == 1,
            120,
            "the replicas did not come back down once the load stopped",
        )
        assert answered and not failed, failed[:5]  # scaling up and down lost no request
    finally:
        stop.set()
        serve.delete(APP)
