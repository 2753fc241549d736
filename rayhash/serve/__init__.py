"""Hamming search over an index set on Ray Serve: shard deployments, an encoder, an HTTP ingress.

Names resolve lazily, so a shard or ingress replica that imports ``rayhash.serve.shard`` does
not also import the encoder's model code (and torch).
"""

import importlib

_EXPORTS = {
    "ServeConfig": "app",
    "app_builder": "app",
    "build_app": "app",
    "start": "app",
    "stop": "app",
    "SearchClient": "client",
    "SearchError": "client",
    "answer_info": "client",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rayhash.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(f"rayhash.serve.{_EXPORTS[name]}"), name)
