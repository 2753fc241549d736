"""The index versions an ingress replica serves, and how it moves from one to the next.

An :class:`IndexVersion` is everything a request needs that belongs to one index set: its shards
(deployment handles, or indexes the replica holds itself), the encoder of the model that wrote
its codes, its limits, codebooks, ``/stats`` body and write log. A request takes the replica's
active version once, when it starts, and uses only that one, so every answer comes whole from
one version and says which (``index_version``). Batches of concurrent requests form per version
(the ingress's ``fan_out`` splits a batch by version), so no answer mixes two.

Swaps are blue/green (:mod:`rayhash.serve.swap`): the new version's deployments start and answer
first, in an application of their own, while the old version serves. A named
:class:`VersionRegistry` actor per service (made by its first swap) then tells every ingress
replica the new target; each
opens it, switches its active version between two requests, waits until the requests it started
on the old version have answered, and acknowledges. Only then is the old version's application
deleted. An ingress replica that starts later (autoscaling, a restart) opens the registry's
target before it takes a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager

import ray
from ray import serve

from rayhash.index.indexset import read_index_manifest, read_spec
from rayhash.serve.fanout import FanOut
from rayhash.serve.parsing import Limits
from rayhash.serve.writes import Writer

logger = logging.getLogger(__name__)

REGISTRY_NAMESPACE = "rayhash"
# Fan-outs one version runs at once in one ingress replica: each is one request in flight at
# every shard, so a shard replica's ongoing requests (what Serve autoscales on) stay at or below
# this many per ingress replica.
FANOUT_BATCHES = 4


def version_id(manifest_sha256: str) -> str:
    """What answers call an index version: the first 12 hex digits of its manifest's SHA-256."""
    return manifest_sha256[:12]


def version_rows(work: list[tuple]) -> int:
    """A fan-out batch's size in query rows: ``work`` holds ``(version, codes)`` per request."""
    return sum(len(codes) for _, codes in work)


async def fan_out_by_version(work: list[tuple], ks: list[int]) -> list[tuple]:
    """One fan-out per index version in a batch of ``(version, codes)`` requests (two only while
    a swap runs), each answer from its own request's version."""
    groups: dict[int, tuple] = {}
    for i, (version, _) in enumerate(work):
        groups.setdefault(id(version), (version, []))[1].append(i)
    answers = await asyncio.gather(
        *(v.shards.search([work[i][1] for i in rows], [ks[i] for i in rows]) for v, rows in groups.values())
    )
    out: list = [None] * len(work)
    for (_, rows), answer in zip(groups.values(), answers, strict=True):
        for i, a in zip(rows, answer, strict=True):
            out[i] = a
    return out


def registry_name(app_name: str) -> str:
    return f"rayhash-versions:{app_name}"


