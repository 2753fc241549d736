"""PSCH: Pseudo labels and Soft multi-part Corresponding similarity Hashing (Li et al., IEEE Access
2020), reconstructed.

The paper states only its abstract's design: pseudo labels from k-means on deep features plus
a distance threshold; feature maps divided into groups, an attention map per group, and
multi-part similarity matrices that grade how alike two images of one pseudo class are; one
loss over the pseudo labels and that soft similarity. No text or code of it is reachable, so
everything below those statements is rayhash's reconstruction (docs/methods.md):

- E-step (cluster-wide): k-means over the pooled, L2-normalised features; a member keeps its
  label only within ``mu_c + alpha * sigma_c`` of its centre, the rest are unlabelled (-1).
- Part descriptors from each view's last feature map F (C x H x W), detached: C split into G
  groups, ``A_g = softmax_hw(sum_c F_g)``, ``p_g = sum_hw A_g * F_g``;
  ``s_ij = mean_g cos(p_g(i), p_g(j))``, clamped to [0, 1].
- Graded similarity: post-ReLU maps give every pair a high cosine, so ``s_ij`` is read relative
  to the batch's pairs of different pseudo labels (mean ``b``):
  ``g_ij = floor + (1 - floor) * clamp((s_ij - b) / (1 - b), 0, 1)``. A same-label pair stays a
  positive (at least ``target_floor``), graded up by how much more alike its parts are than
  two images of different pseudo classes.
- Pair targets per batch, over both views: the same image -> 1; the same pseudo label -> g_ij;
  different labels -> 0; a pair with an unlabelled member is left out. No n x n matrix over
  the training set is ever built.
- Loss: ``lambda_pair * soft_pair_loss + lambda_inv * NTXent(h_a, h_b) + lambda_q * quantisation``.
- Batches: half of each batch is partners from the anchors' clusters, so that a batch holds
  same-label pairs to grade.
- Ablation: hard 0/1 targets from the pseudo labels (no multi-part similarity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rayhash import dist
from rayhash.methods import losses
from rayhash.methods.base import FEATURE_MAPS, FEATURES, HashingMethod, MethodConfig, ShardInputs, ViewBatch
from rayhash.methods.pseudo_labels import UNLABELLED, cluster_features, distance_thresholds
from rayhash.methods.registry import register_method
from rayhash.methods.sampling import sample_partners


@dataclass(frozen=True)
class PSCHConfig(MethodConfig):
    name: str = "psch"
    ablation: bool = False  # hard 0/1 targets from the pseudo labels, no multi-part similarity
    clusters: int = 100  # k
    alpha: float = 1.0  # keep a label within mu_c + alpha * sigma_c of the centre
    pca_dims: int = 0  # PCA-whiten features before k-means; 0 = off
    kmeans_iters: int = 20  # Lloyd iterations per E-step
    groups: int = 8  # G channel groups of the feature map, one attention map each
    target_floor: float = 0.5  # the lowest target of a same-label pair; its graded similarity fills the rest
    lambda_pair: float = 1.0  # weight of the soft pairwise term
    lambda_inv: float = 1.0  # weight of NT-Xent between the two views
    lambda_q: float = 0.01  # quantisation: keeps codes near the corners they binarise to
    tau: float = 0.3  # temperature of NT-Xent
    warmup_rounds: int = 1  # rounds of plain invariance before the first clustering
    partner_sampling: bool = True  # half of each batch: a partner from the anchor's cluster
    seed: int = 0  # seeds each round's k-means (plus the round index)


def part_descriptors(feature_maps: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, G, C/G) part descriptors of (B, C, H, W) maps: per channel group g, the group's spatial
    attention ``A_g = softmax over h, w of sum_c F_g`` pools ``p_g = sum_hw A_g * F_g``."""
    b, c, h, w = feature_maps.shape
    if c % groups:
        raise ValueError(f"the feature map's {c} channels do not split into {groups} groups; pick a divisor of {c}")
    f = feature_maps.reshape(b, groups, c // groups, h * w)
    attention = torch.softmax(f.sum(dim=2), dim=-1)  # (B, G, HW)
    return (f * attention[:, :, None, :]).sum(dim=-1)


def multipart_similarity(parts: torch.Tensor) -> torch.Tensor:
    """(B, B) soft similarity ``mean_g cos(p_g(i), p_g(j))`` clamped to [0, 1] (post-ReLU maps give
    non-negative cosines already; the clamp only matters for maps that can go negative)."""
    z = F.normalize(parts, dim=-1).transpose(0, 1)  # (G, B, D)
    return (z @ z.transpose(1, 2)).mean(dim=0).clamp(0.0, 1.0)


def graded_similarity(similarity: torch.Tensor, labels: torch.Tensor, floor: float) -> torch.Tensor:
    """``floor + (1 - floor) * clamp((s - b) / (1 - b), 0, 1)``, ``b`` the mean similarity of the
    batch's pairs with different pseudo labels (of all pairs of different rows when it has none)."""
    labelled = labels != UNLABELLED
    different = labelled[:, None] & labelled[None, :] & (labels[:, None] != labels[None, :])
    if not bool(different.any()):
        different = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    base = similarity[different].mean() if bool(different.any()) else similarity.new_tensor(0.0)
    relative = ((similarity - base) / (1.0 - base).clamp_min(1e-6)).clamp(0.0, 1.0)
    return floor + (1.0 - floor) * relative


def pair_targets(
    labels: torch.Tensor, items: torch.Tensor, similarity: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and the mask of pairs that count, for rows with pseudo ``labels`` and shard ``items``.

    The same item -> 1; the same label -> ``similarity`` (1 where it is None: the ablation's hard
    targets); different labels -> 0; a pair of different items with an unlabelled member is left out.
    """
    labelled = labels != UNLABELLED
    same_item = items[:, None] == items[None, :]
    same_label = (labels[:, None] == labels[None, :]) & labelled[:, None]
    soft = torch.ones_like(same_item, dtype=torch.float32) if similarity is None else similarity.float()
    targets = torch.where(same_item, 1.0, torch.where(same_label, soft, 0.0))
    mask = same_item | (labelled[:, None] & labelled[None, :])
    return targets, mask


class PSCH(HashingMethod):
    name = "psch"
    code_kind = "binary"
    e_step_inputs = (FEATURES,)
    loss_inputs = (FEATURE_MAPS,)

    def __init__(self, cfg: PSCHConfig, nbits: int, feature_dim: int = 0):
        super().__init__(cfg, nbits, feature_dim)
        self.labels: torch.Tensor | None = None  # this shard's pseudo labels, UNLABELLED where dropped
        self.assign: torch.Tensor | None = None  # this shard's clusters before the threshold
        self.centers: torch.Tensor | None = None
        self.thresholds: torch.Tensor | None = None

    def e_step(self, inputs: ShardInputs, round_index: int) -> dict[str, float]:
        cfg = self.cfg
        if round_index < cfg.warmup_rounds:
            return {}
        pl = cluster_features(
            inputs.features, cfg.clusters, pca_dims=cfg.pca_dims, n_iter=cfg.kmeans_iters, seed=cfg.seed + round_index
        )
        self.labels, self.thresholds = distance_thresholds(pl, cfg.alpha)
        self.assign, self.centers = pl.assign, pl.centers.float()
        kept = dist.all_reduce_sum(torch.tensor([float((self.labels != UNLABELLED).sum()), float(len(self.labels))]))
        return {"kmeans_inertia": pl.inertia, "labelled_share": float(kept[0] / kept[1])}

    def loss(self, batch: ViewBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, h_a, h_b = self.cfg, batch.h_a, batch.h_b
        l_inv = losses.ntxent_loss(h_a, h_b, cfg.tau)
        h = torch.cat([h_a, h_b])
        l_q = losses.quantization_loss(h)
        if self.labels is None:
            total = cfg.lambda_inv * l_inv + cfg.lambda_q * l_q
            return total, {"inv": l_inv.item(), "quant": l_q.item()}
        index = batch.index.to(self.labels.device)
        labels = self.labels[index].to(h.device).repeat(2)
        items = batch.index.to(h.device).repeat(2)
        similarity = None
        if not cfg.ablation:
            maps = torch.cat([batch.feature_maps_a, batch.feature_maps_b]).detach()
            similarity = graded_similarity(
                multipart_similarity(part_descriptors(maps, cfg.groups)), labels, cfg.target_floor
            )
        targets, mask = pair_targets(labels, items, similarity)
        l_pair = losses.soft_pair_loss(h, targets, mask)
        total = cfg.lambda_pair * l_pair + cfg.lambda_inv * l_inv + cfg.lambda_q * l_q
        return total, {"pair": l_pair.item(), "inv": l_inv.item(), "quant": l_q.item()}

    def partners(self, generator: torch.Generator) -> torch.Tensor | None:
        if not self.cfg.partner_sampling or self.assign is None:
            return None
        return sample_partners(self.assign.cpu(), generator)

    def state_dict(self) -> dict:
        if self.centers is None:
            return {}
        return {"centers": self.centers.cpu(), "thresholds": self.thresholds.float().cpu()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.centers, self.thresholds = state["centers"], state["thresholds"]


register_method("psch", PSCHConfig, PSCH)
