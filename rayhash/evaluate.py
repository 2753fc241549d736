"""Retrieval quality of a checkpoint (or a baseline) on a protocol split: JSON and PNG reports.

One harness for everything compared in PROTOCOL.md, for both kinds of code. Binary codes (of the
queries and of the database) are scored by :func:`rayhash.metrics.evaluate_codes`: Hamming ranking,
P@N, the PR curve over Hamming radius. Product-quantised ones by
:func:`rayhash.metrics_pq.evaluate_pq_codes`: each query keeps its continuous vector (a checkpoint's
z, a baseline's pixels) and the database's codes are ranked by asymmetric distance, the PR curve
over distance thresholds. Both break ties by database position and give the same report.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from rayhash import plots, storage
from rayhash.baselines import create_baseline
from rayhash.codespec import binary as codes
from rayhash.codespec import pq as pq_lib
from rayhash.data.images import LabeledImages
from rayhash.data.splits import Split
from rayhash.metrics import evaluate_codes
from rayhash.metrics_pq import evaluate_pq_codes
from rayhash.models.encoder import ImageEncoder

logger = logging.getLogger(__name__)

# The non-learned reference each kind of code is held against (PROTOCOL.md), scored beside a
# checkpoint of that kind whenever any baseline is: ITQ, binary codes' reference, is already in
# eval.baselines' default; product-quantised codes are held against PQ on the same pixels.
KIND_BASELINES = {pq_lib.KIND: ("pq",)}


def baselines_for(code_kind: str, configured: Sequence[str]) -> list[str]:
    """The baselines to score beside a checkpoint of ``code_kind``: ``configured`` (eval.baselines),
    then its kind's reference (:data:`KIND_BASELINES`) where not already listed. An empty
    ``configured`` asks for no baselines, and gets none."""
    if not configured:
        return []
    return list(dict.fromkeys([*configured, *KIND_BASELINES.get(code_kind, ())]))


def encode_images(
    encoder: ImageEncoder, images: np.ndarray, batch_size: int = 1024, desc: str = "encode", continuous: bool = False
) -> np.ndarray:
    """Codes (uint8) for a whole array of images, with a progress bar; ``continuous``: the float
    vectors ``(n, embed_dim)`` the codes come from instead."""
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        batch = list(images[i : i + batch_size])
        out.append(encoder.encode_continuous(batch).numpy() if continuous else encoder.encode(batch))
    return np.concatenate(out)


def _score(packed: np.ndarray, data: LabeledImages, split: Split, nbits: int, k: int) -> dict:
    """``packed`` holds codes for positions ``query`` then ``database``, in that order."""
    nq = len(split.query)
    return evaluate_codes(packed[:nq], packed[nq:], data.labels[split.query], data.labels[split.database], nbits, k)


def evaluate_checkpoint(uri: str, data: LabeledImages, split: Split, k: int = 1000) -> dict:
    """A checkpoint's codes scored as its kind is: binary by Hamming ranking, pq by ADC from the queries' z."""
    encoder = ImageEncoder.from_checkpoint(uri)
    t0 = time.perf_counter()
    if encoder.code_kind == pq_lib.KIND:
        # The database first: a pq checkpoint without codebooks is refused before any work is done.
        db = encode_images(encoder, data.images[split.database], desc="encode database")
        queries = encode_images(encoder, data.images[split.query], desc="encode queries (z)", continuous=True)
        ql, dl = data.labels[split.query], data.labels[split.database]
        result = evaluate_pq_codes(encoder.spec, queries, db, ql, dl, k)
    else:
        positions = np.concatenate([split.query, split.database])
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
    """A baseline on raw pixels in [0, 1], fitted on the training images only: ITQ or LSH codes by
    Hamming ranking; PQ codes by ADC from each query's own pixels."""
    pixels = data.images.reshape(len(data), -1).astype(np.float32) / 255.0
    t0 = time.perf_counter()
    baseline = create_baseline(name).fit(pixels[split.train], nbits, seed=seed)
    fit_seconds = time.perf_counter() - t0
    if baseline.code_kind == pq_lib.KIND:
        db = baseline.encode(pixels[split.database])
        ql, dl = data.labels[split.query], data.labels[split.database]
        result = evaluate_pq_codes(baseline.spec, pixels[split.query], db, ql, dl, k)
    else:
        positions = np.concatenate([split.query, split.database])
        result = _score(codes.pack(baseline.encode(pixels[positions])), data, split, nbits, k)
    result.update(method=name, seed=seed, train_seconds=fit_seconds)
    return result


_SWEEPS = {"radius": "Hamming radius", "threshold": "ADC distance threshold"}


def write_report(results: dict[str, dict], output: str) -> dict[str, str]:
    """``results`` maps a label to an ``evaluate_*`` dict; writes metrics.json, pr.png, precision_at_n.png."""
    paths = {name: storage.join(output, name) for name in ("metrics.json", "pr.png", "precision_at_n.png")}
    storage.write_text_atomic(paths["metrics.json"], json.dumps(results, indent=1))
    sweeps = {"radius" if "radius" in r["pr_curve"] else "threshold" for r in results.values()}
    title = "Precision-recall by " + " or ".join(_SWEEPS[s] for s in sorted(sweeps))
    plots.plot_pr_curves({label: r["pr_curve"] for label, r in results.items()}, paths["pr.png"], title)
    plots.plot_precision_at_n({label: r["precision_at_n"] for label, r in results.items()}, paths["precision_at_n.png"])
    return paths


def format_table(results: dict[str, dict]) -> str:
    lines = [f"{'method':<28} {'bits':>5} {'mAP@k':>8}"]
    for label, r in results.items():
        lines.append(f"{label:<28} {r['nbits']:>5} {r['map_at_k']:>8.4f}")
    return "\n".join(lines)
