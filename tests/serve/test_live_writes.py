"""Live writes over real HTTP: POST /items, POST /items/{id}/image and DELETE /items/{id} on a
real Serve app with 2 shards of 2 replicas each, held against a numpy model of the index; then
every shard replica's process is SIGKILLed, and what was acknowledged must still be served by their
replacements."""

import io
import os
import signal
import socket
import time

import numpy as np
import pytest
import requests
from PIL import Image

from rayhash.codespec import binary as codes_lib
from rayhash.encode.codeset import write_codeset
from rayhash.index import build_index_set, writelog
from rayhash.models.encoder import ImageEncoder
from rayhash.serve import SearchClient, SearchError, start, stop

APP = "rayhash-live-writes-test"
N = 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Model:
    """What the service should serve: ``{id: code}``, searched by brute force by (Hamming, id)."""

    def __init__(self, ids, codes):
        self.items = dict(zip(ids, codes, strict=True))

    def search(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        ids = np.array(sorted(self.items), dtype=object)
        d = codes_lib.hamming(queries, np.stack([self.items[i] for i in ids]))
        order = np.lexsort((np.broadcast_to(np.arange(len(ids)), d.shape), d), axis=1)[:, :k]
        return [[{"id": ids[j], "distance": int(row[j])} for j in o] for o, row in zip(order, d)]


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory, tiny_checkpoint):

    root = tmp_path_factory.mktemp("live")
    rng = np.random.default_rng(5)
    vocab = rng.integers(0, 256, (30, 8), dtype=np.uint8)  # 64-bit codes from 30 values: ties everywhere
    ids = [f"item-{i:04d}" for i in range(N)]
    codes = vocab[rng.integers(0, 30, N)]
    cs = write_codeset(
        str(root / "codes"),
        ids=ids,
        codes=codes,
        sources=ids,
        nbits=64,
        checkpoint_uri=tiny_checkpoint,  # its encoder turns image writes into codes
        checkpoint_sha256=ImageEncoder.from_checkpoint(tiny_checkpoint, device="cpu").checkpoint_sha256,
        config={},
    )
    index = build_index_set(cs.uri, str(root / "index"), num_shards=2)
    url = start(
        index.uri,
        port=free_port(),
        name=APP,
        route_prefix="/live",
        ready_timeout_s=240,
        writes=True,
        timeout_s=10.0,
        # Killed replicas come back soon: the test needs them replaced, not gone.
        shards={"num_replicas": 2, "health_check_period_s": 1, "health_check_timeout_s": 5},
    )
    yield url, Model(ids, codes), vocab, index
    stop(APP)  # with the index version a swap started


def search(url, queries, k):
    r = requests.post(f"{url}/search/codes", json={"codes": codes_lib.to_hex(queries), "k": k}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def add(url, model, items: dict):
    r = requests.post(
        f"{url}/items", json={"items": [{"id": i, "code": c.tobytes().hex()} for i, c in items.items()]}, timeout=30
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["added"] + body["replaced"]) == sorted(items)
    assert set(body["replaced"]) == set(items) & set(model.items)
    model.items.update(items)
    return body["seq"]


def delete(url, model, item):
    r = requests.delete(f"{url}/items/{item}", timeout=30)
    assert r.status_code == 200, r.text
    del model.items[item]
    return r.json()["seq"]


def queries(vocab, seed, n=8):
    rng = np.random.default_rng(seed)
    return vocab[rng.integers(0, len(vocab), n)] ^ (rng.random((n, 8)) < 0.03).astype(np.uint8)


def test_every_replica_sees_a_write_once_it_is_acknowledged(served):
    url, model, vocab, _ = served
    rng = np.random.default_rng(1)
    q = queries(vocab, 2)
    for step in range(40):
        roll = rng.random()
        if roll < 0.3:
            delete(url, model, sorted(model.items)[rng.integers(len(model.items))])
        else:
            items = {}
            for _ in range(rng.integers(1, 4)):
                item = (
                    sorted(model.items)[rng.integers(len(model.items))]
                    if roll < 0.5
                    else f"{rng.choice(['a', 'item-', 'z'])}{rng.integers(10**5)}"
                )
                items[item] = (
                    vocab[rng.integers(len(vocab))] if rng.random() < 0.8 else rng.integers(0, 256, 8, dtype=np.uint8)
                )
            add(url, model, items)
        # Several searches straight after the acknowledgement: with 2 replicas a shard, both answer some.
        want = model.search(q, 15)
        for _ in range(3 if step % 10 else 12):
            assert search(url, q, 15) == want
    item = sorted(model.items)[3]
    r = requests.get(f"{url}/items/{item}/neighbors", params={"k": 5}, timeout=30)
    assert r.status_code == 200 and r.json()["code"] == model.items[item].tobytes().hex()


def test_refusals_say_what_is_wrong(served):
    url, *_ = served
    r = requests.delete(f"{url}/items/no-such-id", timeout=30)
    assert r.status_code == 404 and "no item with id 'no-such-id'" in r.json()["detail"]
    r = requests.post(f"{url}/items", json={"items": [{"id": "x", "code": "00ff00"}]}, timeout=30)
    assert r.status_code == 422 and "64-bit" in str(r.json()["detail"]), r.text
    r = requests.post(
        f"{url}/items", json={"items": [{"id": "x", "code": "00" * 8}, {"id": "x", "code": "01" * 8}]}, timeout=30
    )
    assert r.status_code == 422 and "twice" in r.json()["detail"]
    r = requests.post(f"{url}/items", json={"items": []}, timeout=30)
    assert r.status_code == 422
    r = requests.post(f"{url}/items/x/image", data=b"not an image", headers={"Content-Type": "image/png"}, timeout=30)
    assert r.status_code == 422 and "not a usable image" in r.json()["detail"]


def test_an_image_write_stores_the_code_of_the_index_own_encoder(served, fashion_mnist, tiny_checkpoint):
    url, model, _, _ = served
    client = SearchClient(url)
    image = fashion_mnist.images[11]
    code = ImageEncoder.from_checkpoint(tiny_checkpoint, device="cpu").encode([image])
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1)).save(buf, format="PNG")
    answer = client.add_image("photo/11", buf.getvalue())
    assert answer["added"] == ["photo/11"] and answer["seq"] >= 1
    model.items["photo/11"] = code[0]
    assert search(url, code, 20) == model.search(code, 20)
    assert client.delete_item("photo/11")["deleted"] == "photo/11"
    del model.items["photo/11"]
    with pytest.raises(SearchError, match="no item with id 'photo/11'"):
        client.delete_item("photo/11")
    assert search(url, code, 20) == model.search(code, 20)


