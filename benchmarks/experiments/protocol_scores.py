"""mAP@k on a protocol split, as the experiments here score a model: its binary codes by Hamming
distance, and float vectors (continuous codes, features) by cosine."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rayhash.data.images import LabeledImages
from rayhash.data.splits import Split
from rayhash.evaluate import encode_images
from rayhash.metrics import average_precision, map_at_k
from rayhash.models.encoder import ImageEncoder


def query_then_database(split: Split) -> np.ndarray:
    return np.concatenate([split.query, split.database])


def packed_map(packed: np.ndarray, data: LabeledImages, split: Split, k: int = 1000) -> float:
    """mAP@k of packed codes for the split's queries, then its database (``query_then_database``)."""
    nq = len(split.query)
    return float(map_at_k(packed[:nq], packed[nq:], data.labels[split.query], data.labels[split.database], k))


def model_map(
    model: torch.nn.Module, data: LabeledImages, split: Split, device: torch.device | str, k: int = 1000
) -> float:
    """mAP@k of a model's binary codes (what ``rayhash eval`` reports), encoded on ``device``."""
    return packed_map(
        encode_images(ImageEncoder(model, device=device), data.images[query_then_database(split)]), data, split, k
    )


def cosine_map(vectors: torch.Tensor, data: LabeledImages, split: Split, k: int = 1000) -> float:
    """mAP@k of a float ranking by cosine similarity; ``vectors`` holds the queries, then the database."""
    v = F.normalize(vectors.float(), dim=1)
    nq = len(split.query)
    top = torch.topk(v[:nq] @ v[nq:].T, k, dim=1).indices.numpy()
    return float(average_precision(data.labels[split.database][top] == data.labels[split.query][:, None]).mean())


@torch.inference_mode()
def features_and_preactivations(encoder: ImageEncoder, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's features of ``images`` and the hash head's output before tanh, in eval mode."""
    model = encoder.model.eval()
    batch = encoder.preprocess(images)
    feats = torch.cat(
        [model.backbone(batch[i : i + 1024].to(encoder.device)).cpu() for i in range(0, len(batch), 1024)]
    )
    return feats, model.head(feats.to(encoder.device)).cpu()
