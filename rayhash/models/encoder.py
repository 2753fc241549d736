"""Images -> codes with a trained checkpoint: one class for bulk encoding and Serve.

The checkpoint says which kind of code its method gives (``code_kind``): binary codes are the
signs of h, packed; pq codes are the nearest codeword of each sub-space of h (its z), under the
codebooks the method learned and its checkpoint holds (``em["codebooks"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from rayhash.codespec import binary as codes
from rayhash.codespec import check_writable
from rayhash.codespec import pq as pq_lib
from rayhash.config import from_dict
from rayhash.data.transforms import eval_batch_transform
from rayhash.models import HashModel, ModelConfig, build_model
from rayhash.models import checkpoint as ckpt

logger = logging.getLogger(__name__)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ImageEncoder:
    """A model in eval mode with its own input transform; ``encode`` returns packed codes."""

    def __init__(
        self,
        model: HashModel,
        *,
        device: str | torch.device | None = None,
        checkpoint_uri: str = "",
        checkpoint_sha256: str = "",
        batch_size: int = 256,
        code_kind: str = ckpt.DEFAULT_CODE_KIND,
        spec: pq_lib.PQSpec | None = None,
    ):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        inp = model.input
        self.transform = eval_batch_transform(inp.image_size, inp.channels, inp.mean, inp.std)
        self.checkpoint_uri = checkpoint_uri
        self.checkpoint_sha256 = checkpoint_sha256
        self.batch_size = batch_size
        self.code_kind = code_kind  # the kind the checkpoint's method gives: "binary" or "pq"
        if spec is not None and (code_kind != pq_lib.KIND or spec.dim != model.embed_dim):
            raise ValueError(
                f"a pq spec of dim {spec.dim} does not fit a {code_kind} model whose h has {model.embed_dim} dims"
            )
        self.spec = spec  # pq: the codebooks; None for binary codes (or a pq checkpoint without any)

    @classmethod
    def from_checkpoint(cls, uri: str, device: str | torch.device | None = None, batch_size: int = 256) -> ImageEncoder:
        loaded = ckpt.load(uri)
        model_cfg = from_dict(ModelConfig, loaded.config["model"])
        # The checkpoint holds every weight: do not load (or download) pretrained ones first.
        model = build_model(ModelConfig(**{**model_cfg.__dict__, "pretrained": False}))
        model.load_state_dict(loaded.model)
        books = loaded.em.get("codebooks") if loaded.code_kind == pq_lib.KIND else None
        return cls(
            model,
            device=device,
            checkpoint_uri=loaded.uri,
            checkpoint_sha256=loaded.sha256,
            batch_size=batch_size,
            code_kind=loaded.code_kind,
            spec=None if books is None else pq_lib.PQSpec.from_codebooks(books.float().numpy()),
        )

    @property
    def nbits(self) -> int:
        return self.model.nbits

    @property
    def code_bytes(self) -> int:
        """Bytes per code: ``nbits / 8`` for binary codes, M for pq codes."""
        return self.nbits // 8 if self.code_kind != pq_lib.KIND else self._pq_spec().m

    def _pq_spec(self) -> pq_lib.PQSpec:
        if self.spec is None:
            raise ValueError(
                f"checkpoint {self.checkpoint_uri or '(in memory)'} gives pq codes but holds no codebooks: "
                "its method ran no E-step yet (train past the warm-up rounds)"
            )
        return self.spec

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 ``(H, W, C)`` images -> the model's normalised ``(N, C, H, W)`` input."""
        return self.transform(images)

    @torch.inference_mode()
    def encode_continuous(self, images: Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
        """Continuous codes ``(n, embed_dim)`` (``nbits`` for binary codes, M * d_sub for pq) on the CPU;
        ``images`` are uint8 HxWxC or a preprocessed batch."""
        batch = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        out = [
            self.model(batch[i : i + self.batch_size].to(self.device)).float().cpu()
            for i in range(0, len(batch), self.batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.model.embed_dim)

    def encode_with_queries(self, images: Sequence[np.ndarray] | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, search queries)``: a binary code is its own query; a pq code's is the continuous
        vector it quantises (float32 ``(n, M * d_sub)``), scored by asymmetric distance."""
        if self.code_kind != pq_lib.KIND:
            packed = self.encode(images)
            return packed, packed
        spec = self._pq_spec()
        if len(images) == 0:
            return np.empty((0, spec.m), dtype=np.uint8), np.empty((0, spec.dim), dtype=np.float32)
        z = self.encode_continuous(images).numpy().astype(np.float32)
        return pq_lib.encode(spec, z), z

    def encode(self, images: Sequence[np.ndarray] | torch.Tensor) -> np.ndarray:
        """Codes as uint8 ``(n, code_bytes)``: packed bits, or one centroid number per pq sub-space."""
        if self.code_kind == pq_lib.KIND:
            spec = self._pq_spec()
            if len(images) == 0:
                return np.empty((0, spec.m), dtype=np.uint8)
            return pq_lib.encode(spec, self.encode_continuous(images).numpy())
        check_writable(self.code_kind, f"checkpoint {self.checkpoint_uri}" if self.checkpoint_uri else "")
        if len(images) == 0:
            return np.empty((0, self.nbits // 8), dtype=np.uint8)
        return codes.pack(self.encode_continuous(images))
