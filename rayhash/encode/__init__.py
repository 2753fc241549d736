"""Bulk encoding of image lakes into code sets with Ray Data (see :mod:`rayhash.encode.pipeline`)."""

from rayhash.encode.config import EncodeConfig
from rayhash.encode.pipeline import run_encode

__all__ = ["EncodeConfig", "run_encode"]
