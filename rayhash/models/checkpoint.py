"""The checkpoint artifact: the only module that writes or reads a rayhash checkpoint.

A checkpoint is a directory (local or ``s3://``) holding

- ``rayhash_checkpoint.pt``: ``torch.save`` of plain values and state dicts only
  (model, the method's plain state and its own module's state dict, optimizer, schedule and
  torch's generator state, progress, the resolved config as a dict; with weight averaging,
  ``model`` is the averaged model to serve and ``averaging`` holds the running mean and the
  live weights training resumes from), and the code kind the model's method gives (``"binary"``
  or ``"pq"``), so that every stage that loads the model knows what a code is;
- ``rayhash_checkpoint.sha256``: the SHA-256 of that file, written after it.

Readers verify the checksum *before* ``torch.load(weights_only=True)`` parses anything.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from rayhash import storage

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# The kind of a checkpoint that records none: every such checkpoint holds a binary method's model.
DEFAULT_CODE_KIND = "binary"
PAYLOAD_FILE = "rayhash_checkpoint.pt"
CHECKSUM_FILE = "rayhash_checkpoint.sha256"


@dataclass(frozen=True)
class Checkpoint:
    uri: str  # the checkpoint directory
    sha256: str  # of the payload file: the model version every downstream artifact records
    config: dict  # the resolved training config, as a plain dict
    model: dict  # model state dict
    em: dict = field(default_factory=dict)  # method (E-step) state: tensors and plain values
    method_module: dict = field(default_factory=dict)  # the method's own module's state dict, if it has one
    optimizer: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)  # round, epoch, step, metrics so far
    # Weight averaging (rayhash.train.averaging): count, mean, and the live weights as "live_model".
    averaging: dict = field(default_factory=dict)
    code_kind: str = DEFAULT_CODE_KIND  # what the trained method's codes are: "binary" or "pq"


def _payload_uri(uri: str) -> str:
    uri = str(uri).rstrip("/")
    return uri if uri.endswith(".pt") else storage.join(uri, PAYLOAD_FILE)


def serialize(
    *,
    config: dict,
    model: dict,
    em: dict | None = None,
    method_module: dict | None = None,
    optimizer: dict | None = None,
    progress: dict | None = None,
    averaging: dict | None = None,
    code_kind: str = DEFAULT_CODE_KIND,
) -> bytes:
    if not isinstance(code_kind, str) or not code_kind:
        raise ValueError(f"code_kind must name a kind of code (e.g. 'binary'), got {code_kind!r}")
    payload = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "model": {k: v.detach().cpu() for k, v in model.items()},
        "em": em or {},
        "method_module": {k: v.detach().cpu() for k, v in (method_module or {}).items()},
        "optimizer": optimizer or {},
        "progress": progress or {},
        "averaging": averaging or {},
        "code_kind": code_kind,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save(uri: str, **parts: Any) -> str:
    """Write a checkpoint directory at ``uri``; returns the payload's SHA-256.

    The checksum file is written last, so a directory without it is an unfinished write.
    """
    data = serialize(**parts)
    digest = storage.sha256_bytes(data)
    storage.write_bytes_atomic(storage.join(uri, PAYLOAD_FILE), data)
    storage.write_text_atomic(storage.join(uri, CHECKSUM_FILE), digest + "\n")
    return digest


def is_complete(uri: str) -> bool:
    return storage.exists(storage.join(uri, CHECKSUM_FILE)) and storage.exists(storage.join(uri, PAYLOAD_FILE))


def load(uri: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint directory (or its ``.pt`` file)."""
    payload_uri = _payload_uri(uri)
    directory = (
        payload_uri[: -len(PAYLOAD_FILE) - 1] if payload_uri.endswith(PAYLOAD_FILE) else os.path.dirname(payload_uri)
    )
    checksum_uri = storage.join(directory, CHECKSUM_FILE)
    if not storage.exists(payload_uri):
        raise FileNotFoundError(f"no rayhash checkpoint at {uri} (expected {payload_uri})")
    if not storage.exists(checksum_uri):
        raise storage.ChecksumError(
            f"{uri} has no {CHECKSUM_FILE}: the checkpoint was not written by rayhash or its write did not finish"
        )
    expected = storage.read_text(checksum_uri).strip()
    data = storage.read_verified(payload_uri, expected)
    payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{uri}: checkpoint format {payload.get('format_version')!r}, this rayhash reads {FORMAT_VERSION}"
        )
    return Checkpoint(
        uri=directory,
        sha256=expected,
        config=payload["config"],
        model=payload["model"],
        em=payload["em"],
        method_module=payload.get("method_module", {}),
        optimizer=payload["optimizer"],
        progress=payload["progress"],
        averaging=payload.get("averaging", {}),
        code_kind=payload.get("code_kind", DEFAULT_CODE_KIND),
    )
