"""What a hashing method adds to the shared trainer (DSCH now; DCUH, PSCH, DeepQuan plug in the same way).

The trainer owns the model, data, optimiser, checkpoints and Ray. A method owns two things:

- ``e_step(codes)``: called at the start of every round with the continuous codes of this
  worker's training shard (eval mode, no augmentation, shard order). It updates the method's
  state cluster-wide through :mod:`rayhash.dist`, so every rank ends with the same components.
- ``loss(h_a, h_b, index)``: the loss of a batch of two augmented views, given that state;
  ``index`` holds the batch items' positions in this worker's shard.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class HashingMethod(ABC):
    name: str = "base"

    @abstractmethod
    def e_step(self, codes: torch.Tensor, round_index: int) -> dict[str, float]:
        """Refit the method's state on this shard's codes; returns figures worth logging."""

    @abstractmethod
    def loss(self, h_a: torch.Tensor, h_b: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The batch loss and its parts (as floats, for logging)."""

    def partners(self, generator: torch.Generator) -> torch.Tensor | None:
        """Optional: for each shard item, the shard position of a partner to share its batch.

        A method whose positives come from its components returns one here, so that a batch holds
        pairs the loss counts as positives; ``None`` (the default) means plain shuffled batches.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """Global (rank-independent) state worth keeping in a checkpoint: tensors and plain values."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional for stateless methods
        pass
