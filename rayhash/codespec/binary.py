"""Binary codes: one convention for the whole project.

A continuous code ``h`` in (-1, 1)^nbits binarises to bit ``i = 1`` where ``h_i > 0``. Bits pack
most-significant-first into ``nbits / 8`` bytes (``numpy.packbits``, ``bitorder="big"``), the
layout faiss's binary indexes and Parquet's ``fixed_size_binary[nbits/8]`` column both hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rayhash.codespec import parse_hex

if TYPE_CHECKING:  # torch loads lazily: Serve's shard and ingress replicas never need it
    import torch


def check_nbits(nbits: int) -> int:
    if not isinstance(nbits, int) or nbits <= 0 or nbits % 8:
        raise ValueError(f"nbits must be a positive multiple of 8 (faiss packs whole bytes), got {nbits!r}")
    return nbits


def binarize(h: torch.Tensor) -> torch.Tensor:
    """Signs of ``h`` as +-1 floats (0 maps to -1, matching :func:`pack`)."""
    import torch

    return torch.where(h > 0, 1.0, -1.0).to(h.dtype)


def pack(h: np.ndarray | torch.Tensor) -> np.ndarray:
    """Continuous or +-1 codes ``(n, nbits)`` -> packed ``uint8`` ``(n, nbits // 8)``."""
    if hasattr(h, "detach"):  # a torch tensor, without importing torch to ask
        h = h.detach().cpu().numpy()
    h = np.asarray(h)
    check_nbits(h.shape[-1])
    return np.packbits(h > 0, axis=-1, bitorder="big")


def unpack(codes: np.ndarray, nbits: int | None = None) -> np.ndarray:
    """Packed ``uint8`` ``(n, nbits // 8)`` -> bits ``(n, nbits)`` as ``uint8`` 0/1."""
    codes = np.asarray(codes, dtype=np.uint8)
    bits = np.unpackbits(codes, axis=-1, bitorder="big")
    return bits if nbits is None else bits[..., :nbits]


def to_hex(codes: np.ndarray) -> list[str]:
    return [bytes(row).hex() for row in np.asarray(codes, dtype=np.uint8)]


def from_hex(texts: list[str], nbits: int) -> np.ndarray:
    """Parse hex strings of exactly ``nbits / 4`` digits; raise ``ValueError`` saying which is bad."""
    nbytes = check_nbits(nbits) // 8
    return parse_hex(
        texts,
        nbytes,
        lambda i, text: (
            f"code {i} has {len(text)} hex digits ({len(text) * 4} bits); this index holds "
            f"{nbits}-bit codes, i.e. {2 * nbytes} hex digits"
        ),
    )


def hamming(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Brute-force Hamming distances ``(nq, ndb)`` between packed codes, with numpy popcount."""
    q = np.asarray(queries, dtype=np.uint8)
    d = np.asarray(database, dtype=np.uint8)
    out = np.zeros((q.shape[0], d.shape[0]), dtype=np.int32)
    for j in range(q.shape[1]):  # one byte column at a time keeps memory at nq * ndb
        out += np.bitwise_count(np.bitwise_xor(q[:, j, None], d[None, :, j]))
    return out
