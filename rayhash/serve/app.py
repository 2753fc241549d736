"""Assemble the search service: one deployment per index shard, an encoder, the HTTP ingress.

Two placements of the shards: one deployment each (the default, which scales out: a shard per
replica set, and a lost shard is a 503 naming it), or ``shards_in_ingress``: every ingress
replica loads all shards (each still checked against its SHA-256) and searches them in worker
threads, saving an actor hop and its serialisation per query (IVF shards are merged into one
index first, saving the per-shard repeats of an IVF search), for indexes that fit in one
replica's memory (about 26 bytes per 64-bit code with its id).

Three ways in, one builder:

- ``serve run serve/config.yaml`` (or ``serve deploy`` to a cluster): Serve calls
  :func:`app_builder` with the config's ``args``;
- ``serve run serve.app:app index=/path/to/index``: the same, args from the command line;
- :func:`start` from Python (what ``rayhash serve`` and the tests call): deploys without
  blocking, then waits, with a deadline, until ``/healthz`` answers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace

import requests
from ray import serve

from rayhash import config
from rayhash.index.indexset import read_index_manifest
from rayhash.models import checkpoint
from rayhash.serve.encoder import EncoderDeployment
from rayhash.serve.ingress import SearchIngress
from rayhash.serve.shard import IndexShardDeployment
from rayhash.serve.versions import FANOUT_BATCHES, VersionHead, forget_registry

logger = logging.getLogger(__name__)

# Fractional CPUs so that an ingress, an encoder and two shards start on a 2-core machine.
DEFAULT_OPTIONS = {
    "ingress": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.25}},
    "shards": {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.25}},
    "encoder": {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.25}},
}


# shards_in_ingress=None holds an index in each ingress replica up to this size (codes and ids).
INGRESS_HOLD_BYTES = 4 << 30
BYTES_PER_ID = 24
AUTO_INGRESS_REPLICAS = 2


@dataclass(frozen=True)
class ServeConfig:
    index: str = ""  # index-set directory (local or s3://)
    index_sha256: str = ""  # pins the index manifest's SHA-256: another version is refused ("" = any)
    checkpoint: str | None = None  # the encoder's checkpoint; None: the one the index's code set records
    encode_images: bool = True  # False: no encoder deployment, /search/image answers 503
    nprobe: int | None = None  # ivf: lists probed per query (default: the index's own)
    threads: int = 1  # faiss OpenMP threads per search call (of a shard replica, or of a shard held by the ingress)
    # True: each ingress replica holds every shard (IVF merged into one); no shard deployments.
    # None: decide by the index (held in the ingress when writes are off and it fits INGRESS_HOLD_BYTES).
    shards_in_ingress: bool | None = False
    # True: POST /items and DELETE /items/{id}, through the index set's write log (rayhash.index.writelog)
    writes: bool = False
    max_k: int = 1000
    max_queries: int = 256  # codes per /search/codes or /search/packed request
    max_upload_bytes: int = 8 << 20
    # Pixels an upload may decode to (a JPEG decodes at reduced size first: see decode_image's
    # draft): about 12 MB of RGB per decode, max_concurrent_decodes at a time per encoder replica.
    max_pixels: int = 4_000_000
    max_concurrent_decodes: int = 2
    timeout_s: float = 10.0  # per request, for every shard and the encoder
    device: str | None = None  # encoder device; None: CUDA when the replica has a GPU
    batch_rows: int = 256  # query rows per fan-out and per faiss call (at least max_queries)
    shard_batch_wait_s: float = 0.0  # 0: a batch is whatever queued while faiss ran the last one
    encode_batch_size: int = 32
    encode_batch_wait_s: float = 0.005
    # Serve deployment options (num_replicas, autoscaling_config, ray_actor_options, ...) over DEFAULT_OPTIONS.
    ingress: dict = field(default_factory=dict)
    shards: dict = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)


def deployment_options(role: str, overrides: dict) -> dict:
    opts = {**DEFAULT_OPTIONS[role], **overrides}
    opts["ray_actor_options"] = {**DEFAULT_OPTIONS[role]["ray_actor_options"], **overrides.get("ray_actor_options", {})}
    if "autoscaling_config" in overrides and "num_replicas" not in overrides:
        opts.pop("num_replicas")  # Serve refuses a fixed count beside autoscaling
    return opts


def check_shard_autoscaling(cfg: ServeConfig) -> None:
    """Refuse a shard autoscaling target that load can never reach: a shard sees at most
    ``FANOUT_BATCHES`` requests in flight per ingress replica, so a higher target never scales."""
    target = cfg.shards.get("autoscaling_config", {}).get("target_ongoing_requests")
    if target is None or cfg.shards_in_ingress:
        return
    ingress = cfg.ingress.get("autoscaling_config", {}).get("max_replicas") or cfg.ingress.get("num_replicas", 1)
    reachable = FANOUT_BATCHES * ingress
    if target >= reachable:
        raise ValueError(
            f"shards.autoscaling_config.target_ongoing_requests={target} is never reached: each of the "
            f"{ingress} ingress replica(s) keeps at most {FANOUT_BATCHES} requests in flight per shard, "
            f"{reachable} in all; set it below {reachable} (1 or 2 scales on a modest load)"
        )


def check_config(cfg: ServeConfig) -> None:
    check_shard_autoscaling(cfg)
    if cfg.writes and cfg.shards_in_ingress:
        raise ValueError(
            "writes=true needs shard deployments (each replays the write log); set shards_in_ingress=false"
        )
    if cfg.batch_rows < cfg.max_queries:
        raise ValueError(
            f"batch_rows ({cfg.batch_rows}) must be at least max_queries ({cfg.max_queries}): "
            "one request's codes go to a shard in one batch"
        )


def encoder_model(cfg: ServeConfig, m) -> dict | None:
    """The encoder's ``{"checkpoint_uri", "checkpoint_sha256"}`` for index ``m`` (None without one);
    refuses a model that did not write the index's codes."""
    if not cfg.encode_images:
        return None
    uri = cfg.checkpoint or m.checkpoint_uri
    try:
        sha = checkpoint.load(uri).sha256
    except (OSError, ValueError) as e:
        raise ValueError(
            f"cannot load the encoder checkpoint {uri} ({e}); pass checkpoint=<uri of the model "
            "that wrote the code set>, or encode_images=false to serve code queries only"
        ) from e
    if sha != m.checkpoint_sha256:
        raise ValueError(
            f"checkpoint {uri} (SHA-256 {sha[:12]}...) is not the model that wrote the codes of index {m.uri} "
            f"({m.checkpoint_uri}, SHA-256 {m.checkpoint_sha256[:12]}...): their codes are not comparable. "
            "Serve the code set's own checkpoint, or re-encode and re-index with this one."
        )
    return {"checkpoint_uri": uri, "checkpoint_sha256": sha}


