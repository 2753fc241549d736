"""What the service refuses to start with: a model that did not write the codes, a changed shard."""

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rayhash import config, storage
from rayhash.encode.codeset import write_codeset
from rayhash.index import build_index_set
from rayhash.models import ModelConfig, build_model, checkpoint
from rayhash.models.encoder import ImageEncoder
from rayhash.serve import ServeConfig, build_app, start

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def index(tmp_path_factory, fashion_mnist, tiny_checkpoint):
    root = tmp_path_factory.mktemp("refusals")
    enc = ImageEncoder.from_checkpoint(tiny_checkpoint, device="cpu")
    codes = enc.encode(list(fashion_mnist.images[:200]))
    ids = [f"img{i}" for i in range(200)]
    cs = write_codeset(
        str(root / "codes"),
        ids=ids,
        codes=codes,
        sources=ids,
        nbits=64,
        checkpoint_uri=tiny_checkpoint,
        checkpoint_sha256=enc.checkpoint_sha256,
        config={},
    )
    return build_index_set(cs.uri, str(root / "index"), num_shards=2)


def test_a_checkpoint_that_did_not_write_the_codes_is_refused(index, tmp_path):
    torch.manual_seed(1)  # same architecture and code length, other weights: codes not comparable
    other = str(tmp_path / "other")
    checkpoint.save(
        other,
        config={"model": {"backbone": "small_cnn", "bits": 64}},
        model=build_model(ModelConfig(backbone="small_cnn", bits=64)).state_dict(),
    )
    with pytest.raises(ValueError, match="is not the model that wrote the codes"):
        build_app(ServeConfig(index=index.uri, checkpoint=other))
    build_app(ServeConfig(index=index.uri))  # the code set's own checkpoint is accepted


def test_an_unloadable_checkpoint_says_how_to_serve_codes_only(index, tmp_path):
    with pytest.raises(ValueError, match="encode_images=false"):
        build_app(ServeConfig(index=index.uri, checkpoint=str(tmp_path / "missing")))
    build_app(ServeConfig(index=index.uri, checkpoint=str(tmp_path / "missing"), encode_images=False))


def test_writes_need_shard_deployments(index):
    with pytest.raises(ValueError, match="writes=true needs shard deployments"):
        build_app(ServeConfig(index=index.uri, writes=True, shards_in_ingress=True, encode_images=False))
    build_app(ServeConfig(index=index.uri, writes=True, encode_images=False))


def test_config_yaml_args_are_valid_serve_config_keys():
    body = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    (app,) = body["applications"]
    assert app["import_path"] == "serve.app:app"
    cfg = config.from_dict(ServeConfig, app["args"])
    assert cfg.shards["ray_actor_options"]["num_cpus"] <= 0.25  # starts on a 2-core machine
    with pytest.raises(config.ConfigError, match="Did you mean 'max_k'"):
        config.from_dict(ServeConfig, {**app["args"], "max_kk": 5})


def test_a_shard_changed_after_the_build_fails_the_deploy(ray_cluster, index, tmp_path):
    import shutil

    from ray import serve

    copy = str(tmp_path / "index")
    shutil.copytree(index.uri, copy)
    storage.write_bytes_atomic(f"{copy}/{index.shards[1].index_path}", np.arange(64, dtype=np.uint8).tobytes())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        with pytest.raises(RuntimeError, match="failed to deploy.*SHA-256"):
            start(
                copy,
                port=port,
                name="rayhash-changed-shard",
                route_prefix="/changed",
                encode_images=False,
                ready_timeout_s=240,
            )
    finally:
        serve.delete("rayhash-changed-shard")


def test_a_pinned_index_manifest_serves_only_that_version(index):
    build_app(ServeConfig(index=index.uri, index_sha256=index.sha256, encode_images=False))
    with pytest.raises(storage.ChecksumError, match="is pinned: this is not the index set version asked for"):
        build_app(ServeConfig(index=index.uri, index_sha256="0" * 64, encode_images=False))
