"""Stochastic weight averaging (Izmailov et al., 2018): the weights a run serves are the mean of
the weights it ended its last rounds with, with batch-norm statistics measured for that mean.

Why: once a recipe has plateaued its mAP still wanders a little from round to round, so the
round a run happens to stop at decides part of its score. The mean of the late rounds' weights
sits nearer the middle of the region those rounds wander over and does not depend on where
the run stops (benchmarks/results/fmnist_map.json holds the measured effect). The live weights
keep training and feed the E-step; only the served copy is averaged, so averaging never
changes the training trajectory.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import update_bn


class WeightAverage:
    """Equal-weight running mean of a model's parameters, one sample per ``update``."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.count += 1
        for name, p in model.named_parameters():
            if self.count == 1:
                self.mean[name] = p.detach().float().clone()
            else:
                self.mean[name].add_(p.detach().float() - self.mean[name], alpha=1.0 / self.count)

    @torch.no_grad()
    def averaged_model(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
        """A copy of ``model`` holding the mean weights, its batch-norm statistics re-measured on
        ``batches``: the mean of the rounds' running statistics does not describe the mean weights."""
        if not self.count:
            raise RuntimeError("WeightAverage.averaged_model before any update: no round has been averaged yet")
        averaged = copy.deepcopy(model)
        for name, p in averaged.named_parameters():
            p.copy_(self.mean[name].to(p.dtype))
        update_bn(batches, averaged)
        return averaged.eval()

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": {k: v.detach().cpu().clone() for k, v in self.mean.items()}}  # a snapshot

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        self.count = int(state["count"])
        self.mean = {k: v.to(device).float() for k, v in state["mean"].items()}
