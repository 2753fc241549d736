"""Blue/green swaps on a real Serve app under a steady load of real HTTP requests: from index
version A to B (another code set, written by another model, with its own encoder), and back.
No request may fail, and every answer must equal the brute-force answer of the one version it
names."""

import io
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
from rayhash.serve import start, stop
from rayhash.serve.swap import swap
from rayhash.serve.versions import version_id

APP = "rayhash-swap-test"


def save_checkpoint(path, seed: int) -> str:
    import torch

    from rayhash.models import ModelConfig, build_model, checkpoint

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="small_cnn", bits=64)
    uri = str(path / f"model-{seed}")
    checkpoint.save(
        uri, config={"model": {"backbone": cfg.backbone, "bits": 64}}, model=build_model(cfg).state_dict(), progress={}
    )
    return uri


def brute_force(ids: list[str], codes: np.ndarray, queries: np.ndarray, k: int) -> list[list[dict]]:
    d = codes_lib.hamming(queries, codes)
    order = np.lexsort((np.broadcast_to(np.arange(len(ids)), d.shape), d), axis=1)[:, :k]
    return [[{"id": ids[j], "distance": int(row[j])} for j in o] for o, row in zip(order, d)]


def index_version(root, name: str, seed: int, checkpoint_uri: str, n: int):
    """An index set of ``n`` random 64-bit codes written under ``checkpoint_uri``'s name."""
    rng = np.random.default_rng(seed)
    ids = [f"{name}-{i:04d}" for i in range(n)]  # sorted: the brute force's id order
    codes = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    cs = write_codeset(
        str(root / f"codes-{name}"),
        ids=ids,
        codes=codes,
        sources=ids,
        nbits=64,
        checkpoint_uri=checkpoint_uri,
        checkpoint_sha256=ImageEncoder.from_checkpoint(checkpoint_uri, device="cpu").checkpoint_sha256,
        config={},
    )
    index = build_index_set(cs.uri, str(root / f"index-{name}"), num_shards=2)
    return index, ids, codes


class Load:
    """Requests one after another from ``threads`` threads until stopped: every status, version and answer."""

    def __init__(self, url: str, queries: np.ndarray, k: int, threads: int = 3):
        self.url, self.body = url, {"codes": codes_lib.to_hex(queries), "k": k}
        self.answers, self.stopping = [], threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        with requests.Session() as session:
            while not self.stopping.is_set():
                try:
                    r = session.post(f"{self.url}/search/codes", json=self.body, timeout=30)
                    body = r.json() if r.status_code == 200 else r.text
                    self.answers.append((time.monotonic(), r.status_code, body))
                except requests.RequestException as e:
                    self.answers.append((time.monotonic(), None, repr(e)))

    def stop(self) -> list:
        self.stopping.set()
        for t in self.threads:
            t.join(60)
        return self.answers


@pytest.fixture(scope="module")
def versions(ray_cluster, tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("swap")
    other_model = save_checkpoint(root, seed=7)
    a = index_version(root, "a", 1, tiny_checkpoint, 300)
    b = index_version(root, "b", 2, other_model, 500)
    return {"a": a, "b": b, "models": (tiny_checkpoint, other_model)}


def check_answers(answers: list, expected: dict) -> dict:
    """Every request answered 200 with exactly one version's brute-force answer: counts by version."""
    failed = [(status, body) for _, status, body in answers if status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed during the swap, e.g. {failed[:3]}"
    seen = {}
    for _, _, body in answers:
        version = body["index_version"]
        assert version in expected, f"an answer names version {version}, served neither before nor after"
        assert body["results"] == expected[version], f"an answer names {version} but is not its answer"
        seen[version] = seen.get(version, 0) + 1
    return seen


@pytest.mark.parametrize("placement", ["deployments", "ingress"])
def test_swap_and_roll_back_under_load_lose_no_request_and_mix_no_versions(versions, placement, fashion_mnist):
    from ray import serve

    (index_a, ids_a, codes_a), (index_b, ids_b, codes_b) = versions["a"], versions["b"]
    va, vb = version_id(index_a.sha256), version_id(index_b.sha256)
    queries = np.random.default_rng(3).integers(0, 256, (4, 8), dtype=np.uint8)
    expected = {va: brute_force(ids_a, codes_a, queries, 10), vb: brute_force(ids_b, codes_b, queries, 10)}
    url = start(
        index_a.uri,
        name=APP,
        route_prefix="/swap",
        ready_timeout_s=240,
        shards_in_ingress=placement == "ingress",
        ingress={"num_replicas": 2},  # each replica switches on its own; both must, before the old version goes
    )
    try:
        assert requests.get(f"{url}/stats", timeout=30).json()["index_version"] == va
        load = Load(url, queries, 10)
        time.sleep(1.0)
        forward = swap(index_b.uri, name=APP)
        swapped_at = time.monotonic()
        time.sleep(1.0)
        rollback_started = time.monotonic()
        back = swap(index_a.uri, name=APP)
        rolled_back_at = time.monotonic()
        time.sleep(1.0)
        answers = load.stop()

        seen = check_answers(answers, expected)
        assert seen[va] > 0 and seen[vb] > 0, seen
        # Once a swap returns, every ingress replica answers from the new version.
        assert {b["index_version"] for t, _, b in answers if swapped_at + 0.5 < t < rollback_started} == {vb}
        assert {b["index_version"] for t, _, b in answers if t > rolled_back_at + 0.5} == {va}
        assert (forward["from"], forward["to"], forward["ingress_replicas"]) == (va, vb, 2)
        assert (back["from"], back["to"], back["app"]) == (vb, va, APP)

        if placement == "ingress":
            return  # the rest does not depend on where the shards are
        # B's model came with its own encoder: image queries were encoded by it while B served.
        swap(index_b.uri, name=APP)
        stats = requests.get(f"{url}/stats", timeout=30).json()
        assert stats["index_version"] == vb and stats["items"] == len(ids_b)
        assert stats["encoder"]["checkpoint_uri"] == versions["models"][1]
        image, buf = fashion_mnist.images[5], io.BytesIO()
        Image.fromarray(image.squeeze(-1)).save(buf, format="PNG")
        r = requests.post(f"{url}/search/image", files={"file": buf.getvalue()}, timeout=30)
        assert r.status_code == 200, r.text
        code = ImageEncoder.from_checkpoint(versions["models"][1], device="cpu").encode([image])[0]
        assert r.json()["code"] == bytes(code).hex() and r.json()["index_version"] == vb
        # Rolled back, the version app of B is deleted: only the service's own app is left.
        swap(index_a.uri, name=APP)
        deadline = time.monotonic() + 90
        while [a for a in serve.status().applications if a.startswith(APP)] != [APP]:
            assert time.monotonic() < deadline, f"B's app is still up: {sorted(serve.status().applications)}"
            time.sleep(0.5)
    finally:
        stop(APP)
