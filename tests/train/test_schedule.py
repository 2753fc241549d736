"""The learning-rate schedules: cosine reaches min_lr on the run's last step and resumes exactly."""

import math

import pytest
import torch

from rayhash.config import ConfigError, load
from rayhash.train.config import OptimConfig, TrainConfig
from rayhash.train.loop import build_scheduler


def _lrs(cfg: OptimConfig, total: int, steps: int, state=None):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total_steps=total)
    if state is not None:
        opt.load_state_dict(state[0])
        sched.load_state_dict(state[1])
    out = []
    for _ in range(steps):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out, (opt.state_dict(), sched.state_dict())


def test_cosine_follows_the_half_cosine_to_min_lr():
    cfg = OptimConfig(lr=1e-3, schedule="cosine", min_lr=1e-5)
    lrs, _ = _lrs(cfg, total=100, steps=100)
    expected = [1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 100)) / 2 for t in range(1, 101)]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert lrs[-1] == pytest.approx(1e-5)


def test_cosine_resumed_from_its_state_dict_matches_an_unbroken_run():
    cfg = OptimConfig(lr=1e-3, schedule="cosine")
    whole, _ = _lrs(cfg, total=60, steps=60)
    first, state = _lrs(cfg, total=60, steps=25)
    rest, _ = _lrs(cfg, total=60, steps=35, state=state)
    assert first + rest == pytest.approx(whole, rel=1e-9)


def test_step_schedule_is_the_staircase():
    cfg = OptimConfig(lr=1e-3, decay=0.5, decay_every=10)
    lrs, _ = _lrs(cfg, total=0, steps=30)
    assert lrs[8] == pytest.approx(1e-3) and lrs[9] == pytest.approx(5e-4) and lrs[29] == pytest.approx(1.25e-4)


def test_unknown_schedule_names_the_key_and_the_choices(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  schedule: linear\n")
    with pytest.raises(ConfigError, match=r"optim\.schedule.*step.*cosine"):
        load(TrainConfig, str(path), [])
