"""The bearer-token middleware on a bare ASGI app: 401 before the body is read, /healthz open."""

import asyncio

import pytest

from rayhash.serve.auth import TOKEN_ENV, TOKEN_FILE_ENV, BearerAuth, load_token


async def _ok(scope, receive, send):
    await receive()  # a route reads its body
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(app, path: str, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, int]:
    """``(status, body reads)`` of one request to ``app``."""
    sent, reads = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], len(reads)


@pytest.mark.parametrize(
    "headers,status",
    [
        ([], 401),
        ([(b"authorization", b"Bearer s3cret")], 200),
        ([(b"authorization", b"bearer s3cret")], 200),  # the scheme is case-insensitive
        ([(b"authorization", b"Bearer s3cret2")], 401),
        ([(b"authorization", b"Bearer s3cre")], 401),
        ([(b"authorization", b"Basic s3cret")], 401),
        ([(b"authorization", b"s3cret")], 401),
    ],
)
def test_only_the_right_bearer_token_passes(headers, status):
    app = BearerAuth(_ok, token="s3cret")
    got, reads = call(app, "/search/codes", headers)
    assert got == status and reads == (1 if status == 200 else 0)  # refused before the body is read


def test_healthz_stays_open_and_no_token_means_no_check():
    assert call(BearerAuth(_ok, token="s3cret"), "/healthz")[0] == 200
    assert call(BearerAuth(_ok, token="s3cret"), "/prefix/healthz/")[0] == 200
    assert call(BearerAuth(_ok, environ={}), "/search/codes")[0] == 200


def test_the_token_comes_from_the_environment_or_a_file(tmp_path):
    assert load_token({}) is None
    assert load_token({TOKEN_ENV: "abc"}) == "abc"
    (tmp_path / "token").write_text("from-a-secret\n")
    assert load_token({TOKEN_FILE_ENV: str(tmp_path / "token")}) == "from-a-secret"
    app = BearerAuth(_ok, environ={TOKEN_FILE_ENV: str(tmp_path / "token")})
    assert call(app, "/stats", [(b"authorization", b"Bearer from-a-secret")])[0] == 200
    for env, words in (
        ({TOKEN_ENV: "a", TOKEN_FILE_ENV: str(tmp_path / "token")}, "not both"),
        ({TOKEN_FILE_ENV: str(tmp_path / "missing")}, "cannot read"),
    ):
        with pytest.raises(ValueError, match=words):
            load_token(env)
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ValueError, match="empty"):
        load_token({TOKEN_FILE_ENV: str(tmp_path / "empty")})


def test_a_served_app_with_a_token_refuses_requests_without_it(ray_cluster, tmp_path):
    """Over real HTTP: the token reaches the ingress replica through its environment only."""
    import numpy as np
    import requests
    from ray import serve
    from test_search_service import free_port

    from rayhash.encode.codeset import write_codeset
    from rayhash.index import build_index_set
    from rayhash.serve import SearchClient, SearchError, start

    rng = np.random.default_rng(0)
    ids = [f"item/{i}" for i in range(200)]
    codes = rng.integers(0, 256, (200, 8), dtype=np.uint8)
    cs = write_codeset(
        str(tmp_path / "codes"),
        ids=ids,
        codes=codes,
        sources=ids,
        nbits=64,
        checkpoint_uri="none",
        checkpoint_sha256="0" * 64,
        config={},
    )
    index = build_index_set(cs.uri, str(tmp_path / "index"))
    env = {"runtime_env": {"env_vars": {TOKEN_ENV: "t0k3n"}}}
    url = start(
        index.uri,
        encode_images=False,
        port=free_port(),
        name="rayhash-auth",
        route_prefix="/auth",
        ingress={"ray_actor_options": env},
    )
    try:
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200  # probes need no token
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = requests.post(f"{url}/search/codes", json={"codes": ["00" * 8]}, headers=headers, timeout=10)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
            assert requests.get(f"{url}/stats", headers=headers, timeout=10).status_code == 401
        client = SearchClient(url, token="t0k3n")
        assert client.stats()["items"] == 200
        assert len(client.search_codes(codes[:2], k=3)) == 2
        with pytest.raises(SearchError) as e:
            SearchClient(url).stats()
        assert e.value.status == 401
    finally:
        serve.delete("rayhash-auth")