class IndexVersion:
    """One index set as one ingress replica serves it.

    ``target``: ``{"index", "manifest_sha256", "app", "encoder"}``: the index set (its manifest
    pinned), the Serve application holding its deployments (``shard-0``, ... and ``encoder``; none
    for shards the replica holds itself) and the encoder's ``{"checkpoint_uri",
    "checkpoint_sha256"}`` (None: no encoder). ``settings``: the service's options that are not
    per version (limits, placement, threads, timeout). ``shards`` / ``encoder``: handles bound in
    the app itself, which stand in for looking them up in ``target["app"]``.
    """

    def __init__(self, target: dict, settings: dict, shards: list | None = None, encoder=None):
        self.target, self.settings = target, settings
        m = read_index_manifest(target["index"], target["manifest_sha256"])
        self.manifest, self.id = m, version_id(m.sha256)
        self.spec = read_spec(m)  # pq: the checksummed codebooks that turn code queries into vectors
        local = settings["shards_in_ingress"]
        self.encoder, self.timeout_s = encoder, settings["timeout_s"]
        self.shards = FanOut(
            shards or [],
            timeout_s=self.timeout_s,
            local={"uri": m.uri, "sha256": m.sha256, "nprobe": settings["nprobe"], "threads": settings["threads"]}
            if local
            else None,
        )
        self.limits = Limits(
            nbits=m.nbits,
            max_k=settings["max_k"],
            max_queries=settings["max_queries"],
            max_upload_bytes=settings["max_upload_bytes"],
            pq_m=self.spec.m if self.spec else 0,
            pq_k=self.spec.k if self.spec else 256,
        )
        self.writer = Writer(self.shards, m.uri, m.sha256, self.limits) if settings["writes"] else None
        self.stats = self._stats(target.get("encoder"))
        self.inflight = 0  # requests that took this version and have not answered yet

    def _stats(self, encoder: dict | None) -> dict:
        m, s = self.manifest, self.settings
        return {
            "index_version": self.id,
            "code_kind": m.code_kind,
            **({"code_spec": self.spec.to_dict()} if self.spec else {}),
            "shards": len(m.shards),
            "items": m.items,
            "nbits": m.nbits,
            "placement": "ingress" if s["shards_in_ingress"] else "deployments",
            "writes": s["writes"],
            "index": {
                "uri": m.uri,
                "manifest_sha256": m.sha256,
                "kind": m.kind,
                "params": {**m.params, **({"nprobe": s["nprobe"]} if s["nprobe"] else {})},
            },
            "codeset": {"uri": m.codeset_uri, "manifest_sha256": m.codeset_manifest_sha256},
            "model": {"checkpoint_uri": m.checkpoint_uri, "checkpoint_sha256": m.checkpoint_sha256},
            "encoder": encoder,
            "limits": {
                "max_k": s["max_k"],
                "max_queries": s["max_queries"],
                "max_upload_bytes": s["max_upload_bytes"],
                "timeout_s": s["timeout_s"],
            },
        }

    @contextmanager
    def use(self):
        """Count a request on this version while it runs: a swap waits for these to answer."""
        self.inflight += 1
        try:
            yield self
        finally:
            self.inflight -= 1

    def connect(self) -> IndexVersion:
        """Handles to the deployments in ``target["app"]`` (None: the ingress's own app), made on the
        replica's event loop, where Serve's fast path runs their routers."""
        app = self.target.get("app") or serve.get_replica_context().app_name
        if not self.settings["shards_in_ingress"] and not self.shards.handles:
            self.shards.handles = [
                serve.get_deployment_handle(f"shard-{i}", app) for i in range(len(self.manifest.shards))
            ]
        if self.encoder is None and self.target.get("encoder"):
            self.encoder = serve.get_deployment_handle("encoder", app)
        return self

    async def ready(self) -> None:
        """Return once every shard (and the encoder) of this version answers; raise if one does not."""
        calls = [self.shards.call(i, "info") for i in range(len(self.shards))]
        if self.encoder is not None:
            calls.append(self.encoder.info.remote())
        await asyncio.gather(*(asyncio.wait_for(c, self.timeout_s) for c in calls))


@ray.remote(num_cpus=0)
class VersionRegistry:
    """The version one service's ingress replicas should serve: a target, its generation, and
    which replicas have switched to it (and drained the one before)."""

    def __init__(self):
        self.generation, self.target, self.acks = 0, None, set()
        self.changed = asyncio.Event()
        self.settings, self.base = None, None

    def register(self, settings: dict, base: dict) -> None:
        """An ingress replica's service settings and the version its app was deployed with."""
        self.settings, self.base = settings, base

    def describe(self) -> dict:
        """What a swap needs: the service's settings, its deployed version, the version in use."""
        target = (
            self.target
            if self.target and self.base and self.target.get("base") == self.base["manifest_sha256"]
            else None
        )
        return {"settings": self.settings, "base": self.base, "target": target or self.base}

    def get(self) -> tuple[int, dict | None]:
        return self.generation, self.target

    def set(self, target: dict) -> int:
        self.generation, self.target, self.acks = self.generation + 1, target, set()
        self.changed.set()
        self.changed = asyncio.Event()
        return self.generation

    async def wait(self, generation: int, timeout_s: float) -> tuple[int, dict | None]:
        """The target once its generation is past ``generation``, or the current one after ``timeout_s``."""
        if self.generation == generation:
            try:
                await asyncio.wait_for(self.changed.wait(), timeout_s)
            except TimeoutError:
                pass
        return self.generation, self.target

    def ack(self, replica: str, generation: int) -> None:
        if generation == self.generation:
            self.acks.add(replica)

    def acked(self) -> tuple[int, list[str]]:
        return self.generation, sorted(self.acks)


