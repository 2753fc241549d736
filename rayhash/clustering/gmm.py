"""Cluster-wide Gaussian mixture EM with the semantics of scikit-learn's ``GaussianMixture``.

Every rank holds its own rows. Each EM iteration is one pass over the local rows that
computes responsibilities and accumulates the sufficient statistics (counts, sums, second
moments) in float64; one all-reduce sums them and every rank applies the same M-step, so an
N-rank fit equals a one-process fit on the rows concatenated in rank order.

Speed: a Gaussian's log-density is linear in the features [x_i x_j for i <= j | x | 1], and
the sufficient statistics are their responsibility-weighted sums, so the E-step and the M-step
are one matrix product each per block: with full covariances half the work of scikit-learn's
per-component products, in two large products instead of 2m small ones. Data are shifted by
their global mean first so that second moments lose no precision to a large offset.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch

from rayhash import dist
from rayhash.clustering.kmeans import assign, block_rows, check_points, kmeans, kmeans_plusplus

logger = logging.getLogger(__name__)

COVARIANCE_TYPES = ("full", "diag")
INITS = ("kmeans", "kmeans++")
_EPS = torch.finfo(torch.float64).eps
_LOG_2PI = math.log(2 * math.pi)
# Feature blocks up to this many float64 elements (512 MB) are computed once per fit.
_CACHE_ELEMENTS = 2**26


# eq=False: tensors have no single truth value to compare by.
@dataclasses.dataclass(frozen=True, eq=False)
class GMMState:
    means: torch.Tensor  # (m, d) float64
    covariances: torch.Tensor  # (m, d, d) for "full", (m, d) for "diag"; float64
    weights: torch.Tensor  # (m,) float64, sums to 1
    covariance_type: str
    n_iter: int  # EM iterations run
    converged: bool
    lower_bound: float  # mean log-likelihood over all ranks' rows at the last E-step


def _n_second_order(d: int, covariance_type: str) -> int:
    return d if covariance_type == "diag" else d * (d + 1) // 2


def _features(x: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """[second-order terms | x | 1] per row: x_j^2 ("diag") or x_i x_j for i <= j ("full")."""
    if covariance_type == "diag":
        second = [x * x]
    else:
        # Row by row of the upper triangle, in torch.triu_indices order: far faster than gathers.
        second = [x[:, i : i + 1] * x[:, i:] for i in range(x.shape[1])]
    return torch.cat([*second, x, x.new_ones((len(x), 1))], 1)


class _FeatureBlocks:
    """(start, features) of the rows block by block; kept in memory when small, since EM
    reads them every iteration."""

    def __init__(self, xs: torch.Tensor, m: int, covariance_type: str, chunk_rows: int | None):
        self.xs, self.covariance_type = xs, covariance_type
        self.n_features = _n_second_order(xs.shape[1], covariance_type) + xs.shape[1] + 1
        self.step = block_rows(m + self.n_features, chunk_rows, xs.device)
        self.cache = list(self._compute()) if len(xs) * self.n_features <= _CACHE_ELEMENTS else None

    def _compute(self) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(self.xs), self.step):
            yield start, _features(self.xs[start : start + self.step], self.covariance_type)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        return iter(self.cache) if self.cache is not None else self._compute()


def _not_positive_definite(bad: torch.Tensor) -> ValueError:
    return ValueError(
        f"GMM components {bad.flatten().tolist()[:10]} have a covariance that is not positive definite "
        "(too few or identical points); increase reg_covar or use fewer components"
    )


def _log_density_weights(
    means: torch.Tensor, covariances: torch.Tensor, weights: torch.Tensor, covariance_type: str
) -> torch.Tensor:
    """W (n_features, m) with log(w_k N(x | k)) = (_features(x) @ W)[k]."""
    m, d = means.shape
    if covariance_type == "full":
        chol, info = torch.linalg.cholesky_ex(covariances)
        if (info > 0).any():
            raise _not_positive_definite((info > 0).nonzero())
        eye = torch.eye(d, dtype=means.dtype, device=means.device).expand(m, d, d)
        chol_inv = torch.linalg.solve_triangular(chol, eye, upper=False)
        precision = chol_inv.mT @ chol_inv
        i, j = torch.triu_indices(d, d, device=means.device)
        # Off-diagonal features x_i x_j (i < j) stand for both (i, j) and (j, i).
        quad = -0.5 * precision[:, i, j] * torch.where(i == j, 1.0, 2.0).to(means)
        lin = (precision @ means[:, :, None])[:, :, 0]
        mahalanobis_mean = ((chol_inv @ means[:, :, None])[:, :, 0] ** 2).sum(1)
        half_logdet_precision = -torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
    else:
        if (covariances <= 0).any():
            raise _not_positive_definite((covariances <= 0).any(1).nonzero())
        precision = 1.0 / covariances
        quad = -0.5 * precision
        lin = means * precision
        mahalanobis_mean = (means * means * precision).sum(1)
        half_logdet_precision = -0.5 * torch.log(covariances).sum(1)
    const = -0.5 * (d * _LOG_2PI + mahalanobis_mean) + half_logdet_precision + torch.log(weights)
    return torch.cat([quad, lin, const[:, None]], 1).T.contiguous()


def _posterior(log_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of softmax(log_prob) and their log-sum-exp, with one exp pass (in place)."""
    top = log_prob.max(1, keepdim=True).values
    # Flooring at e^-200 (nil beside the row's top term 1) keeps subnormal numbers, which take
    # a slow path in exp() and in the matrix products, out of the responsibilities.
    prob = log_prob.sub_(top).clamp_min_(-200.0).exp_()
    total = prob.sum(1, keepdim=True)
    return prob.div_(total), (total.log_() + top)[:, 0]