def version_deployments(cfg: ServeConfig, m, model: dict | None) -> tuple[list, object]:
    """Index ``m``'s bound shard deployments (none when the ingress holds the shards) and encoder."""
    encoder = None
    if model is not None:
        encoder = EncoderDeployment.options(name="encoder", **deployment_options("encoder", cfg.encoder)).bind(
            model["checkpoint_uri"],
            expected_sha256=model["checkpoint_sha256"],
            nbits=m.nbits,
            code_kind=m.code_kind,
            max_bytes=cfg.max_upload_bytes,
            max_pixels=cfg.max_pixels,
            max_concurrent_decodes=cfg.max_concurrent_decodes,
            device=cfg.device,
            max_batch_size=cfg.encode_batch_size,
            batch_wait_s=cfg.encode_batch_wait_s,
        )
    if cfg.shards_in_ingress:
        return [], encoder
    shard_opts = deployment_options("shards", cfg.shards)
    shards = [
        IndexShardDeployment.options(name=f"shard-{i}", **shard_opts).bind(
            m.uri,
            i,
            manifest_sha256=m.sha256,  # every replica loads the version this app was built on
            nprobe=cfg.nprobe,
            threads=cfg.threads,
            batch_rows=cfg.batch_rows,
            batch_wait_s=cfg.shard_batch_wait_s,
            writes=cfg.writes,
        )
        for i in range(len(m.shards))
    ]
    return shards, encoder


