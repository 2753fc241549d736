import io

import pytest
import torch

from rayhash import storage
from rayhash.models import ModelConfig, build_model, checkpoint


def _save(uri):
    model = build_model(ModelConfig(bits=16))
    sha = checkpoint.save(
        uri, config={"model": {"bits": 16}}, model=model.state_dict(), em={"x": torch.ones(2)}, progress={"round": 3}
    )
    return model, sha


def test_round_trip_local(tmp_path):
    model, sha = _save(str(tmp_path / "c"))
    loaded = checkpoint.load(str(tmp_path / "c"))
    assert loaded.sha256 == sha and loaded.progress["round"] == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model[k])


def test_round_trip_s3(s3_bucket):
    uri = f"{s3_bucket}/ckpt/a"
    _, sha = _save(uri)
    assert checkpoint.load(uri).sha256 == sha


def test_tampered_payload_is_refused_before_parsing(tmp_path):
    uri = str(tmp_path / "c")
    _save(uri)
    payload = storage.join(uri, checkpoint.PAYLOAD_FILE)
    data = bytearray(storage.read_bytes(payload))
    data[-10] ^= 0xFF
    storage.write_bytes_atomic(payload, bytes(data))
    with pytest.raises(storage.ChecksumError, match="SHA-256"):
        checkpoint.load(uri)


def test_foreign_pickle_is_refused(tmp_path):
    """A .pt file rayhash did not write (no checksum) is never unpickled."""
    d = tmp_path / "foreign"
    d.mkdir()
    torch.save({"anything": 1}, d / checkpoint.PAYLOAD_FILE)
    with pytest.raises(storage.ChecksumError, match="not written by rayhash"):
        checkpoint.load(str(d))


def test_code_kind_round_trips(tmp_path):
    model = build_model(ModelConfig(bits=16))
    for kind in ("binary", "pq"):
        uri = str(tmp_path / kind)
        checkpoint.save(uri, config={"model": {"bits": 16}}, model=model.state_dict(), code_kind=kind)
        assert checkpoint.load(uri).code_kind == kind
    with pytest.raises(ValueError, match="code_kind"):
        checkpoint.save(str(tmp_path / "none"), config={}, model=model.state_dict(), code_kind="")


def test_a_checkpoint_without_a_code_kind_reads_as_binary(tmp_path):
    """A payload written before checkpoints recorded the kind: the same keys, no ``code_kind``."""
    model = build_model(ModelConfig(bits=16))
    payload = torch.load(
        io.BytesIO(checkpoint.serialize(config={"model": {"bits": 16}}, model=model.state_dict())), weights_only=True
    )
    del payload["code_kind"]
    buf = io.BytesIO()
    torch.save(payload, buf)
    uri = str(tmp_path / "old")
    storage.write_bytes_atomic(storage.join(uri, checkpoint.PAYLOAD_FILE), buf.getvalue())
    storage.write_text_atomic(storage.join(uri, checkpoint.CHECKSUM_FILE), storage.sha256_bytes(buf.getvalue()) + "\n")
    loaded = checkpoint.load(uri)
    assert "code_kind" not in payload and loaded.code_kind == "binary"
    assert set(loaded.model) == set(model.state_dict())
