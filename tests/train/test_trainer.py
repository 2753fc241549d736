"""Real Ray Train runs on the session's local cluster: small data, a few rounds each."""

import json
import os
import signal

import pytest

from rayhash.config import load
from rayhash.models import build_model, checkpoint
from rayhash.train.config import TrainConfig
from rayhash.train.trainer import run_training

TINY = [
    "--data.protocol=random",
    "--data.random_queries=100",
    "--data.random_train=256",
    "--model.bits=16",
    "--optim.batch_size=64",
    "--run.cpus_per_worker=0.5",
    "--run.torch_threads=1",
    "--eval.enabled=false",
]
# Each method's own keys, sized for TINY's 256 images: a key of another method would be refused.
METHOD_KEYS = {
    "dsch": ["--method.name=dsch", "--method.fine_components=8", "--method.coarse_components=3"],
    "dcuh": ["--method.name=dcuh", "--method.clusters=8"],
    "psch": ["--method.name=psch", "--method.clusters=8"],
    # M = 2 sub-spaces of 4 dims (z has 8), 8 codewords each, a small decoder back to 28 x 28 pixels
    "deepquan": ["--method.name=deepquan", "--method.codewords=8", "--method.d_sub=4", "--method.decoder_hidden=16"],
}


def _cfg(tmp_path_or_uri, name, *extra, method="dsch"):
    overrides = [*TINY, *METHOD_KEYS[method], f"--run.storage_path={tmp_path_or_uri}", f"--run.name={name}"]
    return load(TrainConfig, None, [*overrides, *extra])


def test_two_workers_write_a_checkpoint(ray_cluster, tmp_path, capsys):
    # One loader worker each: DataLoader workers fork inside Ray's worker processes too.
    cfg = _cfg(tmp_path, "two", "--run.num_workers=2", "--run.rounds=2", "--run.loader_workers=1")
    result = run_training(cfg)
    ckpt = checkpoint.load(result.checkpoint)
    assert ckpt.progress["round"] == 1 and ckpt.progress["resumes"] == []
    assert ckpt.config["run"]["num_workers"] == 2  # the resolved config travels with the weights
    assert ckpt.config["run"]["loader_workers"] == 1
    assert ckpt.em["gmm"]["means"].shape == (8, 16)  # the E-step ran cluster-wide after the warm-up round
    assert result.metrics["fine_components"] == 8.0
    # The driver shows one line per round, with the loss's terms, as the controller collects it.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], lines
    assert "(ic " in lines[0] and "fine " in lines[1] and "samples/s" in lines[1]


def _method_state(ckpt: checkpoint.Checkpoint) -> dict[str, tuple]:
    """The shapes of what a checkpoint holds of the method: its module's weights and its E-step state."""
    return {
        **{f"module {k}": tuple(v.shape) for k, v in ckpt.method_module.items()},
        **{f"em {k}": tuple(v.shape) for k, v in ckpt.em.items()},
    }


@pytest.mark.parametrize("method", ["dcuh", "psch", "deepquan"])
def test_each_method_checkpoints_its_state_and_resumes(ray_cluster, tmp_path, method):
    feature_dim = build_model(load(TrainConfig, None, TINY).model).feature_dim
    # After round 1's E-step clustered every worker's outputs: DCUH's cosine classifier (8 clusters
    # x 16 bits) and feature-space centres; PSCH's centres and the distance threshold of each
    # cluster (it has no module); DeepQuan's decoder (8 -> 16 -> 16 -> 784) and codebooks (M, K, d_sub).
    want = {
        "dcuh": {"module weight": (8, 16), "em centers": (8, feature_dim)},
        "psch": {"em centers": (8, feature_dim), "em thresholds": (8,)},
        "deepquan": {
            **{f"module {i}.weight": shape for i, shape in ((0, (16, 8)), (2, (16, 16)), (4, (784, 16)))},
            **{f"module {i}.bias": (width,) for i, width in ((0, 16), (2, 16), (4, 784))},
            "em codebooks": (2, 8, 4),
        },
    }[method]
    sized = {"dcuh": ("clusters", 8), "psch": ("clusters", 8), "deepquan": ("codewords", 8)}[method]
    kind, embed_dim = ("pq", 8) if method == "deepquan" else ("binary", 0)
    name = f"{method}-two"
    first = run_training(_cfg(tmp_path, name, "--run.num_workers=2", "--run.rounds=2", method=method))
    ckpt = checkpoint.load(first.checkpoint)
    assert ckpt.progress["round"] == 1 and ckpt.progress["resumes"] == []
    assert ckpt.config["method"]["name"] == method and ckpt.config["method"][sized[0]] == sized[1]
    assert ckpt.code_kind == kind  # the method's kind travels with the weights
    # the head's width: bits for a binary method, M * d_sub for DeepQuan (the resolved config says so)
    assert ckpt.config["model"]["embed_dim"] == embed_dim
    assert ckpt.model["head.weight"].shape == (embed_dim or 16, feature_dim)
    assert _method_state(ckpt) == want

    # The job is submitted again under the same name with one more round: it goes on from round 2.
    rounds_seen = []
    second = run_training(
        _cfg(tmp_path, name, "--run.num_workers=2", "--run.rounds=3", method=method),
        on_round=lambda m: rounds_seen.append(m["round"]),
    )
    resumed = checkpoint.load(second.checkpoint)
    assert rounds_seen == [2] and resumed.progress["round"] == 2 and resumed.progress["resumes"] == [2]
    assert _method_state(resumed) == want and resumed.code_kind == kind


