"""Serve entry point: ``serve run serve/config.yaml``, or ``serve run serve.app:app index=/path/to/index``.

Serve calls ``app`` with the config's ``args`` (keys of ``rayhash.serve.ServeConfig``).
"""

from rayhash.serve import app_builder as app  # noqa: F401
