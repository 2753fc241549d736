"""Hashing losses as pure functions of tensors (DSCH's three terms; see shared/methods/DSCH.md).

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
