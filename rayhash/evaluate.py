"""Retrieval quality of a checkpoint (or a baseline) on a protocol split: JSON and PNG reports.

One harness for everything compared in PROTOCOL.md: the query and database codes come from the
model or baseline, then :func:`rayhash.metrics.evaluate_codes` scores them (mAP@k with ties broken
by database position, P@N, the PR curve over Hamming radius).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from tqdm.auto import tqdm

from rayhash import plots, storage
from rayhash.baselines import create_baseline
from rayhash.codespec import binary as codes
from rayhash.data.images import LabeledImages
from rayhash.data.splits import Split
from rayhash.metrics import evaluate_codes
from rayhash.models.encoder import ImageEncoder

logger = logging.getLogger(__name__)


def encode_images(
    encoder: ImageEncoder, images: np.ndarray, batch_size: int = 1024, desc: str = "encode"
) -> np.ndarray:
    """Packed codes for a whole array of images, with a progress bar."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        out.append(encoder.encode(list(images[i : i + batch_size])))
    return np.concatenate(out)


def _score(packed: np.ndarray, data: LabeledImages, split: Split, nbits: int, k: int) -> dict:
    """``packed`` holds codes for positions ``query`` then ``database``, in that order."""
    nq = len(split.query)
    return evaluate_codes(packed[:nq], packed[nq:], data.labels[split.query], data.labels[split.database], nbits, k)


def evaluate_checkpoint(uri: str, data: LabeledImages, split: Split, k: int = 1000) -> dict:
    encoder = ImageEncoder.from_checkpoint(uri)
    positions = np.concatenate([split.query, split.database])
    t0 = time.perf_counter()
    packed = encode_images(encoder, data.images[positions], desc="encode queries + database")
    result = _score(packed, data, split, encoder.nbits, k)
    result.update(
        method="checkpoint",
        checkpoint=encoder.checkpoint_uri,
        checkpoint_sha256=encoder.checkpoint_sha256,
        encode_seconds=time.perf_counter() - t0,
    )
    return result


def evaluate_baseline(name: str, data: LabeledImages, split: Split, nbits: int, seed: int = 0, k: int = 1000) -> dict:
    """ITQ or LSH on raw pixels in [0, 1], fitted on the training images only."""
    pixels = data.images.reshape(len(data), -1).astype(np.float32) / 255.0
    t0 = time.perf_counter()
    baseline = create_baseline(name).fit(pixels[split.train], nbits, seed=seed)
    fit_seconds = time.perf_counter() - t0
    positions = np.concatenate([split.query, split.database])
    result = _score(codes.pack(baseline.encode(pixels[positions])), data, split, nbits, k)
    result.update(method=name, seed=seed, train_seconds=fit_seconds)
    return result


def write_report(results: dict[str, dict], output: str) -> dict[str, str]:
    """``results`` maps a label to an ``evaluate_*`` dict; writes metrics.json, pr.png, precision_at_n.png."""
    paths = {name: storage.join(output, name) for name in ("metrics.json", "pr.png", "precision_at_n.png")}
    storage.write_text_atomic(paths["metrics.json"], json.dumps(results, indent=1))
    plots.plot_pr_curves({label: r["pr_curve"] for label, r in results.items()}, paths["pr.png"])
    plots.plot_precision_at_n({label: r["precision_at_n"] for label, r in results.items()}, paths["precision_at_n.png"])
    return paths


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'method':<28} {'bits':>5} {'mAP@k':>8}"]
    for label, r in results.items():
        lines.append(f"{label:<28} {r['nbits']:>5} {r['map_at_k']:>8.4f}")
    return "\n".join(lines)
