"""What a hashing method adds to the shared trainer, and what the trainer hands it.

The trainer owns the model, data, optimiser, checkpoints and Ray; it does not know which method
it runs. A method is registered by name (:func:`rayhash.methods.register_method`) with its config
dataclass, a subclass of :class:`MethodConfig` (``method.name`` in a config picks both), and
brings:

- ``e_step_inputs``: what its E-step needs from every image of this worker's training shard,
  any of ``"codes"`` (continuous codes h), ``"features"`` (the backbone's pooled vector) and
  ``"feature_maps"`` (the backbone's last spatial map, ``(n, C, H, W)``). The trainer computes
  exactly these once per round (eval mode, no augmentation, shard order) as a :class:`ShardInputs`.
- ``e_step(inputs, round_index)``: called at the start of every round. It updates the method's
  state cluster-wide through :mod:`rayhash.dist`, so every rank ends with the same components.
- ``loss_inputs``: what its loss needs of each view beside h (``"features"``, ``"feature_maps"``,
  ``"inputs"``: the view itself as the model got it, for a method that reconstructs its input).
- ``loss(batch)``: the loss of a :class:`ViewBatch` of two augmented views, given that state;
  ``batch.index`` holds the items' positions in this worker's shard.
- ``module``: its own trainable ``nn.Module`` (a classifier, attention, codebooks), or None. The
  trainer moves it to the device, hands its parameters to the optimiser beside the model's, runs
  ``loss`` inside the module DDP wraps (so its gradients are averaged across workers like the
  model's), checkpoints its ``state_dict`` and restores it on resume. Re-initialise it in place
  (``reset_parameters``), never by assigning a new module: the optimiser holds these parameters.
- ``partners(generator)`` / ``sample_order(n, generator)``: optional batch sampling, e.g. pairs from
  one component, or an order uniform over clusters.
- ``state_dict()`` / ``load_state_dict()``: its plain (rank-independent) state for the checkpoint.
- ``code_kind``: the kind of code a trained model gives (``"binary"``: sign of h; ``"pq"``: the
  nearest codeword per sub-space of h, under codebooks the method keeps in its state).
- ``embedding_dim(cfg, nbits)``: the width of h the method trains; ``nbits`` unless it says otherwise
  (a PQ method's M * d_sub). The trainer builds the model's head with it (``model.embed_dim``).
- A method that declares ``"inputs"`` is built with ``input_dim``, the flattened width of a model
  input (channels * size * size), for a module that outputs one.

A method needs a backbone that gives what it declares: one without a feature map (``mlp``) is
refused before training when ``"feature_maps"`` is declared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

CODES, FEATURES, FEATURE_MAPS, INPUTS = "codes", "features", "feature_maps", "inputs"
SHARD_INPUTS = (CODES, FEATURES, FEATURE_MAPS)
VIEW_INPUTS = (FEATURES, FEATURE_MAPS, INPUTS)  # h is always there
CODE_KINDS = ("binary", "pq")


@dataclass(frozen=True)
class MethodConfig:
    """The ``method`` section's keys every method has; each method's config subclasses it."""

    name: str = "dsch"  # a registered method: rayhash.methods.list_methods()
    ablation: bool = False  # the method's own control, reported beside it

    @classmethod
    def config_variants(cls) -> tuple[str, Mapping[str, type]]:
        """For :func:`rayhash.config.from_dict`: ``name`` picks the registered method's dataclass."""
        from rayhash.methods.registry import config_classes

        return "name", config_classes()


@dataclass(frozen=True)
class ShardInputs:
    """What the E-step gets for every image of this worker's shard, in shard order; what the
    method did not declare is None."""

    codes: torch.Tensor | None = None  # (n, embed_dim): h, whose width is bits for a binary method
    features: torch.Tensor | None = None  # (n, feature_dim)
    feature_maps: torch.Tensor | None = None  # (n, C, H, W)

    def __len__(self) -> int:
        return len(next(t for t in (self.codes, self.features, self.feature_maps) if t is not None))


@dataclass(frozen=True)
class ViewBatch:
    """A batch as the loss gets it: both views' outputs and the items' shard positions; features,
    maps and the views' model inputs only where the method declared them in ``loss_inputs``."""

    h_a: torch.Tensor  # (B, embed_dim) continuous codes of view a
    h_b: torch.Tensor
    index: torch.Tensor  # (B,) positions in this worker's shard
    features_a: torch.Tensor | None = None  # (B, feature_dim)
    features_b: torch.Tensor | None = None
    feature_maps_a: torch.Tensor | None = None  # (B, C, H, W)
    feature_maps_b: torch.Tensor | None = None
    inputs_a: torch.Tensor | None = None  # (B, C, H, W) view a as the model got it (augmented, normalised)
    inputs_b: torch.Tensor | None = None


class HashingMethod(ABC):
    name: str = "base"
    code_kind: ClassVar[str] = "binary"
    e_step_inputs: ClassVar[tuple[str, ...]] = (CODES,)
    loss_inputs: ClassVar[tuple[str, ...]] = ()
    module: nn.Module | None = None

    def __init__(self, cfg: MethodConfig, nbits: int, feature_dim: int = 0):
        """``feature_dim``: the width of the backbone's pooled features, for a module that takes them."""
        self.cfg = cfg
        self.nbits = nbits
        self.feature_dim = feature_dim

    @classmethod
    def embedding_dim(cls, cfg: MethodConfig, nbits: int) -> int:
        """The width of h this method trains for codes of ``nbits``: ``nbits`` (one sign per bit) by default."""
        return nbits

    @abstractmethod
    def e_step(self, inputs: ShardInputs, round_index: int) -> dict[str, float]:
        """Refit the method's state on this shard's inputs; returns figures worth logging."""

    @abstractmethod
    def loss(self, batch: ViewBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch loss and its parts (as floats, for logging)."""

    def partners(self, generator: torch.Generator) -> torch.Tensor | None:
        """Optional: for each shard item, the shard position of a partner to share its batch.

        A method whose positives come from its components returns one here, so that a batch holds
        pairs the loss counts as positives; ``None`` (the default) means plain shuffled batches.
        """
        return None

    def sample_order(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        """Optional: the shard positions this round's batches (or anchors) are taken from, in order.

        At least as many as the round's steps use; repeats allowed (e.g. drawn uniformly over
        clusters). ``None`` (the default) is a random permutation of the shard.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """Global (rank-independent) state worth keeping in a checkpoint: tensors and plain values.

        The trainer keeps ``module``'s parameters itself; this is the rest."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional for stateless methods
        pass
