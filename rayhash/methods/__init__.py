"""Hashing methods behind one interface, built by name."""

from __future__ import annotations

from rayhash.methods.base import HashingMethod
from rayhash.methods.dsch import DSCH, MethodConfig

METHODS: dict[str, type[HashingMethod]] = {"dsch": DSCH}


def build_method(cfg: MethodConfig, nbits: int) -> HashingMethod:
    if cfg.name not in METHODS:
        raise ValueError(f"unknown method {cfg.name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.name](cfg, nbits)


__all__ = ["DSCH", "METHODS", "HashingMethod", "MethodConfig", "build_method"]
