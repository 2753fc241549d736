"""The code kind travels with the model: checkpoint -> encoder -> encode job -> code set, and a kind
rayhash cannot write yet is refused at each step before anything is written."""

import json

import numpy as np
import pytest
import torch

from rayhash import storage
from rayhash.config import ConfigError
from rayhash.encode import EncodeConfig, codeset, run_encode
from rayhash.methods import DeepQuanConfig, build_method
from rayhash.models import ModelConfig, build_model, checkpoint
from rayhash.models.encoder import ImageEncoder

MODEL = {"backbone": "tiny_cnn", "bits": 16}


def _checkpoint(uri: str, code_kind: str) -> tuple[str, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL)).eval()
    checkpoint.save(uri, config={"model": MODEL}, model=model.state_dict(), code_kind=code_kind)
    return uri, model


def _images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def test_binary_encoder_gives_the_packed_signs_of_h(tmp_path):
    uri, model = _checkpoint(str(tmp_path / "b"), "binary")
    encoder = ImageEncoder.from_checkpoint(uri, device="cpu")
    assert encoder.code_kind == "binary"
    images = _images()
    with torch.no_grad():
        h = model(encoder.preprocess(images)).numpy()
    # numpy reference: bit i is 1 where h_i > 0, 8 bits a byte, most significant first
    bits = (h > 0).astype(np.uint8).reshape(len(h), 2, 8)
    expected = (bits * (1 << np.arange(7, -1, -1))).sum(axis=2).astype(np.uint8)
    np.testing.assert_array_equal(encoder.encode(images), expected)


def test_a_pq_checkpoint_without_codebooks_is_refused(tmp_path):
    uri, _ = _checkpoint(str(tmp_path / "pq"), "pq")
    encoder = ImageEncoder.from_checkpoint(uri, device="cpu")
    assert encoder.code_kind == "pq" and encoder.spec is None
    with pytest.raises(ValueError, match=r"gives pq codes but holds no codebooks"):
        encoder.encode(_images())


def _deepquan_checkpoint(uri: str) -> tuple[str, torch.nn.Module, np.ndarray]:
    """A DeepQuan-shaped checkpoint: h of M * d_sub = 2 * 4 dims, and the method's own state
    (codebooks (M, K, d_sub), as DeepQuan.state_dict gives them) as its em state."""
    torch.manual_seed(0)
    config = {**MODEL, "embed_dim": 8}
    model = build_model(ModelConfig(**config)).eval()
    method = build_method(DeepQuanConfig(d_sub=4, codewords=8), 16, input_dim=28 * 28)
    method.codebooks = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(1)) * 0.5
    checkpoint.save(uri, config={"model": config}, model=model.state_dict(), em=method.state_dict(), code_kind="pq")
    return uri, model, method.codebooks.numpy()


def test_pq_encoder_gives_the_nearest_codeword_of_each_sub_space(tmp_path):
    uri, model, books = _deepquan_checkpoint(str(tmp_path / "dq"))
    encoder = ImageEncoder.from_checkpoint(uri, device="cpu")
    assert encoder.code_kind == "pq" and encoder.code_bytes == 2
    assert encoder.spec.to_dict() == {"kind": "pq", "m": 2, "k": 8, "d_sub": 4, "dim": 8, "nbits": 6}
    np.testing.assert_array_equal(encoder.spec.codebooks, books)
    images = _images(40)
    with torch.no_grad():
        z = model(encoder.preprocess(images)).numpy().astype(np.float64)
    # numpy reference: per sub-space, the codeword at the least squared distance, by brute force
    expected = np.empty((len(z), 2), dtype=np.uint8)
    for i, row in enumerate(z):
        for j in range(2):
            dist = ((books[j].astype(np.float64) - row[j * 4 : (j + 1) * 4]) ** 2).sum(axis=1)
            expected[i, j] = np.argmin(dist)
    got = encoder.encode(images)
    assert got.dtype == np.uint8 and got.shape == (40, 2)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got, axis=0)) > 1  # the images do not all fall on one code
    assert encoder.encode(images[:0]).shape == (0, 2)


def test_encode_job_refuses_a_pq_checkpoint_without_codebooks_before_any_work(tmp_path):
    uri, _ = _checkpoint(str(tmp_path / "pq"), "pq")
    out = tmp_path / "codes"
    # The input does not exist: a job that went past the kind check would fail on it instead.
    cfg = EncodeConfig(input=str(tmp_path / "no-lake"), checkpoint=uri, output=str(out), progress=False)
    with pytest.raises(ConfigError, match=r"'checkpoint': checkpoint .*pq gives pq codes but holds no codebooks"):
        run_encode(cfg)
    assert not out.exists()


def test_code_set_records_its_kind_and_refuses_one_it_cannot_hold(tmp_path):
    rng = np.random.default_rng(0)
    common = dict(
        nbits=16,
        checkpoint_uri="ckpt",
        checkpoint_sha256="ab" * 32,
        config={},
        shards=[],
        errors=[],
        counts={"inputs": 0, "encoded": 0, "rejected": 0},
        health={},
    )
    with pytest.raises(ValueError, match="'pq' codes"):
        codeset.commit(str(tmp_path / "pq"), code_kind="pq", **common)
    assert not (tmp_path / "pq").exists()

    m = codeset.write_codeset(
        str(tmp_path / "cs"),
        ids=["a", "b"],
        codes=rng.integers(0, 256, (2, 2), dtype=np.uint8),
        sources=["a", "b"],
        nbits=16,
        checkpoint_uri="ckpt",
        checkpoint_sha256="ab" * 32,
        config={},
    )
    manifest = storage.join(m.uri, codeset.MANIFEST_FILE)
    body = json.loads(storage.read_text(manifest))
    assert body["code_kind"] == "binary" and codeset.read_manifest(m.uri).code_kind == "binary"
    # A manifest written before code sets recorded their kind reads as binary.
    del body["code_kind"]
    storage.write_text_atomic(manifest, json.dumps(body))
    assert codeset.read_manifest(m.uri).code_kind == "binary"
