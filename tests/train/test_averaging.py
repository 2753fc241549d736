"""Weight averaging (SWA): the mean against numpy, batch-norm statistics against a direct computation."""

import numpy as np
import pytest
import torch
from torch import nn

from rayhash.train.averaging import WeightAverage


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def test_mean_is_the_mean_of_the_snapshots_and_survives_its_state_dict():
    torch.manual_seed(0)
    net, average, snapshots = _net(), WeightAverage(), []
    for _ in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({k: v.detach().numpy().copy() for k, v in net.named_parameters()})
        average.update(net)
    assert average.count == 4
    for name in snapshots[0]:
        expected = np.mean([s[name] for s in snapshots], axis=0)
        np.testing.assert_allclose(average.mean[name].numpy(), expected, rtol=1e-6, atol=1e-6)
    again = WeightAverage()
    again.load_state_dict(average.state_dict())
    assert again.count == 4 and all(torch.equal(again.mean[k], average.mean[k]) for k in average.mean)


def test_averaged_model_holds_the_mean_and_measures_its_own_batch_norm_statistics():
    torch.manual_seed(1)
    net, average = _net(), WeightAverage()
    average.update(net)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    average.update(net)  # mean = 2x the first weights
    x = torch.randn(64, 5)
    averaged = average.averaged_model(net, [x])
    assert not averaged.training and net[1].running_mean.abs().sum() == 0  # the live model is untouched
    for (name, p), q in zip(averaged.named_parameters(), net.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy() * 2 / 3, rtol=1e-6, err_msg=name)
    pre_bn = averaged[0](x).detach().numpy()  # one batch: the statistics are that batch's, var unbiased
    np.testing.assert_allclose(averaged[1].running_mean.numpy(), pre_bn.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(averaged[1].running_var.numpy(), pre_bn.var(0, ddof=1), rtol=1e-5, atol=1e-6)


def test_averaged_model_before_any_update_says_so():
    with pytest.raises(RuntimeError, match="before any update"):
        WeightAverage().averaged_model(_net(), [torch.randn(4, 5)])
