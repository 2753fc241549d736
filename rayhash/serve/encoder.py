"""The encoder deployment: uploaded image bytes -> the image's code and search query, batched
across requests. A binary code is its own query; a pq code's query is the image's continuous
vector, which the shards score by asymmetric distance.

Decoding (and its refusal of bad bytes) runs per request in a worker thread, at most
``max_concurrent_decodes`` at a time, each bounded by ``max_pixels`` after a JPEG's reduced-size
draft to the model's input size, from PNG, JPEG or WebP only: an upload's memory is bounded
however many arrive. The model runs once per batch of decoded images (``@serve.batch``), on the
GPU when the replica has one.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve

from rayhash.data.decode import SERVING_FORMATS, ImageDecodeError, decode_image
from rayhash.models.encoder import ImageEncoder
from rayhash.serve.metrics import encoder_batch_histogram

logger = logging.getLogger(__name__)


class UploadDecoder:
    """Uploaded bytes -> an image, bounded: PNG, JPEG or WebP only, a JPEG drafted to ``draft``
    pixels a side, at most ``max_pixels`` decoded and ``max_concurrent`` decodes at once (each in
    a worker thread, off the event loop)."""

    def __init__(self, *, max_bytes: int, max_pixels: int, max_concurrent: int, draft: int):
        self.options = dict(max_bytes=max_bytes, max_pixels=max_pixels, mode=None, formats=SERVING_FORMATS, draft=draft)
        self.slots = asyncio.Semaphore(max_concurrent)

    async def decode(self, data: bytes) -> np.ndarray:
        """The image, or :class:`ImageDecodeError` saying why the bytes are none."""
        async with self.slots:
            return await asyncio.to_thread(decode_image, data, **self.options)


@serve.deployment
class EncoderDeployment:
    def __init__(
        self,
        checkpoint_uri: str,
        *,
        expected_sha256: str,
        nbits: int,
        code_kind: str = "binary",
        max_bytes: int,
        max_pixels: int,
        max_concurrent_decodes: int = 2,
        device: str | None = None,
        max_batch_size: int = 32,
        batch_wait_s: float = 0.005,
    ):
        self.encoder = ImageEncoder.from_checkpoint(checkpoint_uri, device=device)
        # Checked again here, not only when the app was built: the file at this URI may have changed since.
        if self.encoder.checkpoint_sha256 != expected_sha256:
            raise ValueError(
                f"checkpoint {checkpoint_uri} has SHA-256 {self.encoder.checkpoint_sha256}, but the index "
                f"was built from codes of model {expected_sha256}; their codes are not comparable"
            )
        if self.encoder.code_kind != code_kind:
            raise ValueError(
                f"checkpoint {checkpoint_uri} gives {self.encoder.code_kind} codes; the index holds {code_kind} codes"
            )
        if code_kind == "binary" and self.encoder.nbits != nbits:
            raise ValueError(
                f"checkpoint {checkpoint_uri} writes {self.encoder.nbits}-bit codes; the index holds {nbits}"
            )
        # A JPEG decodes at the smallest scale still as big as the model's input.
        self.decoder = UploadDecoder(
            max_bytes=max_bytes,
            max_pixels=max_pixels,
            max_concurrent=max_concurrent_decodes,
            draft=self.encoder.model.input.image_size,
        )
        self.batch_sizes = encoder_batch_histogram()
        self.encode_batch.set_max_batch_size(max_batch_size)
        self.encode_batch.set_batch_wait_timeout_s(batch_wait_s)
        logger.info("encoder %s (%s) on %s", checkpoint_uri, self.encoder.checkpoint_sha256[:12], self.encoder.device)

    async def encode(self, data: bytes) -> tuple[np.ndarray | None, np.ndarray | None, str, str]:
        """``(code uint8 (code_bytes,), query, "", "")``, or ``(None, None, reason, message)`` for bytes
        that are no usable image. The query is the code (binary), or the float32 vector (pq)."""
        try:
            image = await self.decoder.decode(data)
        except ImageDecodeError as e:
            return None, None, e.reason, str(e)
        code, query = await self.encode_batch(image)
        return code, query, "", ""

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def encode_batch(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        self.batch_sizes.observe(len(images))
        codes, queries = await asyncio.to_thread(self.encoder.encode_with_queries, images)
        return list(zip(codes, queries, strict=True))

    async def info(self) -> dict:
        return {
            "checkpoint_uri": self.encoder.checkpoint_uri,
            "checkpoint_sha256": self.encoder.checkpoint_sha256,
            "nbits": self.encoder.nbits,
            "code_kind": self.encoder.code_kind,
            "device": str(self.encoder.device),
        }
