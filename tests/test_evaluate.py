"""The evaluation harness against an independent computation on real Fashion-MNIST images."""

import json

import numpy as np

from rayhash.codespec import binary as codes
from rayhash.data.splits import Split
from rayhash.evaluate import evaluate_baseline, evaluate_checkpoint, write_report
from rayhash.models.encoder import ImageEncoder


def _small_split(labels: np.ndarray) -> Split:
    rng = np.random.default_rng(0)
    query = rng.choice(np.arange(60_000, 70_000), 50, replace=False)
    database = rng.choice(np.arange(0, 60_000), 600, replace=False)
    return Split(query=query, database=database, train=database[:300], name="small")


def _brute_map(q, d, ql, dl, k):
    dist = codes.hamming(q, d)
    aps = []
    for i in range(len(q)):
        order = np.argsort(dist[i], kind="stable")[:k]
        rel = dl[order] == ql[i]
        hits = np.cumsum(rel)
        aps.append((hits / np.arange(1, k + 1))[rel].mean() if rel.any() else 0.0)
    return float(np.mean(aps))


def test_checkpoint_evaluation_matches_brute_force(fashion_mnist, tiny_checkpoint, tmp_path):
    split = _small_split(fashion_mnist.labels)
    result = evaluate_checkpoint(tiny_checkpoint, fashion_mnist, split, k=100)
    enc = ImageEncoder.from_checkpoint(tiny_checkpoint)
    q, d = enc.encode(list(fashion_mnist.images[split.query])), enc.encode(list(fashion_mnist.images[split.database]))
    expected = _brute_map(q, d, fashion_mnist.labels[split.query], fashion_mnist.labels[split.database], 100)
    assert abs(result["map_at_k"] - expected) < 1e-9
    assert result["checkpoint_sha256"] == enc.checkpoint_sha256 and len(result["precision_at_n"]) == 100

    itq = evaluate_baseline("itq", fashion_mnist, split, 64, seed=0, k=100)
    paths = write_report({"tiny": result, "itq": itq}, str(tmp_path / "eval"))
    saved = json.loads(open(paths["metrics.json"]).read())
    assert set(saved) == {"tiny", "itq"} and saved["itq"]["map_at_k"] > result["map_at_k"]  # ITQ beats an untrained net
    for name in ("pr.png", "precision_at_n.png"):
        assert open(paths[name], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