def _kill_a_worker_after_round(round_index: int, test_pid: int, record: str):
    """A Ray Train callback that SIGKILLs one training worker (no cleanup) as the controller
    collects round ``round_index``'s report, once: the work of the rounds after it is lost, and
    the latest checkpoint the run holds is that round's. Killed from the controller's own report
    handling, before its next poll, no later round's report can be collected first.

    The workers are found among the processes below ``test_pid``: this test session's local
    Ray cluster is its child, so other Ray clusters on the machine are left alone. Everything
    is defined in here because the callback is pickled by value to the controller.
    """
    from ray.train import UserCallback

    def processes_below(root: int) -> dict[int, str]:
        parents, commands = {}, {}
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    commands[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue  # exited while being read
        below, frontier = set(), {root}
        while frontier:
            frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
            below |= frontier
        return {pid: commands.get(pid, "") for pid in below}

    class KillAWorker(UserCallback):
        def __init__(self):
            self.done = False

        def after_report(self, run_context, metrics, **_):  # Ray passes the checkpoint by keyword
            if self.done or metrics[0]["round"] != round_index:
                return
            self.done = True
            below = processes_below(test_pid)
            workers = sorted(pid for pid, cmd in below.items() if cmd.startswith("ray::RayTrainWorker"))
            os.kill(workers[-1], signal.SIGKILL)
            with open(record, "w") as f:
                json.dump({"killed": workers[-1], "workers": workers}, f)

    return KillAWorker()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has died, unreaped
    except FileNotFoundError:
        return False


def test_killed_worker_resumes_from_latest_checkpoint(ray_cluster, tmp_path):
    cfg = _cfg(
        tmp_path, "chaos", "--run.num_workers=2", "--run.rounds=3", "--run.max_failures=1", "--optim.swa_start=0"
    )
    record = str(tmp_path / "killed")
    rounds_seen = []
    result = run_training(
        cfg,
        on_round=lambda m: rounds_seen.append(m["round"]),
        callbacks=[_kill_a_worker_after_round(0, os.getpid(), record)],
    )
    killed = json.loads(open(record).read())
    assert len(killed["workers"]) == 2  # the run's two workers were found, and one was killed ...
    assert not _running(killed["killed"])  # ... for good
    ckpt = checkpoint.load(result.checkpoint)
    assert ckpt.progress["round"] == 2
    # resumed once, at round 1: only the round the worker died in was run again
    assert ckpt.progress["resumes"] == [1]
    # the weight average came through the resume: rounds 0-2, each counted once
    assert ckpt.averaging["count"] == 3 and set(ckpt.averaging["live_model"]) == set(ckpt.model)
    # the driver heard of every round once: the lost round's report was never collected
    assert rounds_seen == [0, 1, 2]


def test_s3_checkpoint_and_resubmission_continue(ray_cluster, s3_bucket):
    storage_path = f"{s3_bucket}/runs"
    first = run_training(_cfg(storage_path, "s3run", "--run.rounds=1"))
    assert first.checkpoint.startswith("s3://")
    assert checkpoint.load(first.checkpoint).progress["round"] == 0
    # the "driver crashed" and the job is submitted again with the same run name and more rounds
    second = run_training(_cfg(storage_path, "s3run", "--run.rounds=2"))
    ckpt = checkpoint.load(second.checkpoint)
    assert ckpt.progress["round"] == 1 and ckpt.progress["resumes"] == [1]