def _accumulate(
    blocks: _FeatureBlocks, m: int, *, log_density: torch.Tensor | None = None, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """One pass over the local rows, summed over ranks: per component the responsibility-
    weighted sums of the features [second-order | x | 1], flattened, then the log-likelihood
    sum. Responsibilities are posteriors under ``log_density`` or the one-hot ``labels``."""
    moments = blocks.xs.new_zeros((m, blocks.n_features))
    loglik = blocks.xs.new_zeros(1)
    for start, fb in blocks:
        if labels is not None:
            resp = torch.nn.functional.one_hot(labels[start : start + len(fb)], m).to(fb)
        else:
            resp, ll = _posterior(fb @ log_density)
            loglik += ll.sum()
        moments.addmm_(resp.T, fb)
    return dist.all_reduce_sum(torch.cat([moments.flatten(), loglik]))


def _m_step(stats: torch.Tensor, m: int, d: int, covariance_type: str, reg_covar: float) -> tuple[torch.Tensor, ...]:
    moments = stats[:-1].view(m, -1)
    counts = moments[:, -1] + 10 * _EPS  # sklearn's guard against empty components
    n_second = _n_second_order(d, covariance_type)
    second = moments[:, :n_second] / counts[:, None]
    means = moments[:, n_second:-1] / counts[:, None]
    if covariance_type == "full":
        i, j = torch.triu_indices(d, d, device=stats.device)
        moment = stats.new_zeros((m, d, d))
        moment[:, i, j] = second
        moment[:, j, i] = second
        covariances = moment - means[:, :, None] * means[:, None, :]
        covariances.diagonal(dim1=1, dim2=2).add_(reg_covar)
    else:
        covariances = second - means * means + reg_covar
    return counts / counts.sum(), means, covariances


@torch.no_grad()
def fit_gmm(
    x: torch.Tensor,
    n_components: int,
    *,
    covariance_type: str = "full",
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    seed: int = 0,
    init: str = "kmeans",
    chunk_rows: int | None = None,
) -> GMMState:
    """Fit a Gaussian mixture to the rows of every rank; ``x`` is this rank's (n_local, d) shard.

    As scikit-learn's ``GaussianMixture(n_init=1)``: initial responsibilities are the one-hot
    k-means labels (``init="kmeans"``, or the nearest k-means++ seed with ``"kmeans++"``,
    cheaper for many components), then EM until the mean log-likelihood changes by less than
    ``tol``. ``reg_covar`` is added to every covariance's diagonal. Every rank returns the same
    state, in float64 on ``x``'s device.
    """
    check_points(x)
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if max_iter < 1 or tol < 0 or reg_covar < 0:
        raise ValueError(f"need max_iter >= 1, tol >= 0, reg_covar >= 0; got {max_iter}, {tol}, {reg_covar}")
    m, d = n_components, x.shape[1]
    x64 = x.to(torch.float64)
    total = dist.all_reduce_sum(torch.cat([x64.sum(0), x64.new_tensor([len(x)])]))
    n_total = float(total[-1])
    if not 1 <= m <= n_total:
        raise ValueError(f"n_components must be between 1 and the number of points ({n_total:.0f}), got {m}")
    shift = total[:d] / n_total

    if init == "kmeans":
        labels = kmeans(x, m, n_iter=300, seed=seed, chunk_rows=chunk_rows).labels
    else:
        labels = assign(x, kmeans_plusplus(x, m, seed=seed), chunk_rows)[0]
    blocks = _FeatureBlocks(x64 - shift, m, covariance_type, chunk_rows)
    stats = _accumulate(blocks, m, labels=labels)
    weights, means, covariances = _m_step(stats, m, d, covariance_type, reg_covar)

    lower_bound, converged, n_iter = -math.inf, False, 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is returned after the loop)
        log_density = _log_density_weights(means, covariances, weights, covariance_type)
        stats = _accumulate(blocks, m, log_density=log_density)
        previous, lower_bound = lower_bound, float(stats[-1]) / n_total
        weights, means, covariances = _m_step(stats, m, d, covariance_type, reg_covar)
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    if not converged:
        logger.warning("GMM EM did not converge in max_iter=%d iterations (tol=%g); raise either", max_iter, tol)
    return GMMState(
        means=means + shift,
        covariances=covariances,
        weights=weights,
        covariance_type=covariance_type,
        n_iter=n_iter,
        converged=converged,
        lower_bound=lower_bound,
    )


