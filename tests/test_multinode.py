"""Train, encode and serve on a real 2-node Ray cluster, each stage submitted with ``ray job submit``.

A local cluster of three raylets on this machine: a head with no CPUs (the job API and drivers,
Train's and Serve's controllers) and two worker nodes of 2 logical CPUs each. Each job asks for
what puts its work on both worker nodes, and each test reads the nodes from what the run itself
records: the checkpoint's ``worker_nodes``, the code set's ``inputs_by_node``, each shard
replica's ``info()``. Drivers and workers run this checkout's rayhash (``PYTHONPATH`` in the
cluster's environment) with this interpreter, and the jobs are submitted without a working dir.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from rayhash.encode import codeset
from rayhash.models import checkpoint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
N_IMAGES = 600

# Sized so that a job's work fits in a minute on 2 cores: 512 training images, 16 bits, 8 fine
# components; round 0 trains, round 1 runs DSCH's E-step on what round 0 trained.
TRAIN = [
    "--data.protocol=random",
    "--data.random_queries=100",
    "--data.random_train=512",
    "--model.backbone=tiny_cnn",
    "--model.bits=16",
    "--method.name=dsch",
    "--method.fine_components=8",
    "--method.coarse_components=3",
    "--optim.batch_size=64",
    "--run.rounds=2",
    "--run.num_workers=2",
    "--run.cpus_per_worker=0.5",
    "--run.torch_threads=1",
    "--eval.enabled=false",
]


@dataclass(frozen=True)
class LocalCluster:
    dashboard: str  # http://127.0.0.1:<port>: what `ray job submit --address` takes
    workers: frozenset[str]  # node ids of the two worker nodes
    root: Path  # where the jobs write


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # A short private temp dir: Ray's sockets live under it (unix paths are short), and the
    # "current cluster" address file goes there, not to /tmp/ray where other clusters look.
    root = Path(tempfile.mkdtemp(prefix="rhmn-"))
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "PYTHONPATH")}
    os.environ["RAY_TMPDIR"] = str(root)
    # Raylets pass their environment to every worker and job driver: all import this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved["PYTHONPATH"]) if p)
    dashboard_port = free_port()
    nodes = None
    try:
        nodes = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "include_dashboard": True,
                "dashboard_host": "127.0.0.1",
                "dashboard_port": dashboard_port,
                "dashboard_agent_listen_port": free_port(),
            },
        )
        workers = [nodes.add_node(num_cpus=2) for _ in range(2)]
        yield LocalCluster(
            dashboard=f"http://127.0.0.1:{dashboard_port}",
            workers=frozenset(w.node_id for w in workers),
            root=root,
        )
    finally:
        if nodes is not None:
            nodes.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


def submit(cluster: LocalCluster, *argv: str, wait: bool = True, timeout_s: float = 300) -> tuple[str, str]:
    """``ray job submit`` of ``python argv...``; returns the submission id and, when waiting, the job's output."""
    sid = f"rayhash-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", sid]
    cmd += [] if wait else ["--no-wait"]
    done = subprocess.run([*cmd, "--", sys.executable, *argv], capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"job {argv} failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return sid, done.stdout


def job_status(cluster: LocalCluster, sid: str) -> str:
    return requests.get(f"{cluster.dashboard}/api/jobs/{sid}", timeout=10).json()["status"]


def wait_for_job(cluster: LocalCluster, sid: str, timeout_s: float = 300) -> str:
    """The output of job ``sid`` once it succeeded; fails the test with its output if it did not."""
    deadline = time.monotonic() + timeout_s
    while (status := job_status(cluster, sid)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline, f"job {sid} still {status} after {timeout_s} s"
        time.sleep(1)
    logs = requests.get(f"{cluster.dashboard}/api/jobs/{sid}/logs", timeout=10).json()["logs"]
    assert status == "SUCCEEDED", f"job {sid} {status}:\n{logs[-4000:]}"
    return logs


def written(output: str, name: str) -> str:
    """A path from the ``written:`` block a job ends with."""
    found = re.findall(rf"^\s+{name}\s+(\S+)\s*$", output, re.MULTILINE)
    assert found, f"no {name!r} in the job's output:\n{output[-3000:]}"
    return found[-1]


@pytest.fixture(scope="module")
def trained(cluster):
    """The same run twice, at once: packed on one node (the default) and spread over both."""
    runs = cluster.root / "runs"
    jobs = {
        placement: submit(
            cluster,
            str(REPO / "jobs/train.py"),
            *TRAIN,
            f"--run.storage_path={runs}",
            f"--run.name={placement.lower()}",
            f"--run.placement_strategy={placement}",
            wait=False,
        )[0]
        for placement in ("PACK", "STRICT_SPREAD")
    }
    return {p: checkpoint.load(written(wait_for_job(cluster, sid), "checkpoint")) for p, sid in jobs.items()}


def test_training_spread_over_two_nodes_equals_one_node(cluster, trained):
    packed, spread = trained["PACK"], trained["STRICT_SPREAD"]
    assert spread.progress["round"] == packed.progress["round"] == 1
    # rank 0 and rank 1 on the two worker nodes; packed, both on one of them
    assert len(spread.progress["worker_nodes"]) == 2 and set(spread.progress["worker_nodes"]) == cluster.workers
    assert len(set(packed.progress["worker_nodes"])) == 1 and set(packed.progress["worker_nodes"]) < cluster.workers
    # Round 1's E-step ran on the weights round 0 trained with DDP across the nodes, then fit the
    # GMM and coarse centres from both workers' statistics: the same as both workers on one node.
    assert packed.em["gmm"]["means"].shape == (8, 16) and packed.em["coarse_centers"].shape == (3, 16)

    def tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {}
        for k, v in state.items():
            if isinstance(v, dict):
                out.update(tensors(v, f"{prefix}{k}."))
            elif isinstance(v, torch.Tensor):
                out[f"{prefix}{k}"] = v
        return out

    want, got = tensors(packed.em), tensors(spread.em)
    assert want.keys() == got.keys() and {"gmm.means", "coarse_centers", "coarse_assign"} <= want.keys()
    for key in want:
        assert torch.allclose(got[key].double(), want[key].double(), rtol=1e-5, atol=1e-6), key
    for key, value in packed.model.items():
        assert torch.allclose(spread.model[key].double(), value.double(), rtol=1e-5, atol=1e-6), key


@pytest.fixture(scope="module")
def lake(cluster, fashion_mnist) -> dict[str, np.ndarray]:
    """N_IMAGES Fashion-MNIST PNGs in a folder: id -> image."""
    images = {}
    for pos in range(N_IMAGES):
        id_ = f"class{fashion_mnist.labels[pos]}/{pos:05d}.png"
        path = cluster.root / "lake" / id_
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fashion_mnist.images[pos].squeeze(-1)).save(path)
        images[id_] = fashion_mnist.images[pos]
    return images


@pytest.fixture(scope="module")
def codes(cluster, trained, lake) -> codeset.CodeSetManifest:
    # One actor per node: 1.5 CPUs each, where a node has 2.
    submit(
        cluster,
        str(REPO / "jobs/encode.py"),
        f"--input={cluster.root / 'lake'}",
        f"--checkpoint={trained['STRICT_SPREAD'].uri}",
        f"--output={cluster.root / 'codes'}",
        "--num_actors=2",
        "--cpus_per_actor=1.5",
        "--torch_threads=1",
        "--read_batch=25",
    )
    return codeset.read_manifest(cluster.root / "codes")


def test_encode_actors_ran_on_both_nodes(cluster, trained, lake, codes):
    assert codes.counts == {"inputs": N_IMAGES, "encoded": N_IMAGES, "rejected": 0}
    assert codes.checkpoint_sha256 == trained["STRICT_SPREAD"].sha256
    by_node = codes.inputs_by_node
    assert set(by_node) == cluster.workers and sum(by_node.values()) == N_IMAGES, by_node
    ids, packed, _ = codeset.read_codes(codes)
    assert sorted(ids) == sorted(lake) and packed.shape == (N_IMAGES, 2)


def brute_force(queries: np.ndarray, ids: np.ndarray, packed: np.ndarray, k: int) -> list[list[dict]]:
    """Every item by (Hamming distance, id), first k: numpy popcount of the XOR, nothing of rayhash's."""
    distances = np.unpackbits(queries[:, None, :] ^ packed[None, :, :], axis=-1).sum(-1)
    return [
        [{"id": i, "distance": int(d)} for d, i in sorted(zip(row, ids))[:k]]  # ties by id
        for row in distances
    ]


@pytest.fixture(scope="module")
def service(cluster, codes):
    submit(
        cluster,
        str(REPO / "jobs/build_index.py"),
        f"--codeset={codes.uri}",
        f"--out={cluster.root / 'index'}",
        "--num_shards=2",
        "--threads=1",
    )
    url = f"http://127.0.0.1:{free_port()}"
    # One shard replica per node: 1.5 CPUs each, where a node has 2; no encoder, code queries only.
    sid, _ = submit(
        cluster,
        "-m",
        "rayhash",
        "serve",
        f"--index={cluster.root / 'index'}",
        f"--port={url.rsplit(':', 1)[1]}",
        "--encode_images=false",
        "--shards_in_ingress=false",  # shard deployments, each placed by Ray
        "--shards.ray_actor_options.num_cpus=1.5",
        wait=False,
    )
    deadline = time.monotonic() + 240
    while True:
        status = job_status(cluster, sid)
        assert status in ("PENDING", "RUNNING"), wait_for_job(cluster, sid, timeout_s=10)
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"the service did not answer at {url} (job {status})"
        time.sleep(1)
    yield url
    subprocess.run([RAY, "job", "stop", "--address", cluster.dashboard, sid], capture_output=True, timeout=60)


def test_served_shards_on_two_nodes_answer_exactly(cluster, codes, service):
    health = requests.get(f"{service}/healthz", timeout=30).json()
    assert len(health["shard_nodes"]) == 2 and set(health["shard_nodes"]) == cluster.workers, health

    stats = requests.get(f"{service}/stats", timeout=10).json()
    assert (stats["shards"], stats["items"], stats["placement"]) == (2, N_IMAGES, "deployments")
    ids, packed, _ = codeset.read_codes(codes)
    rng = np.random.default_rng(0)
    # items' own codes (distance 0 and many ties at 16 bits) and random codes
    queries = np.vstack([packed[rng.choice(N_IMAGES, 8, replace=False)], rng.integers(0, 256, (8, 2), np.uint8)])
    hex_codes = [q.tobytes().hex() for q in queries]
    for k in (1, 10, 50):
        r = requests.post(f"{service}/search/codes", json={"codes": hex_codes, "k": k}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["results"] == brute_force(queries, ids, packed, k), k
