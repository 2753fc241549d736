"""DeepQuan (Chen, Cheung and Wang, "Learning Deep Unsupervised Binary Codes for Image Retrieval",
IJCAI 2018), reconstructed.

The paper states: a deep autoencoder whose layers are all fully connected, so that the encoder
learns compact representations and the decoder preserves the data manifold; codes from product
quantisation, its quantisation error minimised instead of a quadratic pull of continuous codes to
{-1, 1}; a weighted triplet loss against trivial solutions and poor generalisation; training that
alternates between the network, the codebooks and the codes. No code was published. Everything
below those statements is rayhash's reconstruction (docs/methods.md):

- Encoder: the trainer's model (backbone and head, ``z = tanh(head(features))``). The ``mlp``
  backbone on 28 px pixels keeps it fully connected. z has M * d_sub dims, M = bits / 8 sub-spaces
  of ``d_sub`` each, whatever the code length: :meth:`DeepQuan.embedding_dim` says so and the
  trainer builds the head that wide (``model.embed_dim``, recorded in the checkpoint's config).
  tanh bounds z, so the triplet margin cannot be met by scaling the embedding up.
- Decoder g (the method's ``module``): fully connected, z -> x_hat, reconstructing the view as the
  model got it (augmented, normalised, flattened).
- PQ: M sub-spaces, K = ``codewords`` (256: a code is M bytes) centroids each. b(z): the nearest
  codeword per sub-space; C(b): their concatenation.
- E-step (cluster-wide): with the network fixed, k-means per sub-space over every rank's z, seeded,
  warm-started from the last round's codebooks; the codebooks are the method's state.
- Loss: ``||x - g(z)||^2 / D + alpha * weighted triplet + beta * ||z - C(b(z))||^2`` over both
  views, the codebooks fixed for the epoch (the quantisation term starts with the first E-step).
- Triplets: each view is an anchor; its positive is the other augmented view of the same image
  (the trainer already hands both, and pixel-space neighbours of garments mostly share a silhouette
  rather than a class); its negative is another image of the batch drawn at random. The weight is
  ``w_apn = s(x_a, x_p) (1 - s(x_a, x_n))`` with ``s = exp(-||x - y||^2 / (D sigma^2))`` in input
  space: a heavily cropped positive or a negative that is nearly the anchor counts less.
- Ablations: ``ablation`` drops the triplet term; ``unweighted_triplets`` sets every ``w_apn`` to 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from rayhash import dist
from rayhash.clustering.kmeans import kmeans
from rayhash.config import ConfigError
from rayhash.methods import losses
from rayhash.methods.base import CODES, INPUTS, HashingMethod, MethodConfig, ShardInputs, ViewBatch
from rayhash.methods.registry import register_method

logger = logging.getLogger(__name__)

BITS_PER_SUBSPACE = 8  # a sub-space's code is one byte


@dataclass(frozen=True)
class DeepQuanConfig(MethodConfig):
    name: str = "deepquan"
    ablation: bool = False  # no triplet term: reconstruction and quantisation only
    unweighted_triplets: bool = False  # every triplet weight 1 (the second ablation)
    d_sub: int = 8  # dims per sub-space; z has (bits / 8) * d_sub
    codewords: int = 256  # K per sub-space; at most 256 so that a sub-space's code is one byte
    alpha: float = 1.0  # weight of the triplet term
    beta: float = 0.1  # weight of the quantisation term
    margin: float = 1.0  # triplet margin, in squared distance of z
    sigma: float = 1.0  # input-space affinity scale, per input dimension
    decoder_hidden: int = 1024  # width of the decoder's two hidden layers; 0: one linear layer
    kmeans_iters: int = 20  # Lloyd iterations per sub-space per E-step
    warmup_rounds: int = 1  # rounds before the first codebook fit (no quantisation term yet)
    seed: int = 0  # seeds the k-means++ of a sub-space that has no codebook to start from

    def __post_init__(self) -> None:
        if not 1 <= self.codewords <= 256:
            raise ConfigError(
                f"method.codewords must be between 1 and 256 (one byte per sub-space), got {self.codewords}"
            )
        if self.d_sub < 1:
            raise ConfigError(f"method.d_sub must be >= 1, got {self.d_sub}")
        if self.sigma <= 0:
            raise ConfigError(f"method.sigma must be > 0, got {self.sigma}")


def decoder(embed_dim: int, input_dim: int, hidden: int) -> nn.Sequential:
    """g: z -> x_hat, fully connected; linear output, since inputs are normalised to any range."""
    if not hidden:
        return nn.Sequential(nn.Linear(embed_dim, input_dim))
    return nn.Sequential(
        nn.Linear(embed_dim, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, input_dim),
    )


def random_negatives(n: int, device: torch.device) -> torch.Tensor:
    """For each of ``n`` batch items, another item drawn uniformly (never itself).

    Drawn from torch's global generator, which checkpoints save and restore.
    """
    offset = torch.randint(1, n, (n,))
    return ((torch.arange(n) + offset) % n).to(device)


class DeepQuan(HashingMethod):
    name = "deepquan"
    code_kind = "pq"
    e_step_inputs = (CODES,)
    loss_inputs = (INPUTS,)

    @classmethod
    def embedding_dim(cls, cfg: DeepQuanConfig, nbits: int) -> int:
        return subspaces(nbits) * cfg.d_sub

    def __init__(self, cfg: DeepQuanConfig, nbits: int, feature_dim: int = 0, input_dim: int = 0):
        super().__init__(cfg, nbits, feature_dim)
        if input_dim < 1:
            raise ValueError(f"DeepQuan reconstructs its input: input_dim must be >= 1, got {input_dim}")
        self.subspaces = subspaces(nbits)
        self.input_dim = input_dim
        self.module = decoder(self.embedding_dim(cfg, nbits), input_dim, cfg.decoder_hidden)
        self.codebooks: torch.Tensor | None = None  # (M, K, d_sub) float32, identical on every rank
        self.codes: torch.Tensor | None = None  # (n_local, M) int64: this shard's codes at the last E-step

    def e_step(self, inputs: ShardInputs, round_index: int) -> dict[str, float]:
        cfg = self.cfg
        if round_index < cfg.warmup_rounds:
            return {}
        z = inputs.codes.detach()
        n_total = int(dist.all_reduce_sum(z.new_tensor([len(z)], dtype=torch.float64)).item())
        k = cfg.codewords
        if k > n_total:
            logger.warning(
                "only %d training items: using %d codewords per sub-space instead of %d", n_total, n_total, k
            )
            k = n_total
        warm = self.codebooks is not None and tuple(self.codebooks.shape) == (self.subspaces, k, cfg.d_sub)
        books, codes, distortion = [], [], 0.0
        for m in range(self.subspaces):
            part = z[:, m * cfg.d_sub : (m + 1) * cfg.d_sub].float()
            init = self.codebooks[m].to(part) if warm else None
            result = kmeans(part, k, n_iter=cfg.kmeans_iters, seed=cfg.seed + m, init=init)
            books.append(result.centers)
            codes.append(result.labels)
            distortion += result.inertia
        self.codebooks = torch.stack(books).float()
        self.codes = torch.stack(codes, dim=1)
        counts = torch.stack([torch.bincount(c, minlength=k) for c in codes]).double()
        used = (dist.all_reduce_sum(counts) > 0).sum(dim=1).double()
        return {
            "pq_distortion": distortion / n_total,  # mean ||z - C(b(z))||^2 over every training item
            "codewords_used_min": float(used.min()),
            "codewords_used_mean": float(used.mean()),
        }

    def loss(self, batch: ViewBatch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        z = torch.cat([batch.h_a, batch.h_b])
        x_a, x_b = batch.inputs_a.flatten(1), batch.inputs_b.flatten(1)
        x = torch.cat([x_a, x_b])
        l_rec = losses.reconstruction_loss(x, self.module(z))
        total, parts = l_rec, {"rec": l_rec.item()}
        if not cfg.ablation:
            n = len(batch.h_a)
            neg = random_negatives(n, z.device)
            positive = torch.cat([batch.h_b, batch.h_a])
            negative = torch.cat([batch.h_b[neg], batch.h_a[neg]])
            if cfg.unweighted_triplets:
                w = z.new_ones(2 * n)
            else:
                w = losses.triplet_weights(x, torch.cat([x_b, x_a]), torch.cat([x_b[neg], x_a[neg]]), cfg.sigma)
            l_tri = losses.weighted_triplet_loss(z, positive, negative, w.detach(), cfg.margin)
            total = total + cfg.alpha * l_tri
            parts["triplet"] = l_tri.item()
        if self.codebooks is not None:
            l_q = losses.pq_quantization_loss(z, self.codebooks.to(z.device))
            total = total + cfg.beta * l_q
            parts["quant"] = l_q.item()
        return total, parts

    def state_dict(self) -> dict:
        # The codes are per shard and reassigned by the next E-step; the codebooks are what the
        # model was last trained against, and what a PQ code of this model refers to.
        return {} if self.codebooks is None else {"codebooks": self.codebooks.detach().cpu().float()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.codebooks = state["codebooks"].float()


def subspaces(nbits: int) -> int:
    """M: one sub-space per byte of the code (16 / 32 / 64 bits -> 2 / 4 / 8)."""
    if nbits % BITS_PER_SUBSPACE:
        raise ValueError(
            f"a PQ code has {BITS_PER_SUBSPACE} bits per sub-space: bits must be a multiple of 8, got {nbits}"
        )
    return nbits // BITS_PER_SUBSPACE


register_method("deepquan", DeepQuanConfig, DeepQuan)
