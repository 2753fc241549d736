"""A served pq index over real HTTP against numpy: ADC from an uploaded image, SDC from codes.

One app serves 300 Fashion-MNIST images encoded by a small pq checkpoint (M=4 sub-spaces of
K=16 centroids) plus 1,200 random codes, in 2 shards. Float distances computed by faiss and by
numpy differ in their last bits, so results are compared by distance (to 1e-4) and by the
reference distance of each returned id, which is what "exactly as numpy" means for floats.
"""

import numpy as np
import pytest
import requests
import torch
from test_search_service import free_port, png

from rayhash.codespec import pq as pq_lib
from rayhash.encode.codeset import write_codeset
from rayhash.index import build_index_set
from rayhash.models import ModelConfig, build_model, checkpoint
from rayhash.models.encoder import ImageEncoder
from rayhash.serve import SearchClient, SearchError, answer_info, start

APP = "rayhash-pq-test"
N_IMAGES, N_RANDOM, M, K, D_SUB = 300, 1200, 4, 16, 4


def pq_checkpoint(path: str) -> str:
    torch.manual_seed(0)
    model_cfg = {"backbone": "small_cnn", "bits": 8 * M, "embed_dim": M * D_SUB}
    model = build_model(ModelConfig(**model_cfg)).eval()
    books = torch.randn(M, K, D_SUB, generator=torch.Generator().manual_seed(2)) * 0.3
    checkpoint.save(
        path, config={"model": model_cfg}, model=model.state_dict(), em={"codebooks": books}, code_kind="pq"
    )
    return path


