"""Backbones (one registry) and the hash model built on them."""

from rayhash.models.backbones import (
    BackboneSpec,
    WeightsUnavailableError,
    backbone_spec,
    create_backbone,
    list_backbones,
)
from rayhash.models.hashnet import HashModel, InputSpec, ModelConfig, build_model, input_spec

__all__ = [
    "BackboneSpec",
    "HashModel",
    "InputSpec",
    "ModelConfig",
    "WeightsUnavailableError",
    "backbone_spec",
    "build_model",
    "create_backbone",
    "input_spec",
    "list_backbones",
]
