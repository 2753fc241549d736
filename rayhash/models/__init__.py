"""Backbones (one registry) and the hash model built on them."""

from rayhash.models.backbones import (
    BackboneSpec,
    FeatureMapSequential,
    WeightsUnavailableError,
    backbone_spec,
    backbones_with_feature_maps,
    create_backbone,
    list_backbones,
)
from rayhash.models.hashnet import HashModel, HashOutput, InputSpec, ModelConfig, build_model, input_spec

__all__ = [
    "BackboneSpec",
    "FeatureMapSequential",
    "HashModel",
    "HashOutput",
    "InputSpec",
    "ModelConfig",
    "WeightsUnavailableError",
    "backbone_spec",
    "backbones_with_feature_maps",
    "build_model",
    "create_backbone",
    "input_spec",
    "list_backbones",
]
