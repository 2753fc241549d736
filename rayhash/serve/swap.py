"""Blue/green swaps of the index version a running service answers from.

``swap(name, index)`` starts the new version's deployments (shards and, for a new model, its
encoder) as an application of their own beside the serving one, waits until they answer, then
points every ingress replica of service ``name`` at them (:mod:`rayhash.serve.versions`). Each
replica switches between two requests and acknowledges once the requests it started on the old
version have answered; only then is the old version's application deleted. Requests keep flowing
throughout, and each answer comes whole from one version and names it (``index_version``).

Rolling back is the same call with the previous index set. Swapping back to the version the
service was deployed with reuses the deployments bound in its own app, which stay up for that.
"""

from __future__ import annotations

import logging
import time

import ray
from ray import serve

from rayhash import config
from rayhash.encode import codeset
from rayhash.index import writelog
from rayhash.index.indexset import read_index_manifest
from rayhash.serve.app import (
    ServeConfig,
    build_version_app,
    check_config,
    encoder_model,
    version_app_prefix,
    wait_until_ready,
)
from rayhash.serve.versions import registry, version_id

logger = logging.getLogger(__name__)


def _running_replicas(name: str) -> int:
    app = serve.status().applications.get(name)
    if app is None or "ingress" not in app.deployments:
        raise ValueError(
            f"no rayhash service {name!r} is running (serve status lists {sorted(serve.status().applications)})"
        )
    return app.deployments["ingress"].replica_states.get("RUNNING", 0)


def check_writes_carried(old: dict, m) -> int:
    """The write-log record up to which index ``m`` holds the writes of version ``old``; refuses a
    version that would drop acknowledged writes (one not compacted from ``old`` up to its log's head)."""
    head = writelog.head(old["index"])
    if head == 0 or m.sha256 == old["manifest_sha256"]:
        return head
    source = codeset.read_manifest(m.codeset_uri).config.get("compacted_from", {})
    same_source = source.get("index_sha256") == old["manifest_sha256"]
    if not same_source or source.get("writelog_seq") != head:
        held = f"up to record {source['writelog_seq']}" if same_source else "none"
        raise ValueError(
            f"the service takes writes, and records 1..{head} of {old['index']}'s write log are acknowledged, "
            f"but {m.uri} holds {held} of them: fold them in first "
            f"(rayhash compact --index {old['index']} ...) and swap to that index set"
        )
    return head


def swap(
    index_uri: str, checkpoint_uri: str | None = None, *, name: str = "rayhash", timeout_s: float = 300.0, **options
) -> dict:
    """Point service ``name`` at index set ``index_uri``, blue/green; return what was swapped.

    ``checkpoint_uri``: the encoder for the new version (None: the one its code set records).
    ``options``: :class:`rayhash.serve.ServeConfig` keys for the new version's deployments
    (``shards={...}``, ``encoder={...}``, ``nprobe``); the rest are the running service's.
    """
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    _running_replicas(name)  # a clear error if there is no such service
    # The registry, not a handle: a driver outside an event loop cannot use Serve's fast-path
    # handles. The ingress replicas find it (the first swap makes it) and say what they serve.
    versions = registry(name)
    while (running := ray.get(versions.describe.remote()))["settings"] is None:
        if time.monotonic() > t0 + 30:
            raise ValueError(f"no ingress replica of service {name!r} answered its registry: is it a rayhash app?")
        time.sleep(0.1)
    settings, base, old = running["settings"], running["base"], running["target"]
    cfg = config.from_dict(ServeConfig, {**settings, **options, "index": index_uri, "checkpoint": checkpoint_uri})
    m = read_index_manifest(index_uri)
    check_config(cfg)
    carried = check_writes_carried(old, m) if cfg.writes else None
    model = encoder_model(cfg, m)
    if m.sha256 == base["manifest_sha256"] and model == base["encoder"]:
        app_name = None  # back to the version the service was deployed with: its deployments are up
    else:
        app_name = f"{version_app_prefix(name)}{version_id(m.sha256)}"
        serve.run_many(
            [serve.RunTarget(target=build_version_app(cfg, m, model), name=app_name, route_prefix=None)],
            wait_for_applications_running=False,
        )
        wait_until_ready(app_name, None, max(0.0, deadline - time.monotonic()))
    target = {
        "index": m.uri,
        "manifest_sha256": m.sha256,
        "app": app_name,
        "encoder": model,
        "base": base["manifest_sha256"],
    }
    generation = ray.get(versions.set.remote(target))
    # Every ingress replica running now must have switched and drained the old version.
    while True:
        acked_generation, acked = ray.get(versions.acked.remote())
        replicas = _running_replicas(name)
        if acked_generation != generation:
            raise RuntimeError(f"another swap of {name!r} started meanwhile; this one ({index_uri}) stands down")
        if len(acked) >= replicas:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(acked)} of {replicas} ingress replicas of {name!r} switched to {version_id(m.sha256)} within "
                f"{timeout_s:g} s; the others still serve the old version (their logs say why). The old version's "
                "app stays up: swap again, or back."
            )
        time.sleep(0.05)
    not_carried = None if carried is None else max(0, writelog.head(old["index"]) - carried)
    if not_carried:
        # Acknowledged while the swap ran: in the old version's log, not the new version.
        logger.warning("%d writes acknowledged during the swap are in %s's log only", not_carried, old["index"])
    if old.get("app") and old["app"] != app_name:
        serve.delete(old["app"], _blocking=False)  # its replicas drain on their own
    summary = {
        "service": name,
        "from": version_id(old["manifest_sha256"]),
        "to": version_id(m.sha256),
        "index": m.uri,
        "app": app_name or name,
        "ingress_replicas": len(acked),
        "seconds": round(time.monotonic() - t0, 3),
        **({"writes_not_carried": not_carried} if not_carried is not None else {}),
    }
    logger.info("swapped %s", summary)
    return summary
