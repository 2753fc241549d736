"""Bulk encoding of image lakes into code sets with Ray Data, and the code-set artifact.

Names resolve lazily: ``rayhash.encode.codeset`` is pure (the index builder and the Serve
shards read code sets), and importing it must not start importing Ray Data.
"""

import importlib

_EXPORTS = {"EncodeConfig": "config", "run_encode": "pipeline"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rayhash.encode' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rayhash.encode.{_EXPORTS[name]}"), name)
