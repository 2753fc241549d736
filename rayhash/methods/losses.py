"""Hashing losses as pure functions of tensors: DSCH's three terms, DCUH's local-structure term,
PSCH's soft pairwise term and DeepQuan's reconstruction, weighted triplet and product-quantisation
terms (the method pages in docs/methods.md say which are reconstructions).

No state, no collectives: a method computes the weights and components, these score a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cooccurrence_weights(resp: torch.Tensor) -> torch.Tensor:
    """Positive weights ``w_ij = s_ij / sum_j s_ij`` from ``S = P P^T`` (DSCH Eq. 15) for one batch.

    ``resp`` is ``(n, m)`` component responsibilities of the batch's items. Identity
    responsibilities give ``w = I``: plain instance discrimination.
    """
    s = resp @ resp.T
    # An item always co-occurs with itself; the floor keeps a row with no mass from dividing by 0.
    s = s + torch.eye(len(s), device=s.device, dtype=s.dtype) * 1e-8
    return s / s.sum(dim=1, keepdim=True)


def instance_correlation_loss(h_a: torch.Tensor, h_b: torch.Tensor, weights: torch.Tensor, tau: float) -> torch.Tensor:
    """``L_ic``: contrast between two views, positives of anchor i weighted by ``weights[i]``.

    ``L = -mean_i sum_j w_ij log softmax_j(cos(h_i^a, h_j^b) / tau)``, symmetrised over the views.
    With ``weights = I`` this is NT-Xent over the other view's batch.
    """
    za, zb = F.normalize(h_a, dim=1), F.normalize(h_b, dim=1)
    logits = za @ zb.T / tau
    loss_ab = -(weights * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_ba = -(weights.T * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_ab + loss_ba)


def component_loss(
    h: torch.Tensor, centers: torch.Tensor, log_prior: torch.Tensor, resp: torch.Tensor, tau: float
) -> torch.Tensor:
    """Pull codes to the binarised centres of the components they belong to (``L_fine`` / ``L_coarse``).

    ``L = -mean_i sum_k P_ik log( pi_k exp(cos(h_i, mu_k)/tau) / sum_l pi_l exp(cos(h_i, mu_l)/tau) )``
    with ``centers`` = mu ``(m, K)``, ``log_prior`` = log pi ``(m,)``, ``resp`` = P ``(n, m)``.
    """
    cos = F.normalize(h, dim=1) @ F.normalize(centers, dim=1).T
    return -(resp * F.log_softmax(cos / tau + log_prior, dim=1)).sum(dim=1).mean()


def quantization_loss(h: torch.Tensor) -> torch.Tensor:
    """Mean squared gap between ``h`` and its signs: keeps codes near the corners they binarise to."""
    return (h.abs() - 1.0).pow(2).mean()


def ntxent_loss(h_a: torch.Tensor, h_b: torch.Tensor, tau: float) -> torch.Tensor:
    """Instance invariance: each view's positive is the other view of the same image (NT-Xent)."""
    return instance_correlation_loss(h_a, h_b, torch.eye(len(h_a), device=h_a.device, dtype=h_a.dtype), tau)


