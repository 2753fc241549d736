"""Real Ray Train runs on the session's local cluster: small data, a few rounds each."""

import os
import tempfile


from rayhash.models import checkpoint
from rayhash.config import load
from rayhash.train.config import TrainConfig
from rayhash.train.trainer import run_training

TINY = [
    "--data.protocol=random", "--data.random_queries=100", "--data.random_train=256",
    "--model.bits=16", "--optim.batch_size=64", "--method.fine_components=8", "--method.coarse_components=3",
    "--run.cpus_per_worker=0.5", "--eval.enabled=false",
]


def _cfg(tmp_path_or_uri, name, *extra):
    return load(TrainConfig, None, [*TINY, f"--run.storage_path={tmp_path_or_uri}", f"--run.name={name}", *extra])


def test_two_workers_write_a_checkpoint(ray_cluster, tmp_path):
    # One loader worker each: DataLoader workers fork inside Ray's worker processes too.
    cfg = _cfg(tmp_path, "two", "--run.num_workers=2", "--run.rounds=2", "--run.loader_workers=1")
    result = run_training(cfg)
    ckpt = checkpoint.load(result.checkpoint)
    assert ckpt.progress["round"] == 1 and ckpt.progress["resumes"] == []
    assert ckpt.config["run"]["num_workers"] == 2  # the resolved config travels with the weights
    assert ckpt.config["run"]["loader_workers"] == 1
    assert ckpt.em["gmm"]["means"].shape == (8, 16)  # the E-step ran cluster-wide after the warm-up round
    assert result.metrics["fine_components"] == 8.0


def test_killed_worker_resumes_from_latest_checkpoint(ray_cluster, tmp_path):
    cfg = _cfg(tmp_path, "chaos", "--run.num_workers=2", "--run.rounds=3", "--run.chaos_kill_at_round=1",
               "--run.max_failures=1", "--optim.swa_start=0")
    marker_dir = os.path.join(tempfile.gettempdir(), "rayhash-chaos", "chaos")
    for f in os.listdir(marker_dir) if os.path.isdir(marker_dir) else []:
        os.remove(os.path.join(marker_dir, f))
    result = run_training(cfg)
    assert os.path.exists(os.path.join(marker_dir, "chaos-killed-round-1"))  # the worker really died
    ckpt = checkpoint.load(result.checkpoint)
    assert ckpt.progress["round"] == 2
    # resumed once, at round 1: only the round the worker died in was run again
    assert ckpt.progress["resumes"] == [1]
    # the weight average came through the resume: rounds 0-2, each counted once
    assert ckpt.averaging["count"] == 3 and set(ckpt.averaging["live_model"]) == set(ckpt.model)


def test_s3_checkpoint_and_resubmission_continue(ray_cluster, s3_bucket):
    storage_path = f"{s3_bucket}/runs"
    first = run_training(_cfg(storage_path, "s3run", "--run.rounds=1"))
    assert first.checkpoint.startswith("s3://")
    assert checkpoint.load(first.checkpoint).progress["round"] == 0
    # the "driver crashed" and the job is submitted again with the same run name and more rounds
    second = run_training(_cfg(storage_path, "s3run", "--run.rounds=2"))
    ckpt = checkpoint.load(second.checkpoint)
    assert ckpt.progress["round"] == 1 and ckpt.progress["resumes"] == [1]