def settings_of(cfg: ServeConfig) -> dict:
    """What every index version of a service shares: its options, as plain values."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("index", "index_sha256", "checkpoint")}


def resolve_placement(cfg: ServeConfig, m) -> ServeConfig:
    """``shards_in_ingress=None`` decided for index ``m``: the ingress holds the shards (no actor hop
    per query, the fastest path) unless writes are on or the index would not fit in a replica.
    Held there, the ingress runs ``AUTO_INGRESS_REPLICAS`` replicas unless ``ingress`` sets a
    count: each searches on a core of its own, and one keeps answering while another restarts."""
    if cfg.shards_in_ingress is not None:
        return cfg
    held = m.items * (m.nbits // 8 + BYTES_PER_ID)
    in_ingress = not cfg.writes and held <= INGRESS_HOLD_BYTES
    ingress = cfg.ingress
    if in_ingress and not {"num_replicas", "autoscaling_config"} & set(ingress):
        ingress = {**ingress, "num_replicas": AUTO_INGRESS_REPLICAS}
    return replace(cfg, shards_in_ingress=in_ingress, ingress=ingress)


def build_app(cfg: ServeConfig) -> serve.Application:
    """The bound application; refuses an encoder whose model did not write the index's codes."""
    if not cfg.index:
        raise ValueError("set index: the index-set directory written by jobs/build_index.py")
    m = read_index_manifest(cfg.index, cfg.index_sha256 or None)
    cfg = resolve_placement(cfg, m)
    check_config(cfg)
    model = encoder_model(cfg, m)
    shards, encoder = version_deployments(cfg, m, model)
    target = {"index": m.uri, "manifest_sha256": m.sha256, "app": None, "encoder": model}
    return SearchIngress.options(name="ingress", **deployment_options("ingress", cfg.ingress)).bind(
        shards, encoder, target=target, settings=settings_of(cfg)
    )


def build_version_app(cfg: ServeConfig, m, model: dict | None) -> serve.Application:
    """Index ``m``'s deployments as an application of their own, with no route: what a swap starts
    beside the serving version before it points the ingress at them."""
    shards, encoder = version_deployments(cfg, m, model)
    return VersionHead.bind(shards, encoder)


def app_builder(args: dict) -> serve.Application:
    """Serve's application builder: ``args`` are :class:`ServeConfig` keys, checked strictly."""
    return build_app(config.from_dict(ServeConfig, args))


def _http_host() -> str:
    # Serve has no public getter for its HTTP options; the client holds what the controller uses.
    from ray.serve.context import _get_global_client

    host = _get_global_client().http_config.host
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def http_address() -> str:
    """``http://host:port`` of the running Serve proxy (which keeps its first options if started twice)."""
    from ray.serve.context import _get_global_client

    return f"http://{_http_host()}:{_get_global_client().http_config.port}"


