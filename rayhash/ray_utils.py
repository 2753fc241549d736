"""Small helpers for the entry points that run on Ray (jobs, CLI); library code never starts Ray."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

# Where S3 is and which region: workers need the driver's values to reach the same storage.
# Credentials are not forwarded (runtime envs are visible in the dashboard): workers take
# them from their own environment or instance role.
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")


def ensure_ray(**init_kwargs) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (as ``ray job submit`` sets it) or start a local
    one, unless this process is already connected."""
    import ray

    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    runtime_env = init_kwargs.pop("runtime_env", {}) or {}
    runtime_env = {**runtime_env, "env_vars": {**env, **runtime_env.get("env_vars", {})}}
    ray.init(runtime_env=runtime_env, **init_kwargs)
    logger.info("connected to Ray: %s", ray.cluster_resources())
