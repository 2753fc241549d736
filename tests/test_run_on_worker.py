"""Work a driver would do itself (the index build, the evaluation after training) runs as a Ray task
when the driver's node takes no work, as a cluster's head started with num-cpus 0 does (infra/).
The local cluster's node has CPUs, so the tests make the driver's node look empty."""

from __future__ import annotations

import json
import os

import numpy as np

from rayhash import ray_utils
from rayhash.encode import codeset
from rayhash.index import indexset


def test_runs_here_while_the_driver_node_has_cpus(ray_cluster):
    assert ray_utils.driver_node_has_cpus()
    assert ray_utils.run_on_worker(os.getpid) == os.getpid()


def test_runs_as_a_task_with_its_resources_when_the_driver_node_has_none(ray_cluster, monkeypatch):
    monkeypatch.setattr(ray_utils, "driver_node_has_cpus", lambda: False)

    def where(tag):  # defined here, so Ray ships it by value
        import ray

        ctx = ray.get_runtime_context()
        return tag, os.getpid(), ctx.get_task_id(), ctx.get_assigned_resources()

    tag, pid, task_id, resources = ray_utils.run_on_worker(where, "x", num_cpus=1)
    assert tag == "x" and pid != os.getpid() and task_id is not None
    assert resources == {"CPU": 1.0}


def test_rayhash_index_on_a_cluster_builds_in_a_task(ray_cluster, monkeypatch, tmp_path, capsys):
    from rayhash.cli import main

    rng = np.random.default_rng(0)
    cs = str(tmp_path / "cs")
    codeset.write_codeset(
        cs,
        ids=[f"i{n}" for n in range(64)],
        codes=rng.integers(0, 256, (64, 8), dtype=np.uint8),
        sources=[f"s{n}" for n in range(64)],
        nbits=64,
        checkpoint_uri="file:///models/m",
        checkpoint_sha256="ab" * 32,
        config={},
    )
    calls = []
    real = ray_utils.run_on_worker

    def spy(fn, *args, **kwargs):
        calls.append((fn.__name__, kwargs))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(ray_utils, "driver_node_has_cpus", lambda: False)
    monkeypatch.setattr(ray_utils, "run_on_worker", spy)
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # as `ray job submit` sets it; Ray is connected already
    assert main(["index", f"--codeset={cs}", f"--out={tmp_path / 'ix'}", "--num_shards=2", "--threads=2"]) == 0
    assert calls == [("build_from_config", {"num_cpus": 2})]
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["items"] == 64 == indexset.read_index_manifest(str(tmp_path / "ix")).items


def test_train_job_evaluates_through_run_on_worker(monkeypatch):
    from rayhash.train import trainer
    from rayhash.train.config import RunConfig, TrainConfig

    cfg = TrainConfig(run=RunConfig(cpus_per_worker=4, use_gpu=True))
    calls = []
    monkeypatch.setattr(trainer, "run_training", lambda cfg, verbose: trainer.TrainResult("ckpt", {}, "run"))

    def fake(fn, *args, **kwargs):
        calls.append((fn, args, kwargs))
        return {"dsch": {}}, {"report": "r"}

    monkeypatch.setattr(ray_utils, "run_on_worker", fake)
    result = trainer.train_job(cfg, show=False)
    assert calls == [(trainer.evaluate_run, (cfg, "ckpt"), {"show": False, "num_cpus": 4, "num_gpus": 1})]
    assert result.evaluation == {"dsch": {}} and result.report == {"report": "r"}