class PQCorpus:
    def __init__(self, root, fashion_mnist):
        self.encoder = ImageEncoder.from_checkpoint(pq_checkpoint(str(root / "dq")), device="cpu")
        self.spec = self.encoder.spec
        self.images = fashion_mnist.images[:N_IMAGES]
        rng = np.random.default_rng(0)
        self.codes = np.vstack([self.encoder.encode(list(self.images)), rng.integers(0, K, (N_RANDOM, M), np.uint8)])
        self.ids = np.array(
            [f"fmnist/{i:05d}" for i in range(N_IMAGES)] + [f"rand/{i}" for i in range(N_RANDOM)], dtype=object
        )
        cs = write_codeset(
            str(root / "codes"),
            ids=list(self.ids),
            codes=self.codes,
            sources=list(self.ids),
            spec=self.spec,
            checkpoint_uri=self.encoder.checkpoint_uri,
            checkpoint_sha256=self.encoder.checkpoint_sha256,
            config={},
        )
        self.index = build_index_set(cs.uri, str(root / "index"), num_shards=2)

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """Reference squared L2 from query vectors to every item's reconstruction (numpy ADC)."""
        return pq_lib.adc_distances(self.spec, vectors, self.codes)

    def check(self, results: list[list[dict]], vectors: np.ndarray, k: int, skip: str | None = None) -> None:
        """Each result list holds the k nearest items by numpy's distances, with those distances."""
        ref = self.distances(vectors)
        position = {item: i for i, item in enumerate(self.ids)}
        for got, row in zip(results, ref, strict=True):
            keep = np.ones(len(row), bool)
            if skip is not None:
                keep[position[skip]] = False
            want = np.sort(row[keep])[:k]
            assert len(got) == k
            dist = np.array([r["distance"] for r in got])
            np.testing.assert_allclose(dist, want, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose([row[position[r["id"]]] for r in got], dist, rtol=1e-4, atol=1e-4)
            assert all((a["distance"], a["id"]) <= (b["distance"], b["id"]) for a, b in zip(got, got[1:]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fashion_mnist):
    return PQCorpus(tmp_path_factory.mktemp("served-pq"), fashion_mnist)


@pytest.fixture(scope="module")
def client(ray_cluster, corpus):
    from ray import serve

    base = start(
        corpus.index.uri,
        port=free_port(),
        name=APP,
        route_prefix="/rayhash-pq",
        ready_timeout_s=240,
        max_k=200,
        max_queries=32,
        timeout_s=10.0,
    )
    yield SearchClient(base)
    serve.delete(APP)


def test_stats_name_the_code_kind_and_spec(client, corpus):
    stats = client.stats()
    assert stats["code_kind"] == "pq" and stats["code_spec"] == corpus.spec.to_dict()
    assert (stats["shards"], stats["items"]) == (2, N_IMAGES + N_RANDOM)
    assert stats["encoder"]["checkpoint_sha256"] == corpus.encoder.checkpoint_sha256
    assert client.healthz()["status"] == "ok"


@pytest.mark.parametrize("k", [1, 10, 200])
def test_code_queries_score_symmetrically_through_the_codebooks(client, corpus, k):
    rng = np.random.default_rng(k)
    q = np.vstack([corpus.codes[rng.choice(len(corpus.codes), 6)], rng.integers(0, K, (6, M), np.uint8)])
    got = client.search_codes(pq_lib.to_hex(q), k=k)
    corpus.check(got, pq_lib.decode(corpus.spec, q), k)
    # SDC through the codebooks is ADC from the reconstruction: the same distances
    sdc = pq_lib.sdc_distances(corpus.spec, q, corpus.codes)
    np.testing.assert_allclose([r[0]["distance"] for r in got], sdc.min(1), rtol=1e-4, atol=1e-4)
    assert client.search_packed(q, k=k, format="objects") == got
    assert client.search_codes(pq_lib.to_hex(q), k=k, format="columns") == [
        {"ids": [r["id"] for r in row], "distances": [r["distance"] for r in row]} for row in got
    ]


def test_an_uploaded_image_is_scored_by_asymmetric_distance(client, corpus):
    for i in (0, 7, 123):
        got = client.search_image(png(corpus.images[i]), k=20)
        z = corpus.encoder.encode_continuous([corpus.images[i]]).numpy()
        corpus.check([got], z, 20)
    answer = requests.post(
        f"{client.url}/search/image", files={"file": ("x.png", png(corpus.images[7]))}, params={"k": 3}, timeout=30
    ).json()
    assert answer["code"] == pq_lib.to_hex(corpus.codes[7:8])[0]


def test_neighbors_of_an_item_exclude_it(client, corpus):
    got = client.neighbors("fmnist/00042", k=15)
    assert "fmnist/00042" not in [r["id"] for r in got]
    corpus.check([got], pq_lib.decode(corpus.spec, corpus.codes[42:43]), 15, skip="fmnist/00042")


def test_radius_is_a_squared_l2_bound(client, corpus):
    q = corpus.codes[:4]
    full = client.search_codes(pq_lib.to_hex(q), k=100)
    radius = float(np.median([row[30]["distance"] for row in full]))
    got = client.search_codes(pq_lib.to_hex(q), k=100, radius=radius)
    assert got == [[r for r in row if r["distance"] <= radius] for row in full]
    table = client.search_codes(pq_lib.to_hex(q), k=100, radius=radius, format="arrow")
    assert str(table.schema.field("distances").type) == "list<item: float>"
    assert answer_info(table)["radius"] == radius
    assert [[{"id": i, "distance": d} for i, d in zip(r["ids"], r["distances"])] for r in table.to_pylist()] == got


@pytest.mark.parametrize(
    "call,status,words",
    [
        (lambda c: c.search_codes(["00" * 8]), 422, "PQ codes of M=4 bytes, i.e. 8 hex digits"),
        (lambda c: c.search_codes(["0f" * 3 + "10"]), 422, "centroid 16, but each sub-space has K=16"),
        (lambda c: c.search_codes(["00" * 4], radius=-1.0), 422, "squared L2 distance of 0 or more"),
        (lambda c: c.search_packed(np.zeros((1, 6), np.uint8)), 422, "pq codes of M=4 bytes"),
        (lambda c: c.neighbors("no/such/id"), 404, "no item with id 'no/such/id'"),
    ],
)
def test_bad_requests_name_the_pq_code_length(client, call, status, words):
    with pytest.raises(SearchError) as e:
        call(client)
    assert e.value.status == status and words in str(e.value)
