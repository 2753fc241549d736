"""The training loop in one process (identity collectives), as the GPU check and pilots run it."""

import pytest
import torch

from rayhash.config import load
from rayhash.models import checkpoint
from rayhash.train.config import TrainConfig
from rayhash.train.loop import run_rounds

TINY = [
    "--data.protocol=random",
    "--data.random_queries=100",
    "--data.random_train=256",
    "--model.bits=16",
    "--optim.batch_size=64",
    "--method.fine_components=8",
    "--method.coarse_components=3",
    "--run.rounds=2",
    "--run.torch_threads=1",
    "--eval.enabled=false",
]


def _train_keeping_every_round(cfg_args: list[str], resume=None, save_round=-1, save_to="") -> list[dict]:
    payloads = []

    def keep(metrics, payload):
        if metrics["round"] == save_round:  # now, as Ray Train's report does: the optimizer's state moves on
            checkpoint.save(save_to, **payload)
        payloads.append({k: ({n: t.clone() for n, t in v.items()} if k == "model" else v) for k, v in payload.items()})

    run_rounds(load(TrainConfig, None, [*TINY, *cfg_args]), device=torch.device("cpu"), report=keep, resume=resume)
    return payloads


def _train(*extra) -> tuple[list[dict], dict]:
    """Each round's metrics, and the last round's payload."""
    payloads = _train_keeping_every_round(list(extra))
    return [p["progress"]["metrics"] for p in payloads], payloads[-1]


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


def test_weight_averaging_serves_the_mean_and_leaves_training_alone(tmp_path):
    uri = str(tmp_path / "ckpt")
    plain = _train_keeping_every_round(["--run.rounds=3"])
    averaged = _train_keeping_every_round(["--run.rounds=3", "--optim.swa_start=1"], save_round=1, save_to=uri)
    assert not averaged[0]["averaging"] and [p["averaging"].get("count") for p in averaged[1:]] == [1, 2]
    assert averaged[-1]["progress"]["metrics"]["averaged_rounds"] == 2
    live = [p["model"] for p in plain]
    # The averaged copy is only served: the live weights follow the run without averaging exactly.
    for key, value in averaged[-1]["averaging"]["live_model"].items():
        assert torch.equal(value, live[-1][key]), key
    served = averaged[-1]["model"]
    for name in averaged[-1]["averaging"]["mean"]:  # the parameters; buffers are not averaged
        torch.testing.assert_close(served[name], (live[1][name] + live[2][name]) / 2, rtol=1e-5, atol=1e-6)
    bn_means = [k for k in served if k.endswith("running_mean")]
    assert bn_means and not any(torch.equal(served[k], live[2][k]) for k in bn_means)  # re-measured for the mean

    # Resuming goes on from the live weights and carries the mean on, to the same result.
    resumed = _train_keeping_every_round(["--run.rounds=3", "--optim.swa_start=1"], resume=checkpoint.load(uri))
    assert [p["progress"]["round"] for p in resumed] == [2] and resumed[0]["averaging"]["count"] == 2
    for key, value in averaged[-1]["model"].items():
        assert torch.equal(value, resumed[0]["model"][key]), key


def test_weight_averaging_that_never_starts_warns_and_serves_the_live_weights(caplog):
    with caplog.at_level("WARNING", logger="rayhash.train.loop"):
        payloads = _train_keeping_every_round(["--optim.swa_start=2"])
    assert "optim.swa_start=2 is not below run.rounds=2" in caplog.text
    assert not payloads[-1]["averaging"] and "averaged_rounds" not in payloads[-1]["progress"]["metrics"]
    with pytest.raises(ValueError, match=r"optim.swa_start must be -1"):
        load(TrainConfig, None, [*TINY, "--optim.swa_start=-3"])


def test_a_resumed_run_repeats_the_uninterrupted_run_exactly(tmp_path):
    uri = str(tmp_path / "round1")
    whole = _train_keeping_every_round(["--run.rounds=3"], save_round=1, save_to=uri)
    resumed = _train_keeping_every_round(["--run.rounds=3"], resume=checkpoint.load(uri))
    assert resumed[0]["progress"]["resumes"] == [2]
    assert resumed[0]["progress"]["metrics"]["loss"] == whole[2]["progress"]["metrics"]["loss"]
    for key, value in whole[2]["model"].items():
        assert torch.equal(value, resumed[0]["model"][key]), key
