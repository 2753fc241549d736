"""What a GPU buys rayhash: training, encoding and search on CUDA against this machine's CPU cores.

    python benchmarks/gpu.py                                  # writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --rounds 5 --run.loader_workers=6 --model.backbone=tiny_cnn_wide

On the Fashion-MNIST protocol data (``rayhash.data``, PROTOCOL.md), three rows per stage:

- ``train``: DSCH (``configs/fmnist-dsch-<bits>.yaml``; further arguments override it) for
  ``--rounds`` rounds through ``rayhash.train.loop.run_rounds``, the loop each Ray Train worker
  runs, on the GPU and then on the CPU cores: M-step samples/s (augmentation included) and E-step
  seconds, the median over the rounds after the first (the first has no clusters to fit);
- ``encode``: ``models/encoder.py``'s ``ImageEncoder`` over the protocol's query and database
  images, with the GPU-trained model, on the GPU and on all CPU cores (``--cpu-images`` of them);
- ``search``: exact top-``--k`` Hamming search of the 1,000 query codes over ``--db-size`` codes
  (the database's codes repeated, each bit flipped with probability 0.06, as PROTOCOL.md builds
  its 1M set), faiss ``IndexBinaryFlat`` on the CPU cores against ``GpuIndexBinaryFlat`` where
  faiss has GPU support (``faiss.get_num_gpus() > 0``).

Without CUDA it stops with one line. ``--device cpu --out PATH`` runs every step on the CPU alone
(a smoke run of the script itself: its figures say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from results_io import command_line, hardware, write_result

HERE = os.path.dirname(os.path.abspath(__file__))
FLIP = 0.06


def train_row(cfg, device: torch.device) -> tuple[dict, dict]:
    """``cfg``'s rounds on ``device``; returns (the row, the last round's model state dict)."""
    from rayhash.train.loop import run_rounds

    rounds, last = [], {}

    def report(metrics: dict, payload: dict | None) -> None:
        rounds.append(metrics)
        last["model"] = payload["model"]

    threads = torch.get_num_threads()
    try:
        run_rounds(cfg, device=device, report=report)
    finally:
        torch.set_num_threads(threads)  # run.torch_threads sets it for the process
    timed = rounds[1:] or rounds
    row = {
        "stage": "train",
        "device": device.type,
        "rounds": len(rounds),
        "samples_per_second": float(np.median([r["samples_per_second"] for r in timed])),
        "e_step_seconds": float(np.median([r["e_step_seconds"] for r in timed])),
        "m_step_seconds": float(np.median([r["m_step_seconds"] for r in timed])),
    }
    return row, last["model"]


def encode_row(
    model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int
) -> tuple[dict, np.ndarray]:
    """Images/s of ``ImageEncoder`` on ``device`` after one warm-up batch; returns (the row, packed codes)."""
    from rayhash.evaluate import encode_images
    from rayhash.models.encoder import ImageEncoder

    encoder = ImageEncoder(model, device=device, batch_size=batch_size)
    encoder.encode(list(images[:batch_size]))  # cuDNN picks its kernels, threads spin up
    t0 = time.perf_counter()
    packed = encode_images(encoder, images, batch_size=batch_size)  # numpy out: the GPU has finished
    seconds = time.perf_counter() - t0
    row = {
        "stage": "encode",
        "device": device.type,
        "images": len(images),
        "batch_size": batch_size,
        "images_per_second": len(images) / seconds,
    }
    if device.type == "cpu":
        row["threads"] = torch.get_num_threads()
    return row, packed


def database_codes(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` codes: ``base`` repeated, each bit of each copy flipped with probability ``FLIP``."""
    rng = np.random.default_rng(seed)
    nbits = base.shape[1] * 8
    db = np.empty((n, base.shape[1]), dtype=np.uint8)
    for lo in range(0, n, 1 << 18):
        hi = min(n, lo + (1 << 18))
        db[lo:hi] = base[np.arange(lo, hi) % len(base)] ^ np.packbits(rng.random((hi - lo, nbits)) < FLIP, axis=1)
    return db


