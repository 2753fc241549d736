"""Hashing methods behind one interface, registered by name and built by :func:`build_method`."""

from __future__ import annotations

from rayhash.methods.base import HashingMethod, MethodConfig, ShardInputs, ViewBatch
from rayhash.methods.dcuh import DCUH, DCUHConfig
from rayhash.methods.deepquan import DeepQuan, DeepQuanConfig
from rayhash.methods.dsch import DSCH, DSCHConfig
from rayhash.methods.psch import PSCH, PSCHConfig
from rayhash.methods.registry import (
    MethodEntry,
    build_method,
    config_classes,
    list_methods,
    method_entry,
    register_method,
)

__all__ = [
    "DCUH",
    "DCUHConfig",
    "DeepQuan",
    "DeepQuanConfig",
    "PSCH",
    "PSCHConfig",
    "DSCH",
    "DSCHConfig",
    "HashingMethod",
    "MethodConfig",
    "MethodEntry",
    "ShardInputs",
    "ViewBatch",
    "build_method",
    "config_classes",
    "list_methods",
    "method_entry",
    "register_method",
]
