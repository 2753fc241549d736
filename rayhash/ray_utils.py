"""Small helpers for the entry points that run on Ray (jobs, CLI); library code never starts Ray."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


def ensure_ray(*, verbose: bool = False, **init_kwargs) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (as ``ray job submit`` sets it) or start a local
    one, unless this process is already connected.

    Unless ``verbose``, what Ray says about itself stays in its log files (under the session's
    ``logs/`` folder, ``/tmp/ray/session_latest/logs`` on a local cluster): its workers' and
    actors' output is not copied to this terminal, its driver-side loggers show warnings only
    (Ray Data's, errors only), and Ray Data draws no progress bars of its own. The
    terminal keeps what the job itself prints: its progress bars, one line per round, results.

    Workers read S3 settings (``AWS_ENDPOINT_URL``, ``AWS_REGION``, credentials) from their own
    environment: a local cluster inherits this process's; on a cluster, pass them in the job's
    runtime env (``ray job submit --runtime-env-json '{"env_vars": {...}}'``). Nothing is added
    here, because Ray refuses a driver runtime env whose variables repeat the job's.
    """
    import ray

    quiet_ray_logs(verbose)
    if ray.is_initialized():
        return
    init_kwargs.setdefault("log_to_driver", verbose)
    init_kwargs.setdefault("logging_level", logging.INFO if verbose else logging.WARNING)
    ray.init(**init_kwargs)
    logger.info("connected to Ray: %s", ray.cluster_resources())


def quiet_ray_logs(verbose: bool = False) -> None:
    """Unless ``verbose``, turn the console loggers of Ray Data (to errors; its log files keep
    everything) and Ray Serve's driver (to warnings; it has no file) down. Ray Data is imported
    here; Serve sets its driver logger up when it is imported, and is quieted only if it has
    been, so an entry point that starts Serve calls this again after importing it."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    # The jobs draw one bar per stage themselves; Ray Data's per-operator bars would draw beside it.
    ctx.enable_progress_bars = verbose
    ctx.print_on_execution_start = verbose
    # Ray Data's warnings are about its own workings (the first says its bars are off).
    levels = {"ray.data": logging.ERROR, "ray.serve": logging.WARNING} if not verbose else {"ray.data": logging.INFO}
    for name, level in levels.items():
        if name in sys.modules:
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                    handler.setLevel(level)


def driver_node_has_cpus() -> bool:
    """Whether the node this driver runs on offers CPUs to Ray (a cluster's head started with
    ``num-cpus 0``, as infra/ starts it, offers none)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return any(n["NodeID"] == node and n["Resources"].get("CPU", 0) > 0 for n in ray.nodes())


def run_on_worker(fn: Callable[..., T], /, *args, num_cpus: float = 1, num_gpus: float = 0, **kwargs) -> T:
    """``fn(*args, **kwargs)`` as a Ray task asking for ``num_cpus`` / ``num_gpus`` when the
    driver's node offers no CPU, else in this process; Ray must be connected.

    A head that takes no work runs drivers, the GCS and Serve's controller only: work a driver
    would otherwise do itself (an index build, the evaluation after training) must go to a worker
    like every other task. On a local cluster, or a head that offers CPUs, it stays here.
    """
    if driver_node_has_cpus():
        return fn(*args, **kwargs)
    import ray

    task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(fn)
    return ray.get(task.remote(*args, **kwargs))