def shard_replicas() -> list:
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{APP}#shard-")
    ]
    return [(name, ray.get_actor(name, namespace="serve")) for name in names]


def test_acknowledged_writes_survive_killing_every_shard_replica(served):
    import ray

    url, model, vocab, index = served
    one, two = np.arange(8, dtype=np.uint8), np.arange(8, 16, dtype=np.uint8)
    seq = add(url, model, {"zz-after-kill": one, "item-0001": two})
    seq = delete(url, model, "item-0002")
    assert writelog.head(index.uri) == seq  # durable before the acknowledgement
    before = shard_replicas()
    assert len(before) == 4
    pids = [ray.get(actor.__ray_call__.remote(lambda _: os.getpid())) for _, actor in before]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # nothing in memory survives, and nothing shuts down cleanly
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = shard_replicas()
        if len(now) == 4 and not {n for n, _ in now} & {n for n, _ in before}:
            break
        time.sleep(0.5)
    else:
        pytest.fail("Serve did not replace the killed shard replicas within 120 s")
    q = np.vstack([queries(vocab, 3), one, two])
    while time.monotonic() < deadline:  # the new replicas answer once they have loaded and replayed
        r = requests.post(f"{url}/search/codes", json={"codes": codes_lib.to_hex(q), "k": 10}, timeout=30)
        if r.status_code == 200:
            break
        time.sleep(0.5)
    want = model.search(q, 10)
    for _ in range(12):
        assert search(url, q, 10) == want


def test_a_swap_refuses_to_drop_writes_and_takes_the_compacted_log(served, tmp_path):
    from rayhash.index.compact import compact
    from rayhash.serve.swap import swap

    url, model, vocab, index = served
    add(url, model, {"before-compact": np.full(8, 7, dtype=np.uint8)})
    rebuilt = build_index_set(index.codeset_uri, str(tmp_path / "rebuilt"), num_shards=2)  # none of the writes
    with pytest.raises(ValueError, match="holds none of them: fold them in first"):
        swap(rebuilt.uri, name=APP)
    head = writelog.head(index.uri)
    compacted = compact(index.uri, str(tmp_path / "codes"), str(tmp_path / "index"))
    summary = swap(compacted.uri, name=APP)
    assert summary["to"] == compacted.sha256[:12] and summary["writes_not_carried"] == 0
    q = np.vstack([queries(vocab, 9), np.full(8, 7, dtype=np.uint8)])
    assert search(url, q, 10) == model.search(q, 10)
    # Writes now go to the new version's own log; the old one's stays where it was.
    seq = add(url, model, {"after-swap": np.full(8, 9, dtype=np.uint8)})
    assert writelog.head(compacted.uri) == seq == 1 and writelog.head(index.uri) == head
    q = np.vstack([q, np.full(8, 9, dtype=np.uint8)])
    assert search(url, q, 10) == model.search(q, 10)
