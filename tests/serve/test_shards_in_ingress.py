"""The ``shards_in_ingress`` placement over real HTTP: the ingress loads and searches every shard.

Same corpus and brute-force reference as test_search_service.py (600 Fashion-MNIST codes plus
2,400 random codes whose k-th distance is nearly always tied), in 2 shards.
"""

import shutil

import numpy as np
import pytest
import requests
from test_search_service import Corpus, arrow_rows, free_port, queries

from rayhash import storage
from rayhash.codespec import binary as codes_lib
from rayhash.serve import SearchClient, start
from rayhash.serve.app import direct_ingress_urls

APP = "rayhash-local-shards-test"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fashion_mnist, tiny_checkpoint):
    return Corpus(tmp_path_factory.mktemp("local"), fashion_mnist, tiny_checkpoint)


@pytest.fixture(scope="module")
def url(ray_cluster, corpus):
    from ray import serve

    base = start(
        corpus.index.uri,
        port=free_port(),
        name=APP,
        route_prefix="/local",
        ready_timeout_s=240,
        encode_images=False,
        shards_in_ingress=True,
        max_k=500,
        max_queries=64,
        timeout_s=4.0,
    )
    yield base
    serve.delete(APP)


@pytest.fixture(scope="module")
def client(url):
    return SearchClient(url)


def test_only_the_ingress_is_deployed_and_it_says_so(url, client, corpus):
    from ray import serve

    assert set(serve.status().applications[APP].deployments) == {"ingress"}
    stats = client.stats()
    assert (stats["placement"], stats["shards"], stats["items"]) == ("ingress", 2, len(corpus.ids))
    assert client.healthz() == {"status": "ok", "shards": 2, "encoder": False, "index_version": stats["index_version"]}


@pytest.mark.parametrize("k", [1, 10, 100, 500])
def test_results_equal_brute_force(client, corpus, k):
    q = queries(corpus, n=40, seed=5)
    assert client.search_codes(codes_lib.to_hex(q), k=k) == corpus.brute_force(q, k)


def test_concurrent_requests_share_batches_and_stay_exact(url, corpus):
    import concurrent.futures

    q = queries(corpus, n=32, seed=6)
    want = corpus.brute_force(q, 50)

    def one(i):
        r = requests.post(f"{url}/search/codes", json={"codes": codes_lib.to_hex(q[i : i + 1]), "k": 50}, timeout=30)
        return r.json()["results"][0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(len(q)))) == want


def test_radius_and_neighbors(client, corpus):
    q = queries(corpus, seed=7)
    got = client.search_codes(q, k=50, radius=20)
    assert got == [[r for r in row if r["distance"] <= 20] for row in corpus.brute_force(q, 50)]
    assert any(len(row) < 50 for row in got)  # the radius cut some rows short
    by_columns = client.search_codes(q, k=50, radius=20, format="columns")
    assert by_columns == [{"ids": [r["id"] for r in row], "distances": [r["distance"] for r in row]} for row in got]
    full = client.search_codes(q, k=50, format="columns")
    assert full == [
        {"ids": [r["id"] for r in row], "distances": [r["distance"] for r in row]} for row in corpus.brute_force(q, 50)
    ]
    assert arrow_rows(client.search_codes(q, k=50, radius=20, format="arrow")) == got
    assert arrow_rows(client.search_codes(q, k=50, format="arrow")) == corpus.brute_force(q, 50)
    j = int(np.flatnonzero(corpus.ids == "rand/17")[0])
    want = [r for r in corpus.brute_force(corpus.codes[j : j + 1], 31)[0] if r["id"] != "rand/17"][:30]
    assert client.neighbors("rand/17", k=30) == want
    assert requests.get(f"{client.url}/items/nope/neighbors", timeout=30).status_code == 404


def test_direct_ingress_urls_answer_or_are_absent(url):
    from ray.serve._private.constants import RAY_SERVE_ENABLE_DIRECT_INGRESS

    urls = direct_ingress_urls(APP)
    if not RAY_SERVE_ENABLE_DIRECT_INGRESS:  # the test cluster runs Serve's defaults: the proxy only
        assert urls == []
    else:
        assert len(urls) == 1 and requests.get(f"{urls[0]}/healthz", timeout=10).json()["status"] == "ok"


def test_a_changed_shard_fails_the_ingress_deploy(ray_cluster, corpus, tmp_path):
    from ray import serve

    copy = str(tmp_path / "index")
    shutil.copytree(corpus.index.uri, copy)
    storage.write_bytes_atomic(f"{copy}/{corpus.index.shards[0].ids_path}", b"not the ids that were indexed")
    try:
        with pytest.raises(RuntimeError, match="failed to deploy.*SHA-256"):
            start(
                copy,
                port=free_port(),
                name="rayhash-local-changed",
                route_prefix="/local-changed",
                encode_images=False,
                shards_in_ingress=True,
                ready_timeout_s=240,
            )
    finally:
        serve.delete("rayhash-local-changed")


@pytest.mark.parametrize("in_ingress", [True, False], ids=["ingress", "deployments"])
def test_ivf_served_answers_what_its_shards_find(ray_cluster, corpus, tmp_path, in_ingress):
    """Both placements of an IVF index set: the ingress's merged index and the shard deployments
    probe the same lists, so they return the distances of the shards' own merged top-k, and each
    id is an item at the distance given (ties at the k-th may be cut differently: IVF is approximate)."""
    from ray import serve

    from rayhash.index import build_index_set, indexset
    from rayhash.index.search import merge_topk

    ivf = build_index_set(corpus.index.codeset_uri, str(tmp_path / "ivf"), num_shards=2, kind="ivf", nlist=16, nprobe=4)
    q = queries(corpus, n=30, seed=8)
    parts = [indexset.load_shard(ivf, i).search_keys(q, 40) for i in range(2)]
    want_d, _, _ = merge_topk(parts, 40)
    name = f"rayhash-ivf-{'ingress' if in_ingress else 'deployments'}"
    try:
        base = start(
            ivf.uri,
            port=free_port(),
            name=name,
            route_prefix=f"/{name}",
            ready_timeout_s=240,
            encode_images=False,
            shards_in_ingress=in_ingress,
            max_queries=64,
            timeout_s=10.0,
        )
        client = SearchClient(base)
        assert client.stats()["index"]["kind"] == "ivf"
        got = client.search_codes(q, k=40)
        assert [[r["distance"] for r in row] for row in got] == want_d.tolist()
        code_of_id = dict(zip(corpus.ids, corpus.codes))
        for row, query in zip(got, q):
            found = np.stack([code_of_id[r["id"]] for r in row])
            assert codes_lib.hamming(query[None], found)[0].tolist() == [r["distance"] for r in row]
            assert [(r["distance"], r["id"]) for r in row] == sorted((r["distance"], r["id"]) for r in row)
        assert arrow_rows(client.search_codes(q, k=40, format="arrow")) == got
        j = 123
        near = client.neighbors(corpus.ids[j], k=5)
        assert corpus.ids[j] not in [r["id"] for r in near] and len(near) == 5
    finally:
        serve.delete(name)
