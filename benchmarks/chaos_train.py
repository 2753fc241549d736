"""The ``train-node-loss`` scenario of ``benchmarks/chaos.py``, in a process of its own (it runs
its own 2-node cluster): prints one JSON row.

    python benchmarks/chaos_train.py --rounds 5 --lose-after-round 1

A local Ray cluster of two raylets on this machine: a head with no CPUs (the driver and Ray
Train's controller), and a worker node that holds both training workers. Once the report of
round ``--lose-after-round`` (and its checkpoint) reaches the driver, the worker node is removed
(its raylet and every worker process on it terminated) and a fresh node joins, as an autoscaler
would bring one; the run must finish from its latest checkpoint, losing only the round in flight.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time

from results_io import hardware


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lose-after-round", type=int, default=1)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from rayhash.config import load
    from rayhash.models import checkpoint
    from rayhash.train.config import TrainConfig
    from rayhash.train.trainer import run_training

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, logging_level="WARNING")
    storage = tempfile.mkdtemp(prefix="chaos-train-")
    cfg = load(
        TrainConfig,
        "configs/fmnist-dsch-16.yaml",
        [
            "--run.name=node-loss",
            f"--run.storage_path={storage}",
            f"--run.rounds={args.rounds}",
            "--run.num_workers=2",
            "--run.cpus_per_worker=0.5",
            "--run.max_failures=2",
            "--run.torch_threads=1",
            "--optim.swa_start=0",
            "--eval.enabled=false",
        ],
    )
    lost, reported = {}, threading.Event()

    def on_round(metrics: dict) -> None:
        rounds_seen.append(metrics["round"])
        if metrics["round"] == args.lose_after_round:
            reported.set()

    rounds_seen, outcome = [], {}

    def train() -> None:
        try:
            outcome["result"] = run_training(cfg, on_round=on_round)
        except Exception as e:  # the row says what the user saw
            outcome["error"] = f"{type(e).__name__}: {e}"[:500]
        reported.set()

    started = time.monotonic()
    # Training runs beside; the main thread changes the cluster (Ray adds nodes from the main thread only).
    runner = threading.Thread(target=train)
    runner.start()
    reported.wait()
    if "result" not in outcome and "error" not in outcome:
        lost["at_round"] = args.lose_after_round
        cluster.remove_node(worker)  # terminates the raylet and every worker process on that node
        cluster.add_node(num_cpus=2)  # as an autoscaler would bring a fresh one
    runner.join()
    error = outcome.get("error")
    finished, resumes = False, []
    if "result" in outcome:
        ckpt = checkpoint.load(outcome["result"].checkpoint)
        finished = ckpt.progress["round"] == args.rounds - 1
        resumes = ckpt.progress.get("resumes", [])
    seconds = time.monotonic() - started
    row = {
        "scenario": "train-node-loss",
        "requests": args.rounds,  # rounds asked for
        "success_rate_during": 1.0 if finished else 0.0,  # the run went on past the lost node
        "success_rate_after": 1.0 if finished else 0.0,
        "errors_by_status": {"lost_worker_node": 1} if lost else {},
        "p99_ms_during": 0.0,
        "lost_rows": 0,
        "duplicated_rows": len(rounds_seen) - len(set(rounds_seen)),
        "resumed_at_rounds": resumes,
        "rounds_reported": rounds_seen,
        "seconds": seconds,
        "error": error,
        "hardware": hardware(),
    }
    print(json.dumps(row), flush=True)
    ray.shutdown()
    cluster.shutdown()
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
