"""Cluster-wide k-means: k-means++ seeding on rank 0, Lloyd iterations over sharded points.

Every rank holds its own rows of the data. Per-cluster sums and counts are all-reduced in
float64 and every rank applies the same update, so all ranks end with the same centres, and
an N-rank run equals a one-process run on the rows concatenated in rank order. Distances are
computed in float64, block by block, so memory stays bounded and near-ties resolve the same
way whatever the sharding.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import torch

from rayhash import dist

logger = logging.getLogger(__name__)

# Elements of one (rows, k) float64 block. On a CPU 2 MB, which stays in cache, where one block of
# all rows would be allocated and read back from memory on every pass (the results are the same
# either way). On a GPU 128 MB: fewer, larger blocks keep it busy.
_CPU_BLOCK_ELEMENTS = 2**18
_GPU_BLOCK_ELEMENTS = 2**24


# eq=False: tensors have no single truth value to compare by.
@dataclasses.dataclass(frozen=True, eq=False)
class KMeansResult:
    centers: torch.Tensor  # (k, d), the input's dtype, identical on every rank
    labels: torch.Tensor  # (n_local,) int64, index of the nearest centre of each local row
    inertia: float  # sum of squared distances to the nearest centre over all ranks' rows
    n_iter: int  # Lloyd iterations run


def check_points(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D floating-point tensor (n_local, d); got {got}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values; clean or drop those rows first")


def block_rows(n_cols: int, rows: int | None = None, device: torch.device | None = None) -> int:
    if rows is not None:
        if rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {rows}")
        return rows
    elements = _CPU_BLOCK_ELEMENTS if device is None or device.type == "cpu" else _GPU_BLOCK_ELEMENTS
    return max(1, elements // max(1, n_cols))


def global_rows(n_local: int, device: torch.device) -> list[int]:
    """Row counts of every rank, in rank order."""
    return dist.all_gather_cat(torch.tensor([n_local], dtype=torch.int64, device=device)).tolist()


def assign(x: torch.Tensor, centers: torch.Tensor, chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row of ``x`` and its squared distance, block by block (float64)."""
    centers = centers.to(device=x.device, dtype=torch.float64)
    c_sq = (centers * centers).sum(1)
    labels = torch.empty(len(x), dtype=torch.int64, device=x.device)
    d2_min = torch.empty(len(x), dtype=torch.float64, device=x.device)
    step = block_rows(len(centers), chunk_rows, x.device)
    for start in range(0, len(x), step):
        xb = x[start : start + step].to(torch.float64)
        # ||x||^2 does not change the argmin: add it to the winners only.
        d2 = torch.addmm(c_sq, xb, centers.T, alpha=-2.0)
        best, nearest = d2.min(1)
        labels[start : start + step] = nearest
        d2_min[start : start + step] = (best + (xb * xb).sum(1)).clamp_min_(0.0)
    return labels, d2_min


def sample_rows(x: torch.Tensor, max_rows: int, seed: int) -> torch.Tensor:
    """The same ``max_rows`` of the global data (float64) on every rank, for any world size.

    Rows are drawn by global position (ranks' rows concatenated in rank order) with a seeded
    generator and kept in that order, so 1 rank and N ranks see the same sample.
    """
    rows = global_rows(len(x), x.device)
    if sum(rows) <= max_rows:
        return dist.all_gather_cat(x.to(torch.float64))
    picked = np.sort(np.random.default_rng(seed).choice(sum(rows), size=max_rows, replace=False))
    start = sum(rows[: dist.rank()])
    local = picked[(picked >= start) & (picked < start + len(x))] - start
    return dist.all_gather_cat(x[torch.as_tensor(local, device=x.device)].to(torch.float64))


def _kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's): of 2 + log k D^2-sampled candidates keep the best."""
    n_trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(1)

    def sq_dists_to(rows: torch.Tensor) -> torch.Tensor:
        return torch.addmm(x_sq, x[rows], x.T, alpha=-2.0).add_(x_sq[rows, None]).clamp_min_(0.0)

    first = torch.randint(len(x), (1,), generator=generator).to(x.device)
    chosen = [first]
    closest = sq_dists_to(first)[0]
    potential = closest.sum()
    for _ in range(1, k):
        # Uniform draws come from the CPU generator so the sequence is the same on any device.
        draws = torch.rand(n_trials, generator=generator, dtype=torch.float64).to(x.device) * potential
        candidates = torch.searchsorted(closest.cumsum(0), draws).clamp_max_(len(x) - 1)
        trial = torch.minimum(closest, sq_dists_to(candidates))
        potentials = trial.sum(1)
        best = potentials.argmin()
        closest, potential = trial[best], potentials[best]
        chosen.append(candidates[best, None])
    return x[torch.cat(chosen)]


