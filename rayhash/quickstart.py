"""The main job end to end on one machine: train -> evaluate -> encode -> index -> serve -> query.

Every stage goes through the same library entry points a cluster user calls (Ray Train, the Ray
Data encode job, the index build, the Serve app), on Fashion-MNIST written out as a Parquet
image lake, so the run exercises the real artifacts: checkpoint, code set, index set.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from rayhash import storage
from rayhash.config import ConfigError
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

    def __post_init__(self) -> None:
        from rayhash.serve.app import ServeConfig

        # One more than k is asked for (the query's own copy is dropped) from a service that
        # run() starts with ServeConfig's default max_k.
        if not 1 <= self.k < ServeConfig.max_k:
            raise ConfigError(f"k must be between 1 and {ServeConfig.max_k - 1}, got {self.k}")
        if not 0 <= self.query < 1000:
            raise ConfigError(f"query picks one of the protocol's 1,000 queries (0..999), got {self.query}")


def write_image_lake(images: np.ndarray, ids: list[str], uri: str, rows_per_file: int = 10_000) -> str:
    """Write images as PNG bytes into Parquet files (``id``, ``image``): a small image lake."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if storage.exists(storage.join(uri, "_SUCCESS")):
        return uri
    for start in range(0, len(images), rows_per_file):
        pngs = []
        for img in images[start:start + rows_per_file]:
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        table = pa.table({"id": ids[start:start + rows_per_file], "image": pa.array(pngs, pa.binary())})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.write_bytes_atomic(storage.join(uri, f"part-{start // rows_per_file:05d}.parquet"), sink.getvalue().to_pybytes())
    storage.write_text_atomic(storage.join(uri, "_SUCCESS"), "")  # a rerun reuses a finished lake
    return uri


def plot_query_grid(query: np.ndarray, neighbours: list[np.ndarray], captions: list[str], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.4 * (len(neighbours) + 1), 1.8))
    FigureCanvasAgg(fig)
    for i, (img, caption) in enumerate(zip([query, *neighbours], ["query", *captions])):
        ax = fig.add_subplot(1, len(neighbours) + 1, i + 1)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray")
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    storage.write_bytes_atomic(path, buf.getvalue())


def run(cfg: QuickstartConfig) -> dict:
    """Needs a running Ray (the job script starts or joins one)."""
    from PIL import Image

    from rayhash import serve as rh_serve
    from rayhash.encode import EncodeConfig, run_encode
    from rayhash.index.build import build_index_set
    from rayhash.serve.client import SearchClient
    from rayhash.train.loop import load_split
    from rayhash.train.trainer import train_job

    t0 = time.perf_counter()
    trained = train_job(cfg.train)
    data, split = load_split(cfg.train.data)
    lake = write_image_lake(data.images, data.ids, storage.join(cfg.workdir, "lake"))
    manifest = run_encode(EncodeConfig(
        input=lake, input_format="parquet", id_column="id", checkpoint=trained.checkpoint,
        output=storage.join(cfg.workdir, "codes"), num_actors=cfg.encode_actors, cpus_per_actor=0.5,
        cpus_per_decode_task=0.5, progress=True,
    ))
    print(f"code set: {manifest.uri}  encoded {manifest.counts['encoded']}, rejected {manifest.counts['rejected']}")
    print("code health:", {k: v for k, v in manifest.health.items() if k != "bit_balance"},
          f"bit balance min/max {min(manifest.health['bit_balance']):.3f}/{max(manifest.health['bit_balance']):.3f}")
    index = build_index_set(manifest.uri, storage.join(cfg.workdir, "index"), num_shards=cfg.num_shards, kind=cfg.index_kind)
    print(f"index set: {index.uri}  ({cfg.num_shards} {cfg.index_kind} shards, {index.items} items)")

    url = rh_serve.start(index.uri, trained.checkpoint, port=cfg.port)
    client = SearchClient(url)
    q = int(split.query[cfg.query])
    buf = io.BytesIO()
    Image.fromarray(data.images[q][..., 0]).save(buf, format="PNG")
    # The lake holds every image, the query's own too: its copy at distance 0 says nothing about
    # the codes, so it is left out of the neighbours shown and counted.
    results = [r for r in client.search_image(buf.getvalue(), k=cfg.k + 1) if r["id"] != data.ids[q]][: cfg.k]
    positions = [int(r["id"]) for r in results]
    same = sum(int(data.labels[p] == data.labels[q]) for p in positions)
    grid = storage.join(cfg.workdir, "query.png")
    plot_query_grid(data.images[q], [data.images[p] for p in positions],
                    [f"d={r['distance']} c={data.labels[p]}" for r, p in zip(results, positions)], grid)
    print(f"search service at {url}: query image {q} (class {data.labels[q]}) -> {len(results)} neighbours "
          f"(its own indexed copy left out), {same}/{len(results)} of its class; grid at {grid}")
    print(f"try: curl -s -X POST {url}/search/image -F file=@<image.png>   |   curl -s {url}/stats")
    summary = {"checkpoint": trained.checkpoint, "codeset": manifest.uri, "index": index.uri, "url": url,
               "query": q, "neighbours": results, "same_class": same, "grid": grid,
               "seconds": time.perf_counter() - t0}
    if cfg.keep_serving:
        print("serving; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return summary