def direct_ingress_urls(name: str) -> list[str]:
    """The ingress replicas' own ``http://host:port`` when Serve runs direct ingress, else ``[]``.

    With ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (or ``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``) in Ray's
    environment each ingress replica also serves HTTP on a port of its own (30000 up): a request
    sent there skips the proxy's hop. The
    ports are per replica, so a client (or a load balancer) spreads requests over them itself.
    """
    import ray
    from ray.serve.context import _get_global_client

    # The controller's target groups (what a cloud load balancer is pointed at) name the ingress
    # replicas and their ports under direct ingress, and the proxies otherwise.
    groups = ray.get(_get_global_client()._controller.get_target_groups.remote(name))
    return [
        f"http://{_http_host()}:{t.port}"
        for g in groups
        if g.protocol == "HTTP" and g.app_name == name
        for t in g.targets
        if t.name.startswith("SERVE_REPLICA::")
    ]


def wait_until_ready(name: str, url: str | None, timeout_s: float = 300.0) -> None:
    """Wait until app ``name`` is RUNNING and ``url/healthz`` answers 200 (no ``url``: RUNNING is
    enough, for an app with no route); raise with Serve's message if not."""
    deadline = time.monotonic() + timeout_s
    status = message = ""
    while time.monotonic() < deadline:
        app_status = serve.status().applications.get(name)
        status, message = (app_status.status, app_status.message) if app_status else ("NOT_STARTED", "")
        if status == "DEPLOY_FAILED":
            # The deployment's message holds the replica's traceback; its last line is the cause.
            causes = [
                f"{d}: {s.message.strip().splitlines()[-1]}"
                for d, s in app_status.deployments.items()
                if s.status == "DEPLOY_FAILED" and s.message.strip()
            ]
            raise RuntimeError(f"Serve app {name!r} failed to deploy: {message} {'; '.join(causes)}")
        if status == "RUNNING":
            if url is None:
                return
            try:
                if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
        time.sleep(0.25)
    raise TimeoutError(
        f"Serve app {name!r} not ready after {timeout_s:g} s (status {status}: {message or 'no message'}); "
        "on a small machine, check that the replicas' num_cpus fit the cluster"
    )


def start(
    index_uri: str,
    checkpoint_uri: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "rayhash",
    route_prefix: str = "/",
    ready_timeout_s: float = 300.0,
    access_log: bool = False,
    **options,
) -> str:
    """Deploy the search service over ``index_uri`` and return its base URL once it answers: an
    ingress replica's own port under Serve's direct ingress (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``
    where Ray started; :func:`direct_ingress_urls` lists every replica's), else Serve's proxy.

    ``options`` are :class:`ServeConfig` keys (``encode_images``, ``nprobe``, ``shards={...}``, ...).
    Connects to (or starts) Ray the way ``serve.start`` does.
    """
    cfg = config.from_dict(ServeConfig, {**options, "index": index_uri, "checkpoint": checkpoint_uri})
    serve.start(http_options={"host": host, "port": port})
    forget_registry(name)  # a fresh deployment: earlier swaps of an app by this name do not apply
    # Serve logs every request of every replica by default, adding a log write to every hop.
    logging_config = {"enable_access_log": access_log}
    serve.run_many(
        [serve.RunTarget(target=build_app(cfg), name=name, route_prefix=route_prefix, logging_config=logging_config)],
        wait_for_applications_running=False,
    )
    url = http_address() + route_prefix.rstrip("/")
    wait_until_ready(name, url, ready_timeout_s)
    # Under direct ingress an ingress replica's own port skips the proxy's hop: the fast URL.
    direct = direct_ingress_urls(name)
    if direct:
        fast = direct[0] + route_prefix.rstrip("/")
        wait_until_ready(name, fast, ready_timeout_s)
        logger.info("rayhash search %r answering at %s (through Serve's proxy: %s)", name, fast, url)
        return fast
    logger.info("rayhash search %r answering at %s", name, url)
    return url


def stop(name: str = "rayhash") -> None:
    """Delete the service ``name``: its app, the apps of index versions swapped in, its registry."""
    for app_name in serve.status().applications:
        if app_name == name or app_name.startswith(version_app_prefix(name)):
            serve.delete(app_name)
    forget_registry(name)


def version_app_prefix(name: str) -> str:
    return f"{name}--v"
