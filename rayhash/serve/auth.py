"""An optional bearer token on the HTTP API.

The token comes from the ingress replica's environment: ``RAYHASH_API_TOKEN`` holds it, or
``RAYHASH_API_TOKEN_FILE`` names a file that does (a mounted Kubernetes Secret). It is read
where the replica runs, so it never sits in the Serve config or on the dashboard. With neither
set, the API is open, which is the local default (Serve listens on 127.0.0.1).

Every route but ``/healthz`` (for probes) then needs ``Authorization: Bearer <token>``;
anything else is a 401 before the body is read. The comparison takes constant time.
"""

from __future__ import annotations

import hmac
import os

import orjson

TOKEN_ENV = "RAYHASH_API_TOKEN"
TOKEN_FILE_ENV = "RAYHASH_API_TOKEN_FILE"
OPEN_PATHS = ("/healthz",)


def load_token(environ: dict[str, str] | None = None) -> str | None:
    """The API token from ``environ`` (default ``os.environ``), or None when none is configured."""
    env = os.environ if environ is None else environ
    token, path = env.get(TOKEN_ENV, ""), env.get(TOKEN_FILE_ENV, "")
    if token and path:
        raise ValueError(f"set {TOKEN_ENV} or {TOKEN_FILE_ENV}, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise ValueError(f"{TOKEN_FILE_ENV}={path}: cannot read the token file ({e})") from None
        if not token:
            raise ValueError(f"{TOKEN_FILE_ENV}={path}: the token file is empty")
    return token or None


class BearerAuth:
    """ASGI middleware: a 401 for a request without the right bearer token (none configured: a no-op).

    Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would add a task and a
    stream copy to every request on the serving path."""

    def __init__(self, app, token: str | None = None, environ: dict[str, str] | None = None):
        self.app = app
        self.token = (token if token is not None else load_token(environ) or "").encode()

    async def __call__(self, scope, receive, send):
        if not self.token or scope["type"] != "http" or self._open(scope) or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        body = orjson.dumps({"detail": "missing or wrong bearer token: send Authorization: Bearer <token>"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="rayhash"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _open(scope) -> bool:
        # The path may or may not carry the app's route prefix: match the open routes' ends.
        path = scope.get("path", "").rstrip("/")
        return any(path.endswith(p) for p in OPEN_PATHS)

    def _authorised(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False
