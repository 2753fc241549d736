"""Images -> codes with a trained checkpoint: one class for bulk encoding and Serve.

The checkpoint says which kind of code its method gives (``code_kind``); this encoder writes
binary codes (the sign of h, packed) and refuses to encode for a kind it cannot write yet.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from rayhash.codespec import binary as codes
from rayhash.codespec import check_writable
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
    ):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        spec = model.input
        self.transform = eval_batch_transform(spec.image_size, spec.channels, spec.mean, spec.std)
        self.checkpoint_uri = checkpoint_uri
        self.checkpoint_sha256 = checkpoint_sha256
        self.batch_size = batch_size
        self.code_kind = code_kind  # the kind the checkpoint's method gives: "binary" or "pq"

    @classmethod
    def from_checkpoint(cls, uri: str, device: str | torch.device | None = None, batch_size: int = 256) -> ImageEncoder:
        loaded = ckpt.load(uri)
        model_cfg = from_dict(ModelConfig, loaded.config["model"])
        # The checkpoint holds every weight: do not load (or download) pretrained ones first.
        model = build_model(ModelConfig(**{**model_cfg.__dict__, "pretrained": False}))
        model.load_state_dict(loaded.model)
        return cls(
            model,
            device=device,
            checkpoint_uri=loaded.uri,
            checkpoint_sha256=loaded.sha256,
            batch_size=batch_size,
            code_kind=loaded.code_kind,
        )

    @property
    def nbits(self) -> int:
        return self.model.nbits

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 ``(H, W, C)`` images -> the model's normalised ``(N, C, H, W)`` input."""
        return self.transform(images)

    @torch.inference_mode()
    def encode_continuous(self, images: Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
        """Continuous codes ``(n, nbits)`` on the CPU; ``images`` are uint8 HxWxC or a preprocessed batch."""
        batch = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        out = [
            self.model(batch[i : i + self.batch_size].to(self.device)).float().cpu()
            for i in range(0, len(batch), self.batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.nbits)

    def encode(self, images: Sequence[np.ndarray] | torch.Tensor) -> np.ndarray:
        """Packed codes ``(n, nbits // 8)`` uint8."""
        check_writable(self.code_kind, f"checkpoint {self.checkpoint_uri}" if self.checkpoint_uri else "")
        if len(images) == 0:
            return np.empty((0, self.nbits // 8), dtype=np.uint8)
        return codes.pack(self.encode_continuous(images))
