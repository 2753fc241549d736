"""Pseudo labels from cluster-wide k-means on deep features (DCUH's and PSCH's E-step).

Every rank holds its own shard's features. The optional PCA whitening, the k-means and the
per-cluster distance statistics are all reduced over every rank through :mod:`rayhash.dist`,
so cluster ids are global: the same centres on every rank, and an N-rank run equals one
process on the rows concatenated in rank order.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F

from rayhash import dist
from rayhash.clustering.kmeans import kmeans

logger = logging.getLogger(__name__)

UNLABELLED = -1


# eq=False: tensors have no single truth value to compare by.
@dataclasses.dataclass(frozen=True, eq=False)
class PseudoLabels:
    labels: torch.Tensor  # (n_local,) int64 cluster of each local item; UNLABELLED where dropped
    assign: torch.Tensor  # (n_local,) int64 nearest cluster of each local item, before any threshold
    centers: torch.Tensor  # (k, d) float64, identical on every rank
    points: torch.Tensor  # (n_local, d) float64: the features as clustered (normalised, maybe whitened)
    inertia: float

    @property
    def k(self) -> int:
        return len(self.centers)


def prepare_features(features: torch.Tensor, pca_dims: int = 0) -> torch.Tensor:
    """L2-normalised features, optionally PCA-whitened to ``pca_dims`` first (DeepCluster's recipe).

    The mean and covariance are all-reduced, so every rank projects with the same basis.
    """
    x = features.detach().to(torch.float64)
    if pca_dims:
        d = x.shape[1]
        if not 1 <= pca_dims <= d:
            raise ValueError(f"pca_dims must be between 1 and the feature width {d}, got {pca_dims}")
        stats = dist.all_reduce_sum(torch.cat([x.sum(0), (x.T @ x).flatten(), x.new_tensor([len(x)])]))
        n = stats[-1]
        mean = stats[:d] / n
        cov = stats[d:-1].view(d, d) / n - torch.outer(mean, mean)
        eigval, eigvec = torch.linalg.eigh(cov)  # ascending
        top = eigvec[:, -pca_dims:].flip(1)
        scale = eigval[-pca_dims:].flip(0).clamp_min(1e-12).rsqrt()
        # eigh's column signs are arbitrary but deterministic for the same matrix, which every rank holds.
        x = (x - mean) @ top * scale
    return F.normalize(x, dim=1)


def cluster_features(
    features: torch.Tensor, k: int, *, pca_dims: int = 0, n_iter: int = 20, seed: int = 0
) -> PseudoLabels:
    """k-means over every rank's features; ``k`` is capped at the number of training items."""
    x = prepare_features(features, pca_dims)
    n_total = int(dist.all_reduce_sum(x.new_tensor([len(x)])).item())
    if k > n_total:
        logger.warning("only %d training items: using %d clusters instead of %d", n_total, n_total, k)
        k = n_total
    result = kmeans(x, k, n_iter=n_iter, seed=seed)
    return PseudoLabels(result.labels, result.labels, result.centers, x, result.inertia)


def distance_thresholds(pl: PseudoLabels, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PSCH's distance threshold: a member keeps its label only within ``mu_c + alpha * sigma_c``.

    ``mu_c`` and ``sigma_c`` are the mean and (population) standard deviation of the Euclidean
    distances of cluster c's members to its centre, over every rank. Returns the labels with
    the rest set to :data:`UNLABELLED`, and the (k,) thresholds.
    """
    d = (pl.points - pl.centers[pl.assign]).norm(dim=1)
    k = pl.k
    stats = torch.zeros(3, k, dtype=torch.float64, device=d.device)
    stats[0].index_add_(0, pl.assign, torch.ones_like(d))
    stats[1].index_add_(0, pl.assign, d)
    stats[2].index_add_(0, pl.assign, d * d)
    stats = dist.all_reduce_sum(stats)
    count = stats[0].clamp_min(1.0)
    mu = stats[1] / count
    sigma = (stats[2] / count - mu * mu).clamp_min(0.0).sqrt()
    thresholds = mu + alpha * sigma
    labels = torch.where(d <= thresholds[pl.assign], pl.assign, torch.full_like(pl.assign, UNLABELLED))
    return labels, thresholds
