"""The evaluation harness against an independent computation on real Fashion-MNIST images, for binary
codes (Hamming ranking) and product-quantised ones (ADC ranking)."""

import json

import numpy as np
import pytest
import torch

from rayhash.codespec import binary as codes
from rayhash.codespec import pq
from rayhash.data.splits import Split
from rayhash.evaluate import baselines_for, evaluate_baseline, evaluate_checkpoint, write_report
from rayhash.methods import DeepQuanConfig, build_method
from rayhash.models import ModelConfig, build_model, checkpoint
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


# --- product-quantised codes: ranked by asymmetric distance ------------------------------------------


def _brute_adc_map(books, queries, db_codes, ql, dl, k):
    """AP@k by a stable sort of float64 squared distances from each query to each code's centroids."""
    recon = np.concatenate([books[j].astype(np.float64)[db_codes[:, j]] for j in range(len(books))], axis=1)
    dist = ((queries.astype(np.float64)[:, None, :] - recon[None]) ** 2).sum(axis=2)
    aps = []
    for i in range(len(queries)):
        order = np.argsort(dist[i], kind="stable")[:k]
        rel = dl[order] == ql[i]
        hits = np.cumsum(rel)
        aps.append((hits / np.arange(1, k + 1))[rel].mean() if rel.any() else 0.0)
    return float(np.mean(aps))


def _deepquan_checkpoint(uri: str, train_images: np.ndarray) -> str:
    """A DeepQuan-shaped checkpoint of an untrained net: z of M * d_sub = 2 * 4 dims, and K = 8 codewords
    per sub-space fitted on the z of ``train_images`` (as DeepQuan's E-step fits them)."""
    torch.manual_seed(0)
    model_cfg = {"backbone": "tiny_cnn", "bits": 16, "embed_dim": 8}
    model = build_model(ModelConfig(**model_cfg)).eval()
    z = ImageEncoder(model, device="cpu").encode_continuous(list(train_images)).numpy()
    method = build_method(DeepQuanConfig(d_sub=4, codewords=8), 16, input_dim=28 * 28)
    method.codebooks = torch.from_numpy(pq.fit(z, 2, 8, seed=0).codebooks.copy())
    checkpoint.save(uri, config={"model": model_cfg}, model=model.state_dict(), em=method.state_dict(), code_kind="pq")
    return uri


def test_pq_checkpoint_is_scored_by_adc_from_the_queries_z(fashion_mnist, tmp_path):
    split = _small_split(fashion_mnist.labels)
    uri = _deepquan_checkpoint(str(tmp_path / "dq"), fashion_mnist.images[split.train])
    result = evaluate_checkpoint(uri, fashion_mnist, split, k=100)
    enc = ImageEncoder.from_checkpoint(uri)
    queries = enc.encode_continuous(list(fashion_mnist.images[split.query])).numpy()
    db = enc.encode(list(fashion_mnist.images[split.database]))
    assert 10 < len(np.unique(db, axis=0)) < 300  # many codes, each shared by several images: ties
    ql, dl = fashion_mnist.labels[split.query], fashion_mnist.labels[split.database]
    assert result["map_at_k"] == pytest.approx(_brute_adc_map(enc.spec.codebooks, queries, db, ql, dl, 100), abs=1e-12)
    assert (result["code_kind"], result["nbits"], result["m"]) == ("pq", 6, 2)  # M x log2(8) bits
    assert result["checkpoint_sha256"] == enc.checkpoint_sha256 and len(result["pr_curve"]["threshold"]) == 101

    pq_pixels = evaluate_baseline("pq", fashion_mnist, split, 16, seed=0, k=100)
    paths = write_report({"deepquan": result, "pq (pixels)": pq_pixels}, str(tmp_path / "eval"))
    assert set(json.loads(open(paths["metrics.json"]).read())) == {"deepquan", "pq (pixels)"}
    assert open(paths["pr.png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_pq_checkpoint_without_codebooks_is_refused(fashion_mnist, tmp_path):
    uri = str(tmp_path / "pq")
    model_cfg = {"backbone": "tiny_cnn", "bits": 16}
    checkpoint.save(
        uri, config={"model": model_cfg}, model=build_model(ModelConfig(**model_cfg)).state_dict(), code_kind="pq"
    )
    with pytest.raises(ValueError, match="gives pq codes but holds no codebooks"):
        evaluate_checkpoint(uri, fashion_mnist, _small_split(fashion_mnist.labels), k=100)


def test_pq_baseline_is_pq_on_training_pixels_scored_by_adc_from_query_pixels(fashion_mnist):
    split = _small_split(fashion_mnist.labels)
    result = evaluate_baseline("pq", fashion_mnist, split, 32, seed=0, k=100)
    pixels = fashion_mnist.images.reshape(len(fashion_mnist), -1).astype(np.float32) / 255.0
    books = pq.fit(pixels[split.train], 4, seed=0).codebooks  # M = 32 / 8, fitted on the 300 training images
    # numpy reference: nearest centroid per sub-space, then ADC from the query's own pixels
    db = np.stack(
        [
            ((pixels[split.database, None, j * 196 : (j + 1) * 196] - books[j][None]) ** 2).sum(axis=2).argmin(axis=1)
            for j in range(4)
        ],
        axis=1,
    ).astype(np.uint8)
    ql, dl = fashion_mnist.labels[split.query], fashion_mnist.labels[split.database]
    expected = _brute_adc_map(books, pixels[split.query], db, ql, dl, 100)
    assert result["map_at_k"] == pytest.approx(expected, abs=1e-12)
    assert (result["code_kind"], result["method"], result["nbits"], result["m"]) == ("pq", "pq", 32, 4)
    with pytest.raises(ValueError, match="does not divide 784"):
        evaluate_baseline("pq", fashion_mnist, split, 24)


def test_a_pq_checkpoint_is_also_held_against_pq_on_pixels():
    assert baselines_for("binary", ("itq", "lsh")) == ["itq", "lsh"]
    assert baselines_for("binary", ()) == []
    assert baselines_for("pq", ("itq", "lsh")) == ["itq", "lsh", "pq"]
    assert baselines_for("pq", ("pq", "itq")) == ["pq", "itq"]
    assert baselines_for("pq", ()) == []  # no baselines asked for: none