def _check_state(x: torch.Tensor, state: GMMState) -> None:
    check_points(x)
    if state.means.shape[1] != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but the GMM was fitted on {state.means.shape[1]}")


def _log_prob_blocks(x: torch.Tensor, state: GMMState, chunk_rows: int | None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, weighted log-probs (rows, m) float64) block by block."""
    means = state.means.to(device=x.device, dtype=torch.float64)
    weights = state.weights.to(means)
    # The mixture's mean equals the data mean after EM: shift by it as the fit did.
    shift = weights @ means
    cov_type = state.covariance_type
    log_density = _log_density_weights(means - shift, state.covariances.to(means), weights, cov_type)
    step = block_rows(len(weights) + len(log_density), chunk_rows, x.device)
    for start in range(0, len(x), step):
        xb = x[start : start + step].to(torch.float64) - shift
        yield start, _features(xb, cov_type) @ log_density


@torch.no_grad()
def responsibilities(x: torch.Tensor, state: GMMState, *, chunk_rows: int | None = None) -> torch.Tensor:
    """Posterior probability of each component for each local row: (n_local, m), ``x``'s dtype."""
    _check_state(x, state)
    out = torch.empty((len(x), len(state.weights)), dtype=x.dtype, device=x.device)
    for start, log_prob in _log_prob_blocks(x, state, chunk_rows):
        out[start : start + len(log_prob)] = _posterior(log_prob)[0]
    return out


@torch.no_grad()
def score(x: torch.Tensor, state: GMMState, *, chunk_rows: int | None = None) -> float:
    """Mean log-likelihood per row over all ranks' rows."""
    _check_state(x, state)
    total = torch.zeros(2, dtype=torch.float64, device=x.device)
    for _, log_prob in _log_prob_blocks(x, state, chunk_rows):
        total[0] += _posterior(log_prob)[1].sum()
    total[1] = len(x)
    total = dist.all_reduce_sum(total)
    return float(total[0] / total[1])


def state_to_dict(state: GMMState) -> dict[str, Any]:
    """Tensors (on CPU) and plain values, for ``torch.save`` / ``torch.load(weights_only=True)``."""
    out = dataclasses.asdict(state)
    for key in ("means", "covariances", "weights"):
        out[key] = out[key].detach().cpu()
    return out


def state_from_dict(d: dict[str, Any]) -> GMMState:
    fields = {f.name for f in dataclasses.fields(GMMState)}
    if set(d) != fields:
        missing, unexpected = sorted(fields - set(d)), sorted(set(d) - fields)
        raise ValueError(f"not a GMM state dict: missing keys {missing}, unexpected keys {unexpected}")
    if d["covariance_type"] not in COVARIANCE_TYPES:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {d['covariance_type']!r}")
    m, dim = d["means"].shape
    cov_shape = (m, dim, dim) if d["covariance_type"] == "full" else (m, dim)
    if tuple(d["covariances"].shape) != cov_shape or tuple(d["weights"].shape) != (m,):
        raise ValueError(
            f"GMM state shapes disagree: means {tuple(d['means'].shape)}, covariances "
            f"{tuple(d['covariances'].shape)} (expected {cov_shape}), weights {tuple(d['weights'].shape)}"
        )
    return GMMState(**d)
