"""The search service over real HTTP: a real Serve app on the session's local Ray cluster.

One app serves an index of 600 Fashion-MNIST codes from the tiny checkpoint plus 2,400
random 64-bit codes (whose distances crowd around 32, so the k-th distance is nearly always
tied), in 2 shards of 2 replicas each. The tests that kill replicas run last.
"""

import io
import socket
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

from rayhash.codespec import binary as codes_lib
from rayhash.encode.codeset import write_codeset
from rayhash.index import build_index_set
from rayhash.models.encoder import ImageEncoder
from rayhash.serve import SearchClient, SearchError, answer_info, start

APP = "rayhash-search-test"
N_IMAGES, N_RANDOM = 600, 2400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arrow_rows(table) -> list[list[dict]]:
    """An ``"arrow"`` answer in the default format's shape, to compare with the reference."""
    return [
        [{"id": i, "distance": d} for i, d in zip(ids, dist)]
        for ids, dist in zip(table["ids"].to_pylist(), table["distances"].to_pylist())
    ]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


class Corpus:
    def __init__(self, root, fashion_mnist, checkpoint_uri):
        self.encoder = ImageEncoder.from_checkpoint(checkpoint_uri, device="cpu")
        self.images = fashion_mnist.images[:N_IMAGES]
        rng = np.random.default_rng(0)
        self.codes = np.vstack(
            [self.encoder.encode(list(self.images)), rng.integers(0, 256, (N_RANDOM, 8), dtype=np.uint8)]
        )
        self.ids = np.array(
            [f"fmnist/{i:05d}" for i in range(N_IMAGES)] + [f"rand/{i}" for i in range(N_RANDOM)], dtype=object
        )
        cs = write_codeset(
            str(root / "codes"),
            ids=list(self.ids),
            codes=self.codes,
            sources=list(self.ids),
            nbits=64,
            checkpoint_uri=checkpoint_uri,
            checkpoint_sha256=self.encoder.checkpoint_sha256,
            config={},
        )
        self.index = build_index_set(cs.uri, str(root / "index"), num_shards=2)
        self.rank = np.argsort(np.argsort(self.ids.astype(str)))

    def brute_force(self, queries: np.ndarray, k: int, among: np.ndarray | None = None) -> list[list[dict]]:
        """Reference results: every item (or those in ``among``) sorted by (Hamming distance, id), first k."""
        among = np.arange(len(self.ids)) if among is None else among
        d = codes_lib.hamming(queries, self.codes[among])
        order = np.lexsort((np.broadcast_to(self.rank[among], d.shape), d), axis=1)[:, :k]
        return [[{"id": self.ids[among[j]], "distance": int(row_d[j])} for j in row] for row, row_d in zip(order, d)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fashion_mnist, tiny_checkpoint):
    return Corpus(tmp_path_factory.mktemp("served"), fashion_mnist, tiny_checkpoint)


@pytest.fixture(scope="module")
def url(ray_cluster, corpus):
    from ray import serve

    base = start(
        corpus.index.uri,
        port=free_port(),
        name=APP,
        route_prefix="/rayhash-test",
        ready_timeout_s=240,
        max_k=500,
        max_queries=64,
        max_upload_bytes=256 << 10,
        max_pixels=1_000_000,
        timeout_s=4.0,
        # A long health-check period keeps killed replicas dead for the failure tests.
        shards={"num_replicas": 2, "health_check_period_s": 120},
    )
    yield base
    serve.delete(APP)


@pytest.fixture(scope="module")
def client(url):
    return SearchClient(url)


