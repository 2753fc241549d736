"""DCUH: Deep Clustering based Unsupervised Hashing (Yu et al., APWeb-WAIM 2021), reconstructed.

The paper states only its abstract's design: pseudo classification labels from clustering the
network's deep features, a classification loss on them, and a discriminative loss that keeps
codes invariant under augmentation and preserves local semantic structure, with clustering and
training alternating. No code was published. Everything below those statements is rayhash's
reconstruction (DeepCluster's mechanics plus contrastive invariance; docs/methods.md):

- E-step (cluster-wide): k-means with ``k`` clusters over the backbone's pooled features of
  every training image, L2-normalised (optionally PCA-whitened); labels are global.
- Classifier: a cosine classifier from the code h to the k clusters. Cluster ids permute
  between rounds, so each E-step sets its weights to the clusters' mean codes (computed over
  every rank) and the epoch trains them from there.
- Loss: ``CE(cls(h_a), y) + CE(cls(h_b), y) + lambda_inv * NTXent(h_a, h_b)
  + lambda_local * SupCon(h, y)`` over both views.
- Batches: anchors drawn uniformly over clusters (DeepCluster's ``UnifLabelSampler``), each
  followed by a partner from its cluster so that the local term has in-batch positives.
- Ablation: the classification and local terms off, plain shuffled batches: plain invariance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rayhash import dist
from rayhash.methods import losses
from rayhash.methods.base import CODES, FEATURES, HashingMethod, MethodConfig, ShardInputs, ViewBatch
from rayhash.methods.pseudo_labels import cluster_features
from rayhash.methods.registry import register_method
from rayhash.methods.sampling import sample_partners, uniform_over_clusters

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DCUHConfig(MethodConfig):
    name: str = "dcuh"
    ablation: bool = False  # classification and local terms off: plain invariance
    clusters: int = 100  # k; DeepCluster over-clusters, 10x-100x the expected classes
    pca_dims: int = 0  # PCA-whiten features to this many dims before k-means (DeepCluster: 256); 0 = off
    kmeans_iters: int = 20  # Lloyd iterations per E-step, warm from k-means++ each round
    lambda_cls: float = 1.0  # weight of the two classification terms
    lambda_inv: float = 1.0  # weight of NT-Xent between the two views
    lambda_local: float = 0.5  # weight of the local term: supervised contrast over pseudo labels
    tau: float = 0.3  # temperature of NT-Xent and of the local term
    cls_temperature: float = 0.1  # the cosine classifier's logits are cos / cls_temperature
    warmup_rounds: int = 1  # rounds of plain invariance before the first clustering
    uniform_sampling: bool = True  # anchors uniform over clusters
    partner_sampling: bool = True  # half of each batch: a partner from the anchor's cluster
    seed: int = 0  # seeds each round's k-means (plus the round index)


class CosineClassifier(nn.Module):
    """Logits ``cos(h, w_c) / temperature`` for each cluster c; the E-step sets ``w`` in place."""

    def __init__(self, nbits: int, classes: int, temperature: float):
        super().__init__()
        self.temperature = temperature
        self.weight = nn.Parameter(torch.randn(classes, nbits) / nbits**0.5)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(h, dim=1) @ F.normalize(self.weight, dim=1).T / self.temperature


def cluster_mean_codes(codes: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Each cluster's mean code over every rank, (k, K); a cluster no rank holds gets zeros."""
    sums = torch.zeros(k, codes.shape[1] + 1, dtype=torch.float64, device=codes.device)
    sums.index_add_(0, labels, torch.cat([codes.double(), codes.new_ones(len(codes), 1).double()], dim=1))
    sums = dist.all_reduce_sum(sums)
    return (sums[:, :-1] / sums[:, -1:].clamp_min(1.0)).float()


class DCUH(HashingMethod):
    name = "dcuh"
    code_kind = "binary"
    e_step_inputs = (CODES, FEATURES)

    def __init__(self, cfg: DCUHConfig, nbits: int, feature_dim: int = 0):
        super().__init__(cfg, nbits, feature_dim)
        # The classifier exists from the start, whatever the round, so the optimiser, DDP and
        # checkpoints always see the same parameters; the ablation never uses it.
        self.module = CosineClassifier(nbits, cfg.clusters, cfg.cls_temperature)
        self.labels: torch.Tensor | None = None  # this shard's pseudo labels, (n_local,)
        self.centers: torch.Tensor | None = None  # feature-space centres, (k, d)

    def e_step(self, inputs: ShardInputs, round_index: int) -> dict[str, float]:
        cfg = self.cfg
        if cfg.ablation or round_index < cfg.warmup_rounds:
            return {}
        pl = cluster_features(
            inputs.features, cfg.clusters, pca_dims=cfg.pca_dims, n_iter=cfg.kmeans_iters, seed=cfg.seed + round_index
        )
        self.labels, self.centers = pl.labels, pl.centers.float()
        means = cluster_mean_codes(inputs.codes.detach(), pl.labels, cfg.clusters)
        with torch.no_grad():
            # Re-initialised in place: the optimiser holds this parameter.
            self.module.weight.copy_(means.to(self.module.weight.device))
        sizes = dist.all_reduce_sum(torch.bincount(pl.labels, minlength=cfg.clusters).double())
        return {
            "kmeans_inertia": pl.inertia,
            "clusters_used": float((sizes > 0).sum()),
            "largest_cluster_share": float(sizes.max() / sizes.sum()),
        }

    def loss(self, batch: ViewBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, h_a, h_b = self.cfg, batch.h_a, batch.h_b
        l_inv = losses.ntxent_loss(h_a, h_b, cfg.tau)
        if cfg.ablation or self.labels is None:
            # The classifier still takes part (at zero weight) so DDP sees every parameter used.
            zero = self.module(h_a[:1]).sum() * 0.0
            return cfg.lambda_inv * l_inv + zero, {"inv": l_inv.item()}
        y = self.labels[batch.index.to(self.labels.device)].to(h_a.device)
        l_cls = F.cross_entropy(self.module(h_a), y) + F.cross_entropy(self.module(h_b), y)
        l_local = losses.supervised_contrastive_loss(torch.cat([h_a, h_b]), torch.cat([y, y]), cfg.tau)
        total = cfg.lambda_cls * l_cls + cfg.lambda_inv * l_inv + cfg.lambda_local * l_local
        return total, {"cls": l_cls.item(), "inv": l_inv.item(), "local": l_local.item()}

    def sample_order(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        if not self.cfg.uniform_sampling or self.labels is None or self.cfg.ablation:
            return None
        return uniform_over_clusters(self.labels.cpu(), n, generator)

    def partners(self, generator: torch.Generator) -> torch.Tensor | None:
        if not self.cfg.partner_sampling or self.labels is None or self.cfg.ablation:
            return None
        return sample_partners(self.labels.cpu(), generator)

    def state_dict(self) -> dict:
        # Labels are per shard and recomputed by the next E-step; the centres record what the
        # model was last trained against.
        return {} if self.centers is None else {"centers": self.centers.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.centers = state["centers"]


register_method("dcuh", DCUHConfig, DCUH)