def supervised_contrastive_loss(h: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrast over pseudo labels (Khosla et al. 2020, ``L_out``): DCUH's local term.

    ``h``: (n, K) codes, ``labels``: (n,) ints. Anchor i's positives are the other rows of its
    label; its loss is the mean of ``-log softmax`` over them against every other row. Anchors
    with no positive are left out.
    """
    z = F.normalize(h, dim=1)
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = (z @ z.T / tau).masked_fill(self_mask, float("-inf"))
    log_prob = F.log_softmax(logits, dim=1).masked_fill(self_mask, 0.0)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positive.sum(dim=1)
    has = n_pos > 0
    per_anchor = -(log_prob * positive).sum(dim=1)[has] / n_pos[has]
    return per_anchor.mean() if bool(has.any()) else h.sum() * 0.0


def soft_pair_loss(h: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSCH's pairwise term: code similarity against soft targets over the pairs ``mask`` keeps.

    The similarity of codes i, j is ``h_i . h_j / K`` clamped to [0, 1]: a negative pair is met
    once its codes are orthogonal (half the bits differ), which is as far apart as many
    clusters in K bits can all be. The squared error is averaged over positive pairs
    (target > 0) and negative pairs separately and the two halves summed, so the many
    negatives of a batch do not drown its few positives. The diagonal is never counted.
    """
    sim = (h @ h.T / h.shape[1]).clamp(0.0, 1.0)
    keep = mask & ~torch.eye(len(h), dtype=torch.bool, device=h.device)
    err = (sim - targets) ** 2
    total = h.sum() * 0.0
    for part in (keep & (targets > 0), keep & (targets <= 0)):
        if bool(part.any()):
            total = total + err[part].mean()
    return total


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``mean_i ||x_i - x_hat_i||^2 / D`` for flattened inputs ``(n, D)``: per input dimension, so its
    scale does not grow with the image size."""
    return (x - x_hat).pow(2).mean()


def input_affinity(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """``exp(-||x_i - y_i||^2 / (D sigma^2))`` row by row for flattened inputs ``(n, D)``."""
    return torch.exp(-(x - y).pow(2).mean(dim=1) / sigma**2)


def triplet_weights(x_a: torch.Tensor, x_p: torch.Tensor, x_n: torch.Tensor, sigma: float) -> torch.Tensor:
    """``w_apn = s(x_a, x_p) (1 - s(x_a, x_n))`` with ``s`` the input affinity: a triplet counts as
    much as its positive is close to the anchor in input space and its negative far from it."""
    return input_affinity(x_a, x_p, sigma) * (1.0 - input_affinity(x_a, x_n, sigma))


def weighted_triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, weights: torch.Tensor, margin: float
) -> torch.Tensor:
    """``sum_i w_i max(0, m + ||a_i - p_i||^2 - ||a_i - n_i||^2) / sum_i w_i``.

    Normalised by the weights' sum so that weighting changes which triplets count, not the term's
    scale: with all weights equal it is the plain mean triplet loss.
    """
    d_ap = (anchor - positive).pow(2).sum(dim=1)
    d_an = (anchor - negative).pow(2).sum(dim=1)
    hinge = (margin + d_ap - d_an).clamp_min(0.0)
    return (weights * hinge).sum() / weights.sum().clamp_min(1e-12)


@torch.no_grad()
def nearest_codewords(z: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """PQ codes ``(n, M)``: the nearest of each sub-space's K codewords to that slice of ``z``
    ``(n, M * d_sub)``; ``codebooks`` is ``(M, K, d_sub)``."""
    m, _, d_sub = codebooks.shape
    parts = z.reshape(len(z), m, d_sub).transpose(0, 1).to(codebooks.dtype)  # (M, n, d_sub)
    # ||z||^2 is the same for every codeword of a sub-space: it cannot change the argmin.
    d2 = codebooks.pow(2).sum(-1)[:, None, :] - 2.0 * torch.bmm(parts, codebooks.transpose(1, 2))
    return d2.argmin(dim=-1).T


def pq_reconstruct(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """``C(b)``: each sub-space's codeword, concatenated, ``(n, M * d_sub)``."""
    m = codebooks.shape[0]
    return codebooks[torch.arange(m, device=codes.device), codes].flatten(1)


def pq_quantization_loss(z: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """``mean_i ||z_i - C(b(z_i))||^2``: the PQ distortion of ``z`` under fixed codebooks.

    The codes are chosen without gradient and the codebooks are constants: the gradient moves ``z``
    towards its nearest codewords.
    """
    codebooks = codebooks.to(z.dtype)
    return (z - pq_reconstruct(nearest_codewords(z, codebooks), codebooks)).pow(2).sum(dim=1).mean()
