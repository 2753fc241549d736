"""DSCH: Deep Semantic Components Hashing (Lin et al., AAAI 2022), as shared/methods/DSCH.md reads it.

E-step (cluster-wide): a GMM over the codes gives fine components (responsibilities P1, binarised
means mu1, weights pi1); k-means over the fine means gives coarse components (P2 = P1 P21,
mu2, uniform pi2). M-step loss: ``L_ic + lambda * (L_fine + L_coarse)``, where ``L_ic``'s positives
are weighted by the co-occurrence similarity ``S = P1 P1^T``. The ablation (S = I, lambda = 0)
is plain instance-contrastive hashing: the paper's own control.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from rayhash import dist
from rayhash.clustering import gmm
from rayhash.methods import losses
from rayhash.methods.base import HashingMethod, MethodConfig, ShardInputs, ViewBatch
from rayhash.methods.registry import register_method
from rayhash.methods.sampling import sample_partners

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DSCHConfig(MethodConfig):
    name: str = "dsch"
    ablation: bool = False  # S = I and lambda = 0: the paper's "baseline"
    fine_components: int = 1000  # m1
    coarse_components: int = 100  # m2
    covariance_type: Literal["full", "diag"] = "diag"  # "full" is the paper's; "diag" scales to millions
    gmm_max_iter: int = 100  # EM iterations of the fine GMM per E-step
    gmm_tol: float = 1e-3  # stop EM once the lower bound gains less than this
    reg_covar: float = 1e-6  # added to the covariances' diagonal, as scikit-learn does
    normalize_responsibilities: bool = True  # rows of P1 L2-normalised, as the CIFAR-10 script does
    lam: float = 0.1  # lambda
    tau: float = 1.0  # temperature of the component terms ("tau for Eq. 23")
    tau_ic: float = 0.3  # temperature of L_ic
    quantization: float = 0.0  # rayhash addition, off by default: weight of (|h| - 1)^2
    # rayhash addition: rounds of plain instance contrast before the first E-step. The codes of a
    # randomly initialised network carry no semantics for the GMM to find.
    warmup_rounds: int = 1
    # rayhash addition: half of each batch is partners drawn from the anchors' fine components.
    # With m1 components and shuffled batches of B, an anchor meets a co-member in its batch with
    # probability about B/m1, so S = P1 P1^T would add almost no positives to L_ic.
    partner_sampling: bool = True
    seed: int = 0  # seeds each round's GMM and coarse k-means (plus the round index)


class DSCH(HashingMethod):
    name = "dsch"
    code_kind = "binary"
    e_step_inputs = ("codes",)

    def __init__(self, cfg: DSCHConfig, nbits: int, feature_dim: int = 0):
        super().__init__(cfg, nbits, feature_dim)
        self.fine_resp: torch.Tensor | None = None  # P1 of this worker's shard, (n_local, m1)
        self.fine_centers: torch.Tensor | None = None  # mu1 = sign(GMM means), (m1, K)
        self.fine_log_prior: torch.Tensor | None = None  # log pi1
        self.coarse_assign: torch.Tensor | None = None  # fine component -> coarse component, (m1,)
        self.coarse_centers: torch.Tensor | None = None  # mu2, (m2, K)
        self.gmm_state: gmm.GMMState | None = None

    def e_step(self, inputs: ShardInputs, round_index: int) -> dict[str, float]:
        cfg, codes = self.cfg, inputs.codes
        if cfg.ablation or round_index < cfg.warmup_rounds:
            return {}
        n_total = int(dist.all_reduce_sum(torch.tensor([len(codes)], dtype=torch.float64)).item())
        m1 = min(cfg.fine_components, max(2, n_total // 2))
        if m1 < cfg.fine_components:
            logger.warning(
                "only %d training codes: using %d fine components instead of %d", n_total, m1, cfg.fine_components
            )
        x = codes.detach().float()
        state = gmm.fit_gmm(
            x,
            m1,
            covariance_type=cfg.covariance_type,
            max_iter=cfg.gmm_max_iter,
            tol=cfg.gmm_tol,
            reg_covar=cfg.reg_covar,
            seed=cfg.seed + round_index,
        )
        self.gmm_state = state
        resp = gmm.responsibilities(x, state).float()
        self.fine_resp = F.normalize(resp, dim=1) if cfg.normalize_responsibilities else resp
        means = state.means.float()
        self.fine_centers = torch.where(means > 0, 1.0, -1.0)
        self.fine_log_prior = state.weights.float().clamp_min(1e-12).log()
        self._fit_coarse(means.cpu().numpy(), seed=cfg.seed + round_index)
        used = int((self.fine_resp.argmax(dim=1).bincount(minlength=m1) > 0).sum())
        return {
            "gmm_lower_bound": float(state.lower_bound),
            "gmm_iters": float(state.n_iter),
            "fine_components": float(m1),
            "fine_used_local": float(used),
        }

    def _fit_coarse(self, fine_means: np.ndarray, seed: int) -> None:
        from sklearn.cluster import KMeans

        # Every rank holds the same fine means, so a seeded local k-means gives the same coarse
        # components everywhere without a collective.
        m2 = min(self.cfg.coarse_components, len(fine_means))
        km = KMeans(n_clusters=m2, n_init=1, random_state=seed).fit(fine_means.astype(np.float64))
        device = self.fine_resp.device
        self.coarse_assign = torch.as_tensor(km.labels_, dtype=torch.long, device=device)
        self.coarse_centers = torch.as_tensor(
            np.where(km.cluster_centers_ > 0, 1.0, -1.0), dtype=torch.float32, device=device
        )

    def loss(self, batch: ViewBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, h_a, h_b, index = self.cfg, batch.h_a, batch.h_b, batch.index
        if cfg.ablation or self.fine_resp is None:
            weights = torch.eye(len(h_a), device=h_a.device, dtype=h_a.dtype)
            l_ic = losses.instance_correlation_loss(h_a, h_b, weights, cfg.tau_ic)
            total, parts = l_ic, {"ic": l_ic.item()}
        else:
            p1 = self.fine_resp[index.to(self.fine_resp.device)].to(h_a.device)
            p2 = torch.zeros(len(p1), len(self.coarse_centers), device=h_a.device).index_add_(
                1, self.coarse_assign.to(h_a.device), p1
            )
            l_ic = losses.instance_correlation_loss(h_a, h_b, losses.cooccurrence_weights(p1), cfg.tau_ic)
            mu1, lp1 = self.fine_centers.to(h_a.device), self.fine_log_prior.to(h_a.device)
            mu2 = self.coarse_centers.to(h_a.device)
            lp2 = torch.full((len(mu2),), -math.log(len(mu2)), device=h_a.device)
            l_fine = 0.5 * sum(losses.component_loss(h, mu1, lp1, p1, cfg.tau) for h in (h_a, h_b))
            l_coarse = 0.5 * sum(losses.component_loss(h, mu2, lp2, p2, cfg.tau) for h in (h_a, h_b))
            total = l_ic + cfg.lam * (l_fine + l_coarse)
            parts = {"ic": l_ic.item(), "fine": l_fine.item(), "coarse": l_coarse.item()}
        if cfg.quantization:
            l_q = 0.5 * (losses.quantization_loss(h_a) + losses.quantization_loss(h_b))
            total = total + cfg.quantization * l_q
            parts["quant"] = l_q.item()
        return total, parts

    def partners(self, generator: torch.Generator) -> torch.Tensor | None:
        if not self.cfg.partner_sampling or self.fine_resp is None or self.cfg.ablation:
            return None
        return sample_partners(self.fine_resp.argmax(dim=1).cpu(), generator)

    def state_dict(self) -> dict:
        if self.gmm_state is None:
            return {}
        return {
            "gmm": gmm.state_to_dict(self.gmm_state),
            "coarse_assign": self.coarse_assign.cpu(),
            "coarse_centers": self.coarse_centers.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        # Responsibilities are per-shard and recomputed by the next round's E-step; the global
        # components are kept so a checkpoint records what the model was trained against.
        if state:
            self.gmm_state = gmm.state_from_dict(state["gmm"])
            self.coarse_assign, self.coarse_centers = state["coarse_assign"], state["coarse_centers"]


register_method("dsch", DSCHConfig, DSCH)