@torch.no_grad()
def kmeans_plusplus(x: torch.Tensor, k: int, *, seed: int = 0, init_sample: int = 100_000) -> torch.Tensor:
    """k-means++ centres (k, d) float64 over all ranks' rows (at most ``init_sample`` of them).

    Seeding runs on rank 0 and the centres are broadcast, so every rank returns the same.
    """
    check_points(x)
    n_total = sum(global_rows(len(x), x.device))
    if not 1 <= k <= n_total:
        raise ValueError(f"k must be between 1 and the number of points ({n_total}), got {k}")
    if init_sample < k:
        raise ValueError(f"init_sample ({init_sample}) must be at least k ({k})")
    sample = sample_rows(x, init_sample, seed)
    centers = torch.zeros((k, x.shape[1]), dtype=torch.float64, device=x.device)
    if dist.rank() == 0:
        centers = _kmeans_plusplus(sample, k, torch.Generator().manual_seed(seed))
    return dist.broadcast(centers, src=0)


def _farthest_rows(x: torch.Tensor, d2_min: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` rows of all ranks farthest from their centre (ties: lowest global position)."""
    start = sum(global_rows(len(x), x.device)[: dist.rank()])
    top = torch.topk(d2_min, min(count, len(x))).indices
    local = torch.cat([d2_min[top, None], (top + start)[:, None].to(torch.float64), x[top].to(torch.float64)], 1)
    cand = dist.all_gather_cat(local)
    order = np.lexsort((cand[:, 1].cpu().numpy(), -cand[:, 0].cpu().numpy()))[:count]
    return cand[torch.as_tensor(order, device=cand.device), 2:]


@torch.no_grad()
def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    n_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    init_sample: int = 100_000,
    init: torch.Tensor | None = None,
    chunk_rows: int | None = None,
) -> KMeansResult:
    """Lloyd's k-means over the rows of every rank; ``x`` is this rank's (n_local, d) shard.

    ``tol`` is relative, as in scikit-learn: stop once the summed squared centre shift is at
    most ``tol`` times the mean per-feature variance of the data. ``init`` gives starting
    centres (k, d), the same on every rank; by default k-means++ seeds them. An empty
    cluster is moved to the point farthest from its centre, the same on every rank.
    """
    check_points(x)
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    d = x.shape[1]
    x64 = x.to(torch.float64)
    moments = dist.all_reduce_sum(torch.cat([x64.sum(0), (x64 * x64).sum(0), x64.new_tensor([len(x)])]))
    n_total = moments[-1]
    if not 1 <= k <= n_total:
        raise ValueError(f"k must be between 1 and the number of points ({int(n_total)}), got {k}")
    mean = moments[:d] / n_total
    threshold = tol * float((moments[d : 2 * d] / n_total - mean * mean).clamp_min(0).mean())

    if init is None:
        centers = kmeans_plusplus(x, k, seed=seed, init_sample=init_sample)
    else:
        check_points(init, "init")
        if init.shape != (k, d):
            raise ValueError(f"init must hold k={k} centres of dimension {d}, got shape {tuple(init.shape)}")
        # Rank 0's copy wins so that ranks cannot start apart.
        centers = dist.broadcast(init.to(device=x.device, dtype=torch.float64), src=0)

    it = 0
    for it in range(1, n_iter + 1):
        labels, d2_min = assign(x64, centers, chunk_rows)
        sums = x64.new_zeros((k, d)).index_add_(0, labels, x64)
        stats = dist.all_reduce_sum(torch.cat([sums.flatten(), torch.bincount(labels, minlength=k).to(x64)]))
        sums, counts = stats[: k * d].view(k, d), stats[k * d :]
        new_centers = sums / counts.clamp_min(1.0)[:, None]
        empty = (counts == 0).nonzero().flatten()
        if len(empty):
            logger.info("k-means iteration %d: moving %d empty cluster(s) to the farthest points", it, len(empty))
            new_centers[empty] = _farthest_rows(x64, d2_min, len(empty))
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if shift <= threshold:
            break
    else:
        logger.info("k-means stopped at n_iter=%d before the centre shift fell under tol", n_iter)

    labels, d2_min = assign(x64, centers, chunk_rows)
    inertia = float(dist.all_reduce_sum(d2_min.sum().view(1)))
    return KMeansResult(centers=centers.to(x.dtype), labels=labels, inertia=inertia, n_iter=it)