def queries(corpus, n=24, seed=1):
    rng = np.random.default_rng(seed)
    near = corpus.codes[rng.choice(len(corpus.codes), n // 2)] ^ (rng.random((n // 2, 8)) < 0.05).astype(np.uint8)
    return np.vstack([near, rng.integers(0, 256, (n - n // 2, 8), dtype=np.uint8)])


def test_stats_healthz_and_docs(url, client, corpus, tiny_checkpoint):
    stats = client.stats()
    assert (stats["shards"], stats["items"], stats["nbits"]) == (2, N_IMAGES + N_RANDOM, 64)
    assert (
        stats["model"]["checkpoint_sha256"] == corpus.encoder.checkpoint_sha256 == stats["encoder"]["checkpoint_sha256"]
    )
    assert stats["codeset"]["manifest_sha256"] == corpus.index.codeset_manifest_sha256
    assert stats["index"] == {
        "uri": corpus.index.uri,
        "manifest_sha256": corpus.index.sha256,
        "kind": "flat",
        "params": {},
    }
    assert client.healthz()["status"] == "ok"
    paths = requests.get(f"{url}/openapi.json", timeout=10).json()["paths"]
    assert {
        "/search/codes",
        "/search/packed",
        "/search/image",
        "/items/{item_id}/neighbors",
        "/stats",
        "/healthz",
    } <= set(paths)


@pytest.mark.parametrize("k", [1, 10, 100, 500])
def test_sharded_results_equal_brute_force(client, corpus, k):
    q = queries(corpus)
    assert client.search_codes(codes_lib.to_hex(q), k=k) == corpus.brute_force(q, k)


def test_radius_keeps_the_nearest_within_it(client, corpus):
    q = queries(corpus, seed=2)
    got = client.search_codes(q, k=50, radius=20)
    want = [[r for r in row if r["distance"] <= 20] for row in corpus.brute_force(q, 50)]
    assert got == want and any(len(r) < 50 for r in got) and any(r for r in got)
    table = client.search_codes(q, k=50, radius=20, format="arrow")
    assert arrow_rows(table) == want and table.num_rows == len(q)
    info = answer_info(table)
    assert info.pop("index_version") == requests.get(f"{client.url}/stats", timeout=30).json()["index_version"]
    assert info == {"k": 50, "radius": 20, "partial": False, "missing_shards": []}
    assert arrow_rows(client.search_codes(q, k=50, format="arrow")) == corpus.brute_force(q, 50)


def test_packed_codes_find_what_their_hex_finds(url, client, corpus):
    q = queries(corpus, seed=4)
    want = corpus.brute_force(q, 40)
    assert arrow_rows(client.search_packed(q, k=40)) == want
    assert client.search_packed(q, k=40, format="objects") == want
    within = [[r for r in row if r["distance"] <= 24] for row in want]
    table = client.search_packed(q, k=40, radius=24)
    assert arrow_rows(table) == within and answer_info(table)["radius"] == 24
    # the raw route, as any HTTP client sends it
    r = requests.post(
        f"{url}/search/packed",
        params={"k": 40, "format": "columns"},
        data=q.tobytes(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [
        {"ids": [x["id"] for x in row], "distances": [x["distance"] for x in row]} for row in want
    ]


@pytest.mark.parametrize("as_multipart", [True, False])
def test_image_upload_finds_what_its_code_finds(url, corpus, as_multipart):
    image = corpus.images[7]
    code = corpus.encoder.encode([image])
    kw = (
        {"files": {"file": ("shirt.png", png(image), "image/png")}}
        if as_multipart
        else {"data": png(image), "headers": {"Content-Type": "image/png"}}
    )
    r = requests.post(f"{url}/search/image", params={"k": 25}, timeout=30, **kw)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["code"] == codes_lib.to_hex(code)[0] and body["partial"] is False
    assert body["results"] == corpus.brute_force(code, 25)[0]
    # the image itself is at distance 0 (an untrained model gives other images the same code too)
    assert {"id": "fmnist/00007", "distance": 0} in body["results"]


@pytest.mark.parametrize("item", ["fmnist/00003", "rand/17"])
def test_neighbors_of_an_indexed_item_exclude_itself(client, corpus, item):
    j = int(np.flatnonzero(corpus.ids == item)[0])
    want = [r for r in corpus.brute_force(corpus.codes[j : j + 1], 31)[0] if r["id"] != item][:30]
    assert client.neighbors(item, k=30) == want


BIG = b"\x89PNG" + bytes(300 << 10)
OCTETS = "application/octet-stream"


def bomb_png() -> bytes:
    return png(np.zeros((1200, 1200, 1), np.uint8))  # 1.44 Mpx, a few KB compressed; the app allows 1 Mpx


BAD_REQUESTS = [
    # (method, path, request kwargs, status, words the message must contain)
    (
        "post",
        "/search/codes",
        {"json": {"codes": ["00ff"], "k": 5}},
        422,
        "4 hex digits (16 bits); this index holds 64-bit",
    ),
    ("post", "/search/codes", {"json": {"codes": ["zz" * 8]}}, 422, "not valid hex"),
    ("post", "/search/codes", {"json": {"codes": []}}, 422, "at least 1 item"),
    ("post", "/search/codes", {"json": {"codes": ["00" * 8], "k": 0}}, 422, "k must be between 1 and 500"),
    ("post", "/search/codes", {"json": {"codes": ["00" * 8], "k": 501}}, 422, "k must be between 1 and 500"),
    (
        "post",
        "/search/codes",
        {"json": {"codes": ["00" * 8], "radius": 65}},
        422,
        "radius must be an integer between 0 and 64",
    ),
    ("post", "/search/codes", {"json": {"codes": ["00" * 8], "kk": 5}}, 422, "Extra inputs are not permitted"),
    ("post", "/search/codes", {"json": {"codes": ["00" * 8], "format": "rows"}}, 422, "'columns' or 'arrow'"),
    ("post", "/search/codes", {"json": {"codes": ["00" * 8] * 65}}, 413, "at most 64"),
    ("post", "/search/codes", {"data": b"not json", "headers": {"Content-Type": "application/json"}}, 422, "JSON"),
    (
        "post",
        "/search/packed",
        {"data": bytes(12), "headers": {"Content-Type": OCTETS}},
        422,
        "12 bytes is not a whole number of codes: this index holds 64-bit codes, 8 bytes each",
    ),
    ("post", "/search/packed", {"data": b"", "headers": {"Content-Type": OCTETS}}, 400, "the body is empty"),
    (
        "post",
        "/search/packed",
        {"data": bytes(8 * 65), "headers": {"Content-Type": OCTETS}},
        413,
        "exceeds 64 codes of 8 bytes",
    ),
    (
        "post",
        "/search/packed",
        {"data": iter([bytes(8 * 40)] * 2), "headers": {"Content-Type": OCTETS}},
        413,
        "the body exceeds 64 codes",
    ),
    ("post", "/search/packed", {"json": {"codes": ["00" * 8]}}, 415, "send the codes' bytes"),
    (
        "post",
        "/search/packed",
        {"data": bytes(8), "params": {"k": 0}, "headers": {"Content-Type": OCTETS}},
        422,
        "k must be between 1 and 500",
    ),
    (
        "post",
        "/search/packed",
        {"data": bytes(8), "params": {"radius": 70}, "headers": {"Content-Type": OCTETS}},
        422,
        "radius must be an integer between 0 and 64",
    ),
    (
        "post",
        "/search/packed",
        {"data": bytes(8), "params": {"format": "rows"}, "headers": {"Content-Type": OCTETS}},
        422,
        "'columns' or 'arrow'",
    ),
    ("get", "/items/no-such-item/neighbors", {}, 404, "no item with id 'no-such-item'"),
    ("delete", "/items/rand%2F1", {}, 405, "start it with writes=true"),
    ("post", "/items", {"json": {"items": [{"id": "a", "code": "00" * 8}]}}, 405, "this service is read-only"),
    ("get", "/items/rand%2F1/neighbors", {"params": {"k": "ten"}}, 422, "valid integer"),
    ("get", "/items/rand%2F1/neighbors", {"params": {"k": 9999}}, 422, "k must be between 1 and 500"),
    ("post", "/search/image", {"data": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty"),
    ("post", "/search/image", {"files": {"file": ("a.png", b"", "image/png")}}, 400, "empty"),
    (
        "post",
        "/search/image",
        {"data": BIG, "headers": {"Content-Type": "image/png"}},
        413,
        "upload limit of 262144 bytes",
    ),
    (
        "post",
        "/search/image",
        {
            "data": iter([BIG[i : i + 65536] for i in range(0, len(BIG), 65536)]),
            "headers": {"Content-Type": "image/png"},
        },
        413,
        "exceeds the upload limit",
    ),
    (
        "post",
        "/search/image",
        {"data": b"GIF89a-not-really" * 10, "headers": {"Content-Type": "image/gif"}},
        422,
        "not a usable image",
    ),
    ("post", "/search/image", {"files": {"file": ("a.txt", b"hello, world", "text/plain")}}, 422, "not_an_image"),
    ("post", "/search/image", {"files": {"other": ("a.png", b"x", "image/png")}}, 422, "no file field 'file'"),
    ("post", "/search/image", {"json": {"image": "..."}}, 415, "Content-Type application/json is not an image upload"),
    (
        "post",
        "/search/image",
        {
            "data": png(np.random.default_rng(0).integers(0, 256, (28, 28, 1), np.uint8))[:400],
            "headers": {"Content-Type": "image/png"},
        },
        422,
        "not a usable image",
    ),
    (
        "post",
        "/search/image",
        {"data": bomb_png(), "headers": {"Content-Type": "image/png"}},
        413,
        "decompression_bomb",
    ),
    (
        "post",
        "/search/image",
        {"data": png(np.zeros((28, 28, 1), np.uint8)), "params": {"k": -1}, "headers": {"Content-Type": "image/png"}},
        422,
        "k must be between 1",
    ),
]


@pytest.mark.parametrize("method,path,kw,status,words", BAD_REQUESTS, ids=[f"{b[3]}-{b[4][:28]}" for b in BAD_REQUESTS])
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(url, client, method, path, kw, status, words):
    r = getattr(requests, method)(url + path, timeout=30, **kw)
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"]), r.text
    assert client.healthz()["status"] == "ok"  # and the service keeps answering


def test_client_raises_the_services_message(client):
    with pytest.raises(SearchError, match="no item with id 'nope'") as e:
        client.neighbors("nope")
    assert e.value.status == 404


def replicas(deployment: str) -> list:
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    return [ray.get_actor(name, namespace="serve") for name in names]


def test_killing_one_replica_under_load_keeps_requests_succeeding(url, corpus):
    import ray

    # Heavy requests (the most codes and the largest k the app allows) keep the shard replicas
    # busy, so the kill lands on requests in flight, which only the ingress's retry can save.
    q = queries(corpus, n=64, seed=3)
    want = corpus.brute_force(q, 500)
    failures, answered, stop = [], [], threading.Event()

    def load():
        session = requests.Session()
        while not stop.is_set():
            r = session.post(f"{url}/search/codes", json={"codes": codes_lib.to_hex(q), "k": 500}, timeout=30)
            answered.append(time.monotonic())
            if r.status_code != 200 or r.json()["results"] != want:
                failures.append((r.status_code, r.text[:300]))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    shard0 = replicas("shard-0")
    assert len(shard0) == 2
    killed_at = time.monotonic()
    ray.kill(shard0[0], no_restart=True)
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures[:3]
    assert sum(t > killed_at for t in answered) >= 10, "too few requests after the kill to show anything"


def test_a_shard_with_every_replica_gone_is_a_503_naming_it(url, corpus):
    import ray

    for actor in replicas("shard-1"):
        ray.kill(actor, no_restart=True)
    q = queries(corpus, n=3, seed=4)
    started = time.monotonic()
    r = requests.post(f"{url}/search/codes", json={"codes": codes_lib.to_hex(q), "k": 10}, timeout=30)
    assert r.status_code == 503 and "shard 1" in r.json()["detail"], r.text
    assert time.monotonic() - started < 15  # the request timeout (4 s) bounds the wait
    # Asked for partial results: shard 0's items only, and marked so.
    r = requests.post(f"{url}/search/codes", json={"codes": codes_lib.to_hex(q), "k": 10, "partial": True}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["partial"] is True and body["missing_shards"] == [1]
    shard0 = np.flatnonzero(corpus.rank < corpus.index.shards[0].rows)  # shard 0 holds the lowest ids
    assert body["results"] == corpus.brute_force(q, 10, among=shard0)
    table = SearchClient(url).search_codes(q, k=10, partial=True, format="arrow")
    info = answer_info(table)
    assert info.pop("index_version") and info == {"k": 10, "radius": None, "partial": True, "missing_shards": [1]}
    assert arrow_rows(table) == body["results"]
    health = requests.get(f"{url}/healthz", timeout=30)
    assert health.status_code == 503 and "shard 1" in health.json()["detail"]
