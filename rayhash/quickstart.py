"""The main job end to end on one machine: train -> evaluate -> encode -> index -> serve -> query.

Every stage goes through the same library entry points a cluster user calls (Ray Train, the Ray
Data encode job, the index build, the Serve app), on Fashion-MNIST written out as a Parquet
image lake, so the run exercises the real artifacts: checkpoint, code set, index set.

Any registered method runs it: each has its own main-job config (:data:`METHOD_CONFIGS`), which
``--method=NAME`` picks when no ``--config`` is given; DSCH's is the default.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from rayhash import storage
from rayhash.config import ConfigError, load
from rayhash.methods import list_methods
from rayhash.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuickstartConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    workdir: str = "runs/quickstart"  # the image lake, code set, index set and query grid go here
    encode_actors: int = 1
    index_kind: str = "flat"  # flat (exact) or ivf
    num_shards: int = 2
    port: int = 8000
    query: int = 0  # which of the protocol's 1,000 queries to show
    k: int = 10
    keep_serving: bool = True  # block until Ctrl-C with the service up
    # 0: every image of the source goes into the lake; N: the first N only, for a shorter run (the
    # query is searched for among them; the lake is then workdir/lake-N)
    lake_images: int = 0

    def __post_init__(self) -> None:
        from rayhash.serve.app import ServeConfig

        # One more than k is asked for (the query's own copy is dropped) from a service that
        # run() starts with ServeConfig's default max_k.
        if not 1 <= self.k < ServeConfig.max_k:
            raise ConfigError(f"k must be between 1 and {ServeConfig.max_k - 1}, got {self.k}")
        if not 0 <= self.query < 1000:
            raise ConfigError(f"query picks one of the protocol's 1,000 queries (0..999), got {self.query}")
        if self.lake_images < 0 or 0 < self.lake_images <= self.k:
            raise ConfigError(f"lake_images must be 0 (every image) or more than k={self.k}, got {self.lake_images}")


# Each method's main-job config: its Fashion-MNIST recipe at 64 bits with the main job's rounds and
# workers, and a run name and workdir of its own (a run name resumes its run, whatever the method).
METHOD_CONFIGS = {
    "dsch": "configs/quickstart.yaml",
    "dcuh": "configs/quickstart-dcuh.yaml",
    "psch": "configs/quickstart-psch.yaml",
    "deepquan": "configs/quickstart-deepquan.yaml",
}
DEFAULT_METHOD = "dsch"


def config_path(method: str) -> str:
    """The main-job config of ``method`` (relative to the repository, where the job runs)."""
    _check_known(method)
    if method not in METHOD_CONFIGS:
        raise ConfigError(
            f"method {method!r} has no main-job config; give --config with a train.method section "
            f"of it (methods with one: {', '.join(sorted(METHOD_CONFIGS))})"
        )
    return METHOD_CONFIGS[method]


def _check_known(method: str) -> None:
    if method not in list_methods():
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(list_methods())}")


def load_config(
    config: str | None = None, method: str | None = None, overrides: Sequence[str] = ()
) -> QuickstartConfig:
    """What ``rayhash quickstart`` runs: the ``config`` file, else ``method``'s main-job config
    (DSCH's when neither is given), then ``overrides``. Given both, ``config`` must train ``method``."""
    if method:
        _check_known(method)
    path = config or config_path(method or DEFAULT_METHOD)
    try:
        cfg = load(QuickstartConfig, path, overrides)
    except ConfigError as e:
        # Renaming the method keeps the file's method keys, which the new method refuses.
        renamed = any(o.lstrip("-").startswith("train.method.name=") for o in overrides)
        if renamed and "with train.method.name=" in str(e):
            raise ConfigError(f"{e} To run another method with its own keys, pick its config: --method=NAME") from None
        raise
    if method and cfg.train.method.name != method:
        raise ConfigError(
            f"--method={method}, but {path} trains {cfg.train.method.name!r} (train.method.name); "
            f"leave out --config to run {method}'s main-job config"
        )
    return cfg


def write_image_lake(images: np.ndarray, ids: list[str], uri: str, rows_per_file: int = 10_000) -> str:
    """Write images as PNG bytes into Parquet files (``id``, ``image``): a small image lake."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if storage.exists(storage.join(uri, "_SUCCESS")):
        return uri
    for start in range(0, len(images), rows_per_file):
        pngs = []
        for img in images[start : start + rows_per_file]:
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        table = pa.table({"id": ids[start : start + rows_per_file], "image": pa.array(pngs, pa.binary())})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        part = storage.join(uri, f"part-{start // rows_per_file:05d}.parquet")
        storage.write_bytes_atomic(part, sink.getvalue().to_pybytes())
    storage.write_text_atomic(storage.join(uri, "_SUCCESS"), "")  # a rerun reuses a finished lake
    return uri


def plot_query_grid(query: np.ndarray, neighbours: list[np.ndarray], captions: list[str], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.4 * (len(neighbours) + 1), 1.8))
    FigureCanvasAgg(fig)
    for i, (img, caption) in enumerate(zip([query, *neighbours], ["query", *captions], strict=True)):
        ax = fig.add_subplot(1, len(neighbours) + 1, i + 1)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    storage.write_bytes_atomic(path, buf.getvalue())


def health_line(health: dict) -> str:
    """A code set's health in one line: bit balance (binary), or centroids used per sub-space (pq)."""
    if "centroid_usage" in health:
        used = health["used_centroids"]
        return (
            f"centroids used per sub-space {min(used)}..{max(used)} of {len(health['centroid_usage'][0])}, "
            f"largest bucket {health['max_items_per_code']}"
        )
    balance = health["bit_balance"]
    rest = {k: v for k, v in health.items() if k != "bit_balance"}
    return f"{rest} bit balance min/max {min(balance):.3f}/{max(balance):.3f}"


def run(cfg: QuickstartConfig, *, verbose: bool = False) -> dict:
    """Needs a running Ray (the job script starts or joins one, with ``ensure_ray``). Shows a
    progress bar per stage and ends with the mAP table, the query's result, the service's address
    and every path written; ``verbose`` lets Ray's own logs through to the terminal too."""
    from PIL import Image

    from rayhash import serve as rh_serve
    from rayhash.encode import EncodeConfig, run_encode
    from rayhash.evaluate import format_table
    from rayhash.index.build import build_index_set
    from rayhash.ray_utils import quiet_ray_logs
    from rayhash.serve.client import SearchClient
    from rayhash.train.loop import load_split
    from rayhash.train.progress import format_summary
    from rayhash.train.trainer import train_job

    quiet_ray_logs(verbose)  # again, now that Serve is imported
    t0 = time.perf_counter()
    trained = train_job(cfg.train, verbose=verbose, show=False)
    data, split = load_split(cfg.train.data)
    shown = cfg.lake_images or len(data)
    lake_name = "lake" if shown >= len(data) else f"lake-{shown}"
    lake = write_image_lake(data.images[:shown], data.ids[:shown], storage.join(cfg.workdir, lake_name))
    manifest = run_encode(
        EncodeConfig(
            input=lake,
            input_format="parquet",
            id_column="id",
            checkpoint=trained.checkpoint,
            output=storage.join(cfg.workdir, "codes"),
            num_actors=cfg.encode_actors,
            cpus_per_actor=0.5,
            cpus_per_decode_task=0.5,
            progress=True,
        )
    )
    print(
        f"code set: {manifest.counts['encoded']} encoded, {manifest.counts['rejected']} rejected; "
        f"code health: {health_line(manifest.health)}",
        flush=True,
    )
    index = build_index_set(
        manifest.uri, storage.join(cfg.workdir, "index"), num_shards=cfg.num_shards, kind=cfg.index_kind
    )
    print(f"index set: {cfg.num_shards} {cfg.index_kind} shards, {index.items} items", flush=True)

    # The fastest placement for the index: with this index's size, the ingress holds its shards.
    url = rh_serve.start(index.uri, trained.checkpoint, port=cfg.port, shards_in_ingress=None)
    client = SearchClient(url)
    q = int(split.query[cfg.query])
    buf = io.BytesIO()
    Image.fromarray(data.images[q][..., 0]).save(buf, format="PNG")
    # Where the lake holds the query's own image, its copy at distance 0 says nothing about the
    # codes, so it is left out of the neighbours shown and counted.
    results = [r for r in client.search_image(buf.getvalue(), k=cfg.k + 1) if r["id"] != data.ids[q]][: cfg.k]
    position = {id_: i for i, id_ in enumerate(data.ids[:shown])}
    positions = [position[r["id"]] for r in results]
    same = sum(int(data.labels[p] == data.labels[q]) for p in positions)
    grid = storage.join(cfg.workdir, "query.png")
    plot_query_grid(
        data.images[q],
        [data.images[p] for p in positions],
        [f"d={r['distance']:g} c={data.labels[p]}" for r, p in zip(results, positions, strict=True)],
        grid,
    )
    seconds = time.perf_counter() - t0
    m = cfg.train.method
    method = f"{m.name}{'-ablation' if m.ablation else ''}"  # as the mAP table labels it
    summary = {
        "method": method,
        "map_at_k": {label: r["map_at_k"] for label, r in (trained.evaluation or {}).items()},
        "checkpoint": trained.checkpoint,
        "codeset": manifest.uri,
        "index": index.uri,
        "url": url,
        "query": q,
        "neighbours": results,
        "same_class": same,
        "grid": grid,
        "seconds": seconds,
    }
    written = {
        "checkpoint": trained.checkpoint,
        **{f"eval {k}": v for k, v in trained.report.items()},
        "image lake": lake,
        "code set": manifest.uri,
        "index set": index.uri,
        "query grid": grid,
    }
    e = cfg.train.eval
    table = f"mAP@{e.k} on {cfg.train.data.protocol}\n{format_table(trained.evaluation)}" if trained.evaluation else ""
    among = "its own indexed copy left out" if q < shown else f"among the lake's first {shown:,} images"
    search = (
        f"query image {q} (class {data.labels[q]}): {same} of its {len(results)} nearest neighbours are of its "
        f"class ({among})\nsearch service at {url}; try:\n"
        f"  curl -s -X POST {url}/search/image -F file=@<image.png>\n  curl -s {url}/stats"
    )
    title = f"rayhash main job: {method}, {cfg.train.model.bits} bits, done in {seconds:.0f} s"
    print(format_summary(title, [table, search], written), flush=True)
    if cfg.keep_serving:
        print(f"serving at {url}; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return summary
