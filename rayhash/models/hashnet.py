"""The hash model: a registered backbone, then a head to continuous codes in (-1, 1).

The head's width is ``bits`` (one sign per bit) unless ``embed_dim`` says otherwise: a PQ method
trains an embedding of M sub-spaces of d_sub dims and quantises it, so its width is M * d_sub
whatever the code length. The trainer sets ``embed_dim`` from the method (``embedding_dim``), and
the checkpoint's config carries it, so whatever rebuilds the model rebuilds the same head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rayhash.codespec.binary import check_nbits
from rayhash.models.backbones import backbone_spec, backbones_with_feature_maps, create_backbone


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "small_cnn"
    bits: int = 64
    pretrained: bool = True
    image_size: int = 0  # 0: the backbone's own input size
    channels: int = 0  # 0: the backbone's own channel count
    head_hidden: int = 0  # 0: a single linear layer, as in DSCH's released scripts
    embed_dim: int = 0  # width of h; 0: bits. Set by the trainer for a method that trains another width
    mean: tuple[float, ...] = ()  # empty: the backbone's normalisation
    std: tuple[float, ...] = ()


@dataclass(frozen=True)
class InputSpec:
    """What an image must be turned into before the model sees it."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def input_spec(cfg: ModelConfig) -> InputSpec:
    spec = backbone_spec(cfg.backbone)
    channels = cfg.channels or spec.channels
    mean, std = cfg.mean or spec.mean, cfg.std or spec.std
    if len(mean) != channels:  # a 1-channel normalisation reused for 3 channels, or back
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    return InputSpec(cfg.image_size or spec.image_size, channels, tuple(mean), tuple(std))


@dataclass(frozen=True)
class HashOutput:
    """A batch through the model: codes ``h``, and where asked the backbone's pooled features
    (what the head sees) and its last spatial feature map."""

    h: torch.Tensor  # (B, embed_dim or bits) in (-1, 1)
    features: torch.Tensor | None = None  # (B, feature_dim)
    feature_map: torch.Tensor | None = None  # (B, C, H, W)


class HashModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_nbits(cfg.bits)
        if cfg.embed_dim < 0:
            raise ValueError(f"model.embed_dim must be >= 0 (0: bits), got {cfg.embed_dim}")
        self.cfg = cfg
        self.input = input_spec(cfg)
        self.backbone, feature_dim = create_backbone(
            cfg.backbone, in_channels=self.input.channels, pretrained=cfg.pretrained
        )
        self.feature_dim = feature_dim
        if cfg.head_hidden:
            self.head = nn.Sequential(
                nn.Linear(feature_dim, cfg.head_hidden),
                nn.BatchNorm1d(cfg.head_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(cfg.head_hidden, self.embed_dim),
            )
        else:
            self.head = nn.Linear(feature_dim, self.embed_dim)

    @property
    def nbits(self) -> int:
        return self.cfg.bits

    @property
    def embed_dim(self) -> int:
        """The width of h: ``bits`` for binary codes, a PQ method's M * d_sub."""
        return self.cfg.embed_dim or self.cfg.bits

    @property
    def has_feature_map(self) -> bool:
        return hasattr(self.backbone, "forward_with_map")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous codes ``h`` in (-1, 1)^bits; ``rayhash.codespec.binary.binarize`` gives the binary code."""
        return torch.tanh(self.head(self.backbone(x)))

    def outputs(self, x: torch.Tensor, *, features: bool = False, feature_map: bool = False) -> HashOutput:
        """The codes ``h`` as :meth:`forward` gives them, with the backbone's pooled features and its
        last spatial feature map where asked."""
        if feature_map:
            if not self.has_feature_map:
                raise ValueError(
                    f"backbone {self.cfg.backbone!r} gives no spatial feature map; backbones that do: "
                    f"{', '.join(backbones_with_feature_maps())}"
                )
            pooled, fmap = self.backbone.forward_with_map(x)
        else:
            pooled, fmap = self.backbone(x), None
        h = torch.tanh(self.head(pooled))
        return HashOutput(h, pooled if features else None, fmap)


def build_model(cfg: ModelConfig) -> HashModel:
    return HashModel(cfg)