def registry(app_name: str, create: bool = True):
    """The service's registry actor (detached, so it outlives the swap's driver; ``stop`` ends it);
    None if absent and not ``create``."""
    name = registry_name(app_name)
    if create:
        return VersionRegistry.options(
            name=name, namespace=REGISTRY_NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()
    try:
        return ray.get_actor(name, namespace=REGISTRY_NAMESPACE)
    except ValueError:
        return None


class VersionWatcher:
    """An ingress replica's task that follows its service's registry: opens each new target, makes
    it active, waits for the requests on the old one to answer, then acknowledges.

    The registry exists once a first swap made it: until then the task only looks for it, every
    ``FIND_S``, so a service that never swaps runs no registry actor. Created in the replica's
    constructor, which Serve runs on the event loop that serves its requests: the task runs
    there from the start, whether or not requests come, and the deployment handles it makes
    belong to that loop (Serve's fast path runs their routers on it). Opening a version
    (reading its manifest, loading shards the ingress holds) runs in a thread."""

    POLL_S = 30.0
    FIND_S = 0.5

    def __init__(self, app_name: str, replica: str, holder, settings: dict, base_target: dict):
        self.app_name, self.replica, self.holder = app_name, replica, holder
        self.settings, self.base_target = settings, base_target
        # Targets are swaps away from the version this app was deployed with: a registry left
        # by an earlier deployment of another index set does not apply to this one.
        self.base = base_target["manifest_sha256"]
        self.generation, self.registry = 0, self._find()
        if self.registry is not None:
            self.generation, target = ray.get(self.registry.get.remote())
            if self._applies(target):
                try:  # a replica started after a swap serves the swapped-to version (already checked ready)
                    holder.version = IndexVersion(target, settings).connect()
                except Exception:
                    logger.exception("ingress %s: cannot open the registry's version; serving %s", replica, self.base)
            self.registry.ack.remote(self.replica, self.generation)
        self.task = asyncio.get_running_loop().create_task(self._follow())

    def _find(self):
        found = registry(self.app_name, create=False)
        if found is not None:
            found.register.remote(self.settings, self.base_target)
        return found

    def _applies(self, target: dict | None) -> bool:
        return target is not None and target.get("base") == self.base

    async def _switch(self, target: dict) -> None:
        old = self.holder.version
        new = (await asyncio.to_thread(IndexVersion, target, self.settings)).connect()
        await new.ready()  # every shard and the encoder of the new version answer first
        self.holder.version = new
        deadline = time.monotonic() + old.timeout_s + 1.0
        while old.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        logger.info("ingress %s: index version %s -> %s", self.replica, old.id, new.id)

    async def _follow(self) -> None:
        while True:
            if self.registry is None:
                await asyncio.sleep(self.FIND_S)
                self.registry = await asyncio.to_thread(self._find)
                continue
            try:
                generation, target = await self.registry.wait.remote(self.generation, self.POLL_S)
            except Exception:  # the registry actor is gone (the service stopped, or it died): look again
                self.registry = None
                continue
            if generation == self.generation:
                continue
            self.generation = generation
            try:
                if self._applies(target) and target["manifest_sha256"] != self.holder.version.manifest.sha256:
                    await self._switch(target)
                await self.registry.ack.remote(self.replica, generation)
            except Exception:  # the version in use stays; the swap sees no acknowledgement and says so
                logger.exception("ingress %s: cannot open index version %s", self.replica, target)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8)
class VersionHead:
    """The root of an index version's own application (Serve needs one): it keeps the version's
    shard and encoder deployments in that application. Traffic goes to them, not here."""

    def __init__(self, shards: list, encoder=None):
        self.parts = len(shards) + (encoder is not None)

    def info(self) -> dict:
        return {"deployments": self.parts}


def forget_registry(app_name: str) -> None:
    handle = registry(app_name, create=False)
    if handle is not None:
        ray.kill(handle)
