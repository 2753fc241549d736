"""Cluster-driven sampling against counts over many draws: partners stay in their cluster, and
anchors are uniform over clusters (then over members), whatever the cluster sizes."""

import pytest
import torch
from scipy.stats import chi2

from rayhash.methods.sampling import sample_partners, uniform_over_clusters


def _uniform_p_value(counts: torch.Tensor) -> float:
    """Pearson's chi-square test of ``counts`` against equal expected counts."""
    expected = counts.sum() / len(counts)
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, len(counts) - 1))


def test_partners_share_a_component_and_are_spread_over_it():
    assign = torch.tensor([0, 1, 0, 2, 1, 0, 3, 0])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_partners(assign, g) for _ in range(400)])
    assert bool((assign[draws] == assign).all())
    alone = torch.bincount(assign)[assign] == 1
    assert bool((draws[:, alone] == torch.arange(8)[alone]).all())  # a lone item pairs with itself
    assert not bool((draws[:, ~alone] == torch.arange(8)[~alone]).any())  # everyone else never does
    # Brute force: item 0's partners are the other members of component 0, about equally often.
    counts = torch.bincount(draws[:, 0], minlength=8)
    assert set(counts.nonzero().flatten().tolist()) == {2, 5, 7}
    assert _uniform_p_value(counts[[2, 5, 7]].double()) > 1e-3


def _shuffled_assign(sizes, seed=0):
    """Cluster ids with the given sizes (0 = an id no item has), in a shuffled order."""
    assign = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return assign[torch.randperm(len(assign), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("sizes", [(0, 1, 3, 0, 60, 6), (5,), (0, 0, 2, 1)])
def test_anchors_are_uniform_over_clusters_then_members(sizes):
    assign = _shuffled_assign(sizes)
    draws = uniform_over_clusters(assign, 30_000, torch.Generator().manual_seed(1))
    assert draws.shape == (30_000,) and draws.dtype == torch.int64
    assert int(draws.min()) >= 0 and int(draws.max()) < len(assign)
    present = [c for c, s in enumerate(sizes) if s]
    per_cluster = torch.bincount(assign[draws], minlength=len(sizes)).double()
    assert per_cluster[[c for c, s in enumerate(sizes) if not s]].sum() == 0  # never an empty cluster
    if len(present) > 1:
        # Drawn in proportion to size instead, the big cluster would take most draws: p ~ 0.
        assert _uniform_p_value(per_cluster[present]) > 1e-3
    for c in present:
        members = (assign == c).nonzero().flatten()
        hits = torch.bincount(draws, minlength=len(assign))[members].double()
        assert bool((hits > 0).all())
        if len(members) > 1:
            assert _uniform_p_value(hits) > 1e-3


def test_uniform_draws_follow_the_generator():
    assign = _shuffled_assign((4, 0, 9))
    first = uniform_over_clusters(assign, 50, torch.Generator().manual_seed(7))
    again = uniform_over_clusters(assign, 50, torch.Generator().manual_seed(7))
    other = uniform_over_clusters(assign, 50, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