def search_rows(db: np.ndarray, queries: np.ndarray, k: int, use_gpu: bool) -> list[dict]:
    """Queries/s of one faiss call over all queries (median of three), on the CPU cores and the GPU."""
    import faiss

    cpu = faiss.IndexBinaryFlat(db.shape[1] * 8)
    cpu.add(db)
    indexes = [("cpu", cpu)]
    if use_gpu:
        indexes.append(("cuda", faiss.GpuIndexBinaryFlat(faiss.StandardGpuResources(), db.shape[1] * 8)))
        indexes[-1][1].add(db)
    rows, answers = [], []
    for device, index in indexes:
        answers.append(index.search(queries, k)[0])  # warm-up, and the distances to compare
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            index.search(queries, k)
            times.append(time.perf_counter() - t0)
        row = {
            "stage": "search",
            "device": device,
            "database": len(db),
            "queries": len(queries),
            "k": k,
            "queries_per_second": len(queries) / float(np.median(times)),
        }
        if device == "cpu":
            row["threads"] = faiss.omp_get_max_threads()
        rows.append(row)
    if len(answers) == 2 and not np.array_equal(answers[0], answers[1]):
        raise RuntimeError("faiss on the GPU returned other top-k distances than on the CPU")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cuda: the GPU against the CPU cores; cpu: a smoke run on the CPU alone (needs --out)",
    )
    parser.add_argument("--out", help="where the JSON goes (default with cuda: benchmarks/results/gpu.json)")
    parser.add_argument("--bits", type=int, default=64, choices=(16, 32, 64))
    parser.add_argument("--rounds", type=int, default=3, help="training rounds per device (at least 2)")
    parser.add_argument("--images", type=int, default=0, help="images --device encodes (default 0: all 70,000)")
    parser.add_argument("--cpu-images", type=int, default=5000, help="images the CPU cores encode beside the GPU")
    parser.add_argument("--db-size", type=int, default=1_000_000, help="codes in the searched database")
    parser.add_argument("--k", type=int, default=1000)
    args, overrides = parser.parse_known_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu.py: no CUDA device here (torch.cuda.is_available() is False); "
            "run it on a CUDA machine, or pass --device cpu --out PATH for a smoke run",
            file=sys.stderr,
        )
        return 2
    if args.device == "cpu" and not args.out:
        parser.error("--device cpu is a smoke run: give --out, so that it never replaces the GPU results")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the first round has no E-step")

    from rayhash.config import ConfigError, load
    from rayhash.models import build_model
    from rayhash.train.config import TrainConfig
    from rayhash.train.loop import load_split

    try:
        cfg = load(
            TrainConfig,
            os.path.join(HERE, "..", "configs", f"fmnist-dsch-{args.bits}.yaml"),
            [f"--run.rounds={args.rounds}", "--optim.swa_start=-1", *overrides],
        )
    except ConfigError as e:
        print(f"gpu.py: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    cpu = torch.device("cpu")
    rows = []

    row, state = train_row(cfg, device)
    rows.append(row)
    if device.type == "cuda":
        rows.append(train_row(cfg, cpu)[0])
    model = build_model(cfg.model)
    model.load_state_dict(state)

    data, split = load_split(cfg.data)
    images = data.images[np.concatenate([split.query, split.database])]
    if args.images:
        images = images[: max(args.images, len(split.query) + 1)]  # every query, and one database code at least
    row, packed = encode_row(model, images, device, batch_size=1024)
    rows.append(row)
    if device.type == "cuda":
        torch.set_num_threads(os.cpu_count() or 1)
        rows.append(encode_row(model, images[: args.cpu_images], cpu, batch_size=256)[0])

    import faiss

    use_gpu = device.type == "cuda" and faiss.get_num_gpus() > 0
    nq = len(split.query)
    rows += search_rows(database_codes(packed[nq:], args.db_size), packed[:nq], args.k, use_gpu)

    for stage, key in (
        ("train", "samples_per_second"),
        ("encode", "images_per_second"),
        ("search", "queries_per_second"),
    ):
        by_device = {r["device"]: r[key] for r in rows if r["stage"] == stage}
        if "cuda" in by_device and "cpu" in by_device:
            next(r for r in rows if r["stage"] == stage and r["device"] == "cuda")["over_cpu"] = (
                by_device["cuda"] / by_device["cpu"]
            )
    result = {
        "command": command_line(),
        "hardware": hardware(),
        "config": f"configs/fmnist-dsch-{args.bits}.yaml",
        "overrides": overrides,
        "faiss_gpus": faiss.get_num_gpus(),
        "rows": rows,
    }
    out = args.out or os.path.join(HERE, "results", "gpu.json")
    write_result(out, result)
    for r in rows:
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
