"""Data-parallel training on Ray Train, and the train -> evaluate job built on it."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from rayhash import storage
from rayhash.config import to_dict
from rayhash.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str  # URI of the last checkpoint (local path or s3://)
    metrics: dict  # the last round's metrics
    run_dir: str


def _storage(cfg: TrainConfig) -> tuple[str, object | None]:
    if storage.is_s3(cfg.run.storage_path):
        fs, path = storage.arrow_filesystem(cfg.run.storage_path)
        return path, fs
    return os.path.abspath(cfg.run.storage_path), None


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train on the connected Ray cluster; resubmitting the same ``run.name`` resumes it."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayhash.train.loop import train_loop_per_worker

    resources = {"CPU": cfg.run.cpus_per_worker}
    if cfg.run.use_gpu:
        resources["GPU"] = 1
    storage_path, filesystem = _storage(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=to_dict(cfg),
        torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.run.name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {cfg.run.name!r} finished without a checkpoint (rounds={cfg.run.rounds})")
    uri = storage.to_uri(result.checkpoint.path, cfg.run.storage_path)
    logger.info("training finished: checkpoint %s", uri)
    return TrainResult(checkpoint=uri, metrics=dict(result.metrics or {}), run_dir=storage.join(cfg.run.storage_path, cfg.run.name))


def evaluate_run(cfg: TrainConfig, checkpoint_uri: str) -> dict[str, dict]:
    """Score the checkpoint and the configured baselines on the run's protocol split; write the report."""
    from rayhash.evaluate import evaluate_baseline, evaluate_checkpoint, format_table, write_report
    from rayhash.train.loop import load_split

    data, split = load_split(cfg.data)
    results = {f"{cfg.method.name}{'-ablation' if cfg.method.ablation else ''}": evaluate_checkpoint(
        checkpoint_uri, data, split, cfg.eval.k)}
    for name in cfg.eval.baselines:
        results[f"{name} (pixels)"] = evaluate_baseline(name, data, split, cfg.model.bits, cfg.run.seed, cfg.eval.k)
    output = cfg.eval.output or storage.join(cfg.run.storage_path, cfg.run.name, "eval")
    paths = write_report(results, output)
    logger.info("evaluation written to %s", paths["metrics.json"])
    print(format_table(results), flush=True)
    return results


def train_job(cfg: TrainConfig) -> TrainResult:
    """The ``jobs/train_dsch.py`` job: train on Ray, then evaluate on the driver."""
    result = run_training(cfg)
    if cfg.eval.enabled:
        evaluate_run(cfg, result.checkpoint)
    return result
