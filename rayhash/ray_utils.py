"""Small helpers for the entry points that run on Ray (jobs, CLI); library code never starts Ray."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def ensure_ray(**init_kwargs) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (as ``ray job submit`` sets it) or start a local
    one, unless this process is already connected.

    Workers read S3 settings (``AWS_ENDPOINT_URL``, ``AWS_REGION``, credentials) from their own
    environment: a local cluster inherits this process's; on a cluster, pass them in the job's
    runtime env (``ray job submit --runtime-env-json '{"env_vars": {...}}'``). Nothing is added
    here, because Ray refuses a driver runtime env whose variables repeat the job's.
    """
    import ray

    if ray.is_initialized():
        return
    ray.init(**init_kwargs)
    logger.info("connected to Ray: %s", ray.cluster_resources())
