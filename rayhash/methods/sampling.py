"""Batch sampling driven by a method's clusters: partners from one cluster, anchors uniform over clusters.

Pure torch on this worker's shard: a method hands the trainer these orders through
``HashingMethod.partners`` / ``HashingMethod.sample_order``.
"""

from __future__ import annotations

import torch


def _grouped(assign: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Items sorted by cluster, each cluster's size and its first slot in that order."""
    order = torch.argsort(assign, stable=True)
    counts = torch.bincount(assign)
    starts = torch.cumsum(counts, 0) - counts
    return order, counts, starts


def sample_partners(assign: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each item, another item of its cluster drawn uniformly (itself when it is alone).

    ``assign``: (n,) non-negative cluster ids.
    """
    order, counts, starts = _grouped(assign)
    comp = assign[order]
    size = counts[comp]
    # Draw among the other size-1 members: offset in [0, size-1), skipping the item's own slot.
    rank_in = torch.arange(len(order)) - starts[comp]
    offset = (torch.rand(len(order), generator=generator) * (size - 1).clamp_min(1)).long()
    offset = torch.where(size > 1, offset + (offset >= rank_in).long(), rank_in)
    out = torch.empty_like(assign)
    out[order] = order[starts[comp] + offset]
    return out


def uniform_over_clusters(assign: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` item positions: a non-empty cluster drawn uniformly, then one of its members uniformly.

    DeepCluster's ``UnifLabelSampler`` idea: one large cluster cannot fill most batches, so
    small clusters weigh as much in the loss as large ones. Items of large clusters may repeat
    less often than those of small ones; that is the point.
    """
    order, counts, starts = _grouped(assign)
    present = (counts > 0).nonzero().flatten()
    clusters = present[torch.randint(len(present), (count,), generator=generator)]
    member = (torch.rand(count, generator=generator) * counts[clusters]).long()
    return order[starts[clusters] + member]
