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
