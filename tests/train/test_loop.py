"""The training loop in one process (identity collectives), as the GPU check and pilots run it."""

import pytest
import torch

from rayhash.config import load
from rayhash.train.config import TrainConfig
from rayhash.train.loop import run_rounds

TINY = [
    "--data.protocol=random", "--data.random_queries=100", "--data.random_train=256",
    "--model.bits=16", "--optim.batch_size=64", "--method.fine_components=8", "--method.coarse_components=3",
    "--run.rounds=2", "--run.torch_threads=1", "--eval.enabled=false",
]


def _train(*extra) -> tuple[list[dict], dict]:
    metrics, payloads = [], []
    run_rounds(load(TrainConfig, None, [*TINY, *extra]), device=torch.device("cpu"),
               report=lambda m, p: (metrics.append(m), payloads.append(p)))  # fmt: skip
    return metrics, payloads[-1]


def test_loader_workers_augment_in_other_processes_and_repeat_exactly():
    first, state = _train("--run.loader_workers=2")
    again, state_again = _train("--run.loader_workers=2")
    in_process, _ = _train("--run.loader_workers=0")
    assert [m["round"] for m in first] == [0, 1]
    # Round 1 trains against the E-step's components (round 0 is the warm-up).
    assert {"ic", "fine", "coarse"} <= set(first[1])
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in first)
    assert [m["loss"] for m in first] == [m["loss"] for m in again]
    for key, value in state["model"].items():
        assert torch.equal(value, state_again["model"][key]), key
    # Other processes draw other augmentations; the same batches and steps are run either way.
    assert [m["loss"] for m in first] != [m["loss"] for m in in_process]
    assert first[-1]["samples_per_second"] > 0 and state["progress"]["step"] == 2 * (256 // 64)


def test_negative_loader_workers_say_what_to_set():
    with pytest.raises(ValueError, match="run.loader_workers must be >= 0"):
        _train("--run.loader_workers=-1")
