"""One filesystem helper for every URI rayhash reads or writes: a local path or ``s3://``.

S3 settings come from the standard environment variables at call time (never at import), so
Ray workers see what the driver set through ``runtime_env``:

- ``AWS_ENDPOINT_URL``: a non-AWS endpoint (MinIO, moto's server on loopback, ...);
- ``AWS_DEFAULT_REGION`` / ``AWS_REGION``; credentials as botocore reads them.

A write that must never be seen half-done goes through :func:`write_bytes_atomic`: a local
file is written beside its target and renamed over it; an S3 object is one PUT, which S3
makes visible all at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator

import fsspec

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _s3_kwargs() -> dict:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    client_kwargs = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    return {"client_kwargs": client_kwargs}


def fs_path(uri: str) -> str:
    """The path of ``uri`` inside its filesystem (bucket/key for S3), without building a client."""
    uri = str(uri)
    return uri[len("s3://") :].rstrip("/") if is_s3(uri) else os.path.abspath(os.path.expanduser(uri))


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it (no scheme)."""
    uri = str(uri)
    if is_s3(uri):
        import s3fs

        # fsspec caches instances by their arguments, so one client serves every call with the
        # same endpoint (a client is slow to create, once per call would dominate small reads) and a
        # changed endpoint gets its own.
        return s3fs.S3FileSystem(**_s3_kwargs()), fs_path(uri)
    return fsspec.filesystem("file"), fs_path(uri)


def arrow_filesystem(uri: str):
    """A ``pyarrow.fs.FileSystem`` and path for ``uri`` (for Parquet and Ray Data)."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if is_s3(uri):
        kw = _s3_kwargs()["client_kwargs"]
        endpoint = kw.get("endpoint_url")
        options = {"region": kw.get("region_name", "us-east-1")}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        return pafs.S3FileSystem(**options), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_s3(uri):
        return "s3://" + posixpath.join(uri[len("s3://") :].rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def check_relative(path: str, where: str) -> str:
    """``path`` if it names a file under an artifact's root: relative, no ``..``, no scheme or
    drive; else ``ValueError`` naming it. Manifests are read from wherever a user points rayhash,
    so a manifest must not send a read (and a SHA-256 check) outside its own artifact."""
    parts = str(path).replace("\\", "/").split("/")
    if (
        not isinstance(path, str)
        or not path
        or path.startswith(("/", "\\"))
        or "://" in path
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise ValueError(f"{where}: path {path!r} is not a plain relative path under the artifact's root; refused")
    return path


def to_uri(fs_path: str, like: str) -> str:
    """Turn a path returned by ``filesystem(like)`` back into a URI of the same scheme."""
    return "s3://" + fs_path.lstrip("/") if is_s3(like) else fs_path


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    if not is_s3(uri):  # S3 has no directories to make
        fs.makedirs(path, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    return int(fs.size(path))


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that readers see either the old object or the whole new one."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        fs.pipe_file(path, data)
        return
    tmp = _synced_temp(path, data)
    try:
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _synced_temp(path: str, data: bytes) -> str:
    """``data`` in a new file beside local ``path``, on disk; returns the file's name."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return tmp


def write_bytes_new(uri: str, data: bytes) -> bool:
    """Create ``uri`` holding ``data`` all at once, only if nothing is there yet: True if this call
    created it, False if it already existed (another writer got there first). What appends to a
    log from several processes builds on: each record's name is claimed by one writer alone."""
    fs, path = filesystem(uri)
    if is_s3(uri):
        import boto3
        import botocore.exceptions

        kw = _s3_kwargs()["client_kwargs"]
        bucket, _, key = path.partition("/")
        try:  # a conditional PUT: S3 refuses it (412) when the key exists
            boto3.client("s3", **kw).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True
    tmp = _synced_temp(path, data)
    try:
        try:
            os.link(tmp, path)  # atomic, and fails if the name is taken, where os.replace would overwrite
        except FileExistsError:
            return False
        # The new name is durable only once its directory is: an acknowledged record must survive a crash.
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    finally:
        os.remove(tmp)


def write_text_atomic(uri: str, text: str) -> None:
    write_bytes_atomic(uri, text.encode("utf-8"))


def remove(uri: str, recursive: bool = False) -> None:
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def list_files(uri: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Every file below ``uri`` (recursive), as sorted URIs of the same scheme."""
    fs, path = filesystem(uri)
    if fs.isfile(path):
        found = [path]
    else:
        found = [p for p in fs.find(path) if not p.endswith("/")]
    if suffixes:
        found = [p for p in found if p.lower().endswith(tuple(s.lower() for s in suffixes))]
    return sorted(to_uri(p, uri) for p in found)


def iter_chunks(uri: str) -> Iterator[bytes]:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_uri(uri: str) -> str:
    h = hashlib.sha256()
    for chunk in iter_chunks(uri):
        h.update(chunk)
    return h.hexdigest()


class ChecksumError(ValueError):
    """A stored artifact's bytes do not match the SHA-256 recorded for them."""


def read_verified(uri: str, sha256: str) -> bytes:
    """Read ``uri`` and refuse it unless its SHA-256 matches before anyone parses it."""
    data = read_bytes(uri)
    got = sha256_bytes(data)
    if got != sha256:
        raise ChecksumError(
            f"{uri}: SHA-256 is {got}, the manifest records {sha256}; the file was changed "
            "or only partly written. Rebuild it rather than loading it."
        )
    return data
