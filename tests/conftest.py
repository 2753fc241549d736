"""Shared fixtures: one moto S3 server and one local Ray cluster per test session, real data."""

from __future__ import annotations

import os
import socket
import uuid

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP server (moto) on loopback; returns its endpoint URL.

    The endpoint goes into the process environment before Ray starts, so Ray workers
    (which do not see in-process mocks) reach the same server.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh bucket on the moto server; returns ``s3://<bucket>``."""
    import boto3

    name = f"rayhash-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the whole session (starting one takes ~6 s here).

    4 logical CPUs on a 2-core machine: Train workers, Data actors and Serve replicas ask for
    fractions, and over-subscribing the logical count keeps every test's actors schedulable.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            logging_level="WARNING",
            runtime_env={"env_vars": {**S3_ENV, "AWS_ENDPOINT_URL": s3_server}},
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def fashion_mnist():
    from rayhash.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A real rayhash checkpoint of an untrained small CNN (64 bits, seeded), saved locally."""
    import torch

    from rayhash.models import ModelConfig, build_model, checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(backbone="small_cnn", bits=64)
    model = build_model(cfg)
    model.eval()
    uri = str(tmp_path_factory.mktemp("ckpt") / "tiny")
    checkpoint.save(
        uri,
        config={"model": {"backbone": cfg.backbone, "bits": cfg.bits}},
        model=model.state_dict(),
        progress={"round": 0},
    )
    return uri
