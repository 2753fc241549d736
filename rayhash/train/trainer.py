"""Data-parallel training on Ray Train, and the train -> evaluate job built on it."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from rayhash import storage
from rayhash.config import to_dict
from rayhash.train.config import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str  # URI of the last checkpoint (local path or s3://)
    metrics: dict  # the last round's metrics
    run_dir: str
    evaluation: dict = field(default_factory=dict)  # scores by label, when the job evaluated the run
    report: dict = field(default_factory=dict)  # the evaluation report's files by name


def _storage(cfg: TrainConfig) -> tuple[str, object | None]:
    if storage.is_s3(cfg.run.storage_path):
        fs, path = storage.arrow_filesystem(cfg.run.storage_path)
        return path, fs
    return os.path.abspath(cfg.run.storage_path), None


def run_training(
    cfg: TrainConfig, *, verbose: bool = False, on_round: Callable[[dict], None] | None = None, callbacks: Sequence = ()
) -> TrainResult:
    """Train on the connected Ray cluster; resubmitting the same ``run.name`` resumes it.

    Shows a progress bar over rounds and one line per round; ``on_round(metrics)`` is called on
    the driver as each round's report arrives there. ``callbacks`` are more ``ray.train.UserCallback``
    objects, run on the Train controller as it collects each report. ``verbose`` lets Ray Train's
    own INFO logs (every report it receives, among others) through to the workers' output.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayhash.train.loop import train_loop_per_worker
    from rayhash.train.progress import RoundProgress

    resources = {"CPU": cfg.run.cpus_per_worker}
    if cfg.run.use_gpu:
        resources["GPU"] = 1
    storage_path, filesystem = _storage(cfg)
    progress = RoundProgress(cfg.run.rounds, on_round)
    finished = False
    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=to_dict(cfg),
            torch_config=TorchConfig(backend="nccl" if cfg.run.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=cfg.run.num_workers,
                use_gpu=cfg.run.use_gpu,
                resources_per_worker=resources,
                placement_strategy=cfg.run.placement_strategy,
            ),
            run_config=RunConfig(
                name=cfg.run.name,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
                callbacks=[progress.callback, *callbacks],
                logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            ),
        )
        result = trainer.fit()
        finished = True
    finally:
        progress.close(final_round=cfg.run.rounds - 1 if finished else None)
    if result.checkpoint is None:
        raise RuntimeError(f"training run {cfg.run.name!r} finished without a checkpoint (rounds={cfg.run.rounds})")
    uri = storage.to_uri(result.checkpoint.path, cfg.run.storage_path)
    logger.info("training finished: checkpoint %s", uri)
    return TrainResult(
        checkpoint=uri, metrics=dict(result.metrics or {}), run_dir=storage.join(cfg.run.storage_path, cfg.run.name)
    )


def evaluate_run(cfg: TrainConfig, checkpoint_uri: str, *, show: bool = True) -> tuple[dict[str, dict], dict[str, str]]:
    """Score the checkpoint and its baselines on the run's protocol split and write the report; returns
    the scores by label and the report's files. ``show`` prints the table and files.

    The baselines are ``eval.baselines``, and for a checkpoint of product-quantised codes also PQ on
    the same pixels, the reference that kind is held against, unless ``eval.baselines`` is empty
    (:func:`rayhash.evaluate.baselines_for`).
    """
    from rayhash.evaluate import baselines_for, evaluate_baseline, evaluate_checkpoint, format_table, write_report
    from rayhash.train.loop import load_split
    from rayhash.train.progress import format_summary

    data, split = load_split(cfg.data)
    scored = evaluate_checkpoint(checkpoint_uri, data, split, cfg.eval.k)
    results = {f"{cfg.method.name}{'-ablation' if cfg.method.ablation else ''}": scored}
    for name in baselines_for(scored["code_kind"], cfg.eval.baselines):
        results[f"{name} (pixels)"] = evaluate_baseline(name, data, split, cfg.model.bits, cfg.run.seed, cfg.eval.k)
    output = cfg.eval.output or storage.join(cfg.run.storage_path, cfg.run.name, "eval")
    paths = write_report(results, output)
    if show:
        table = f"mAP@{cfg.eval.k} on {cfg.data.protocol}\n{format_table(results)}"
        print(format_summary("evaluation", [table], paths), flush=True)
    return results, paths


def train_job(cfg: TrainConfig, *, verbose: bool = False, show: bool = True) -> TrainResult:
    """The ``rayhash train`` job: train on Ray, then evaluate (on the driver, or as a task where the
    driver's node takes no work: :func:`rayhash.ray_utils.run_on_worker`). ``show`` ends with the
    mAP table and every file written; ``verbose`` as :func:`run_training`."""
    from rayhash.evaluate import format_table
    from rayhash.ray_utils import run_on_worker
    from rayhash.train.progress import format_summary

    result = run_training(cfg, verbose=verbose)
    if cfg.eval.enabled:
        # On a cluster whose head takes no work, on a worker with a Train worker's resources.
        resources = {"num_cpus": cfg.run.cpus_per_worker, "num_gpus": 1 if cfg.run.use_gpu else 0}
        results, paths = run_on_worker(evaluate_run, cfg, result.checkpoint, show=False, **resources)
        result = replace(result, evaluation=results, report=paths)
    if show:
        table = ""
        if result.evaluation:
            table = f"mAP@{cfg.eval.k} on {cfg.data.protocol}\n{format_table(result.evaluation)}"
        print(
            format_summary(
                f"training run {cfg.run.name}: {cfg.run.rounds} rounds",
                [table],
                {"checkpoint": result.checkpoint, **result.report},
            ),
            flush=True,
        )
    return result
