"""Fashion-MNIST protocol (shared/PROTOCOL.md): the deep methods, their ablations and the baselines at 16/32/64 bits.

    python benchmarks/fmnist_map.py --bits 16 32 64 --seeds 0 1 2 --methods dsch dsch-ablation itq lsh
    python benchmarks/fmnist_map.py --bits 16 32 64 --seeds 0 1 2 --methods deepquan deepquan-ablation pq

A deep method (dsch, dcuh, psch, deepquan) trains through the real Ray trainer (local cluster) for
each (method, bits, seed), from configs/fmnist-<method>-<bits>.yaml (an ablation uses its method's
config with ``method.ablation=true``), and is scored by the same harness as ``rayhash eval``: binary
codes by Hamming ranking, DeepQuan's product-quantised codes by asymmetric distance from each
query's z. A baseline (itq, lsh, pq: rayhash.baselines) is fitted on the raw pixels of the training
images; pq's queries are ranked by asymmetric distance from their pixels. Rows are merged into
benchmarks/results/fmnist_map.json as they finish, so a long sweep can be stopped and resumed; extra
``--section.key=value`` arguments override the config of the deep methods (recorded in each row).
``--data.protocol=fmnist-all`` trains on the whole 69,000-image database without labels
(PROTOCOL.md's clearly labelled second row: same queries and database); each row records
``train_images``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

from results_io import hardware, write_result

RESULTS = os.path.join(os.path.dirname(__file__), "results", "fmnist_map.json")


def load_rows() -> list[dict]:
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            return json.load(f)["rows"]
    return []


def save_rows(rows: list[dict], command: str) -> None:
    """Replace the file's rows; its other keys (the whole sweep's command, the note) stay as written."""
    result = {"protocol": "fmnist-1k", "command": command, "rows": rows}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            result = {**json.load(f), "rows": rows}  # keeps the file's key order
    write_result(RESULTS, result)


def run_deep(method: str, bits: int, seed: int, overrides: list[str], storage: str) -> dict:
    from rayhash.config import load
    from rayhash.evaluate import evaluate_checkpoint
    from rayhash.train.config import TrainConfig
    from rayhash.train.loop import load_split
    from rayhash.train.trainer import run_training

    config = os.path.join(
        os.path.dirname(__file__), "..", "configs", f"fmnist-{method.removesuffix('-ablation')}-{bits}.yaml"
    )
    name = f"bench-{method}-{bits}-s{seed}-{int(time.time())}"
    cfg = load(
        TrainConfig,
        config,
        [
            f"--run.seed={seed}",
            f"--method.seed={seed}",
            f"--run.name={name}",
            f"--run.storage_path={storage}",
            f"--method.ablation={'true' if method.endswith('ablation') else 'false'}",
            *overrides,
        ],
    )
    t0 = time.perf_counter()
    result = run_training(cfg)
    train_seconds = time.perf_counter() - t0
    data, split = load_split(cfg.data)
    metrics = evaluate_checkpoint(result.checkpoint, data, split, k=1000)
    return {
        "map_at_1000": metrics["map_at_k"],
        "train_seconds": train_seconds,
        "train_images": len(split.train),
        "rounds": cfg.run.rounds,
        "overrides": overrides,
    }


def run_baseline(method: str, bits: int, seed: int) -> dict:
    from rayhash.data.sources import load_source
    from rayhash.data.splits import protocol_split
    from rayhash.evaluate import evaluate_baseline

    data = load_source("fashion-mnist")
    split = protocol_split("fmnist-1k", data.labels)
    metrics = evaluate_baseline(method, data, split, bits, seed=seed, k=1000)
    return {
        "map_at_1000": metrics["map_at_k"],
        "train_seconds": metrics["train_seconds"],
        "train_images": len(split.train),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["dsch", "dsch-ablation", "itq", "lsh"])
    parser.add_argument("--storage", default="/tmp/rayhash-bench")
    args, overrides = parser.parse_known_args()
    command = "python benchmarks/fmnist_map.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    import ray

    from rayhash.baselines import BASELINES

    if any(method not in BASELINES for method in args.methods):  # baselines alone need no cluster
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    for bits in args.bits:
        for seed in args.seeds:
            for method in args.methods:
                t0 = time.perf_counter()
                extra = (
                    run_baseline(method, bits, seed)
                    if method in BASELINES
                    else run_deep(method, bits, seed, overrides, args.storage)
                )
                row = {
                    "method": method,
                    "bits": bits,
                    "seed": seed,
                    **extra,
                    "hardware": hardware(),
                    "wall_seconds": time.perf_counter() - t0,
                    "command": command,
                }
                # Re-read before each save: sweeps of different methods may run side by side.
                key = (method, bits, seed, row["train_images"])
                rows = [
                    r for r in load_rows() if (r["method"], r["bits"], r["seed"], r.get("train_images", 5000)) != key
                ]
                save_rows(rows + [row], command)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
