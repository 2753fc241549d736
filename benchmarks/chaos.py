"""Chaos suite: what a client sees while parts of the search service fail, on a real local cluster.

    python benchmarks/chaos.py --out benchmarks/results/chaos.json

Each scenario runs a bounded client loop over HTTP on 127.0.0.1 against a real Serve app (an
untrained small CNN's 64-bit codes of 2,000 Fashion-MNIST images, 2 shards) and records the
requests sent, the success rate during the fault (from the fault to ``--window`` seconds after
it, including requests in flight when it struck) and after it, errors by HTTP status
(``"exception"`` for a connection that failed), and the p99 latency during the fault. A
search answer counts as a success only if it is exactly the brute-force answer (Hamming
distance, then id). Scenarios:

- ``shard-replica-kill``: SIGKILL one of shard 0's 2 replicas under a load of code queries;
- ``encoder-kill``: SIGKILL one of the encoder's 2 replicas under a load of image queries;
- ``s3-outage-encode``: the S3 endpoint (a moto server on loopback) goes away once an encode
  job into ``s3://`` has staged two chunks: the job must fail with a clear error, the code set
  committed before must stay whole, and a rerun once S3 is back must commit every input once
  (``lost_rows``, ``duplicated_rows``), each code the model's (``success_rate_after``);
- ``train-node-loss``: a 2-node local cluster (two raylets on this machine) loses the node that
  holds both training workers after a round's checkpoint; a fresh node joins and the run must
  finish from its checkpoint (:mod:`chaos_train`, run in a process of its own);
- ``tampered-artifacts``: one byte changed in a checkpoint, a code shard and an index shard;
  each load is refused, naming the file (``requests`` counts the three, ``errors_by_status``
  what they raised);
- ``hostile``: hostile requests (:mod:`chaos_hostile`) to an app with a bearer token; each
  answer's status is recorded against what it should be (``success_rate_during``: the share
  answered so; ``unexpected`` lists the others), and ``success_rate_after`` is whether the
  service still answers a good query exactly afterwards.

Rows follow ``{"scenario", "requests", "success_rate_during", "success_rate_after",
"errors_by_status", "p99_ms_during", "lost_rows", "duplicated_rows", "hardware"}``.
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from results_io import command_line, hardware, write_result

logger = logging.getLogger("chaos")
N_IMAGES = 2000


class Corpus:
    """A checkpoint, its codes of ``N_IMAGES`` Fashion-MNIST images, a code set and an index set."""

    def __init__(self, work: Path):
        import torch

        from rayhash.codespec import binary as codes_lib
        from rayhash.data import load_fashion_mnist
        from rayhash.encode.codeset import write_codeset
        from rayhash.index import build_index_set
        from rayhash.models import ModelConfig, build_model, checkpoint
        from rayhash.models.encoder import ImageEncoder

        torch.manual_seed(0)
        model_cfg = {"backbone": "small_cnn", "bits": 64}
        self.checkpoint = str(work / "ckpt")
        checkpoint.save(
            self.checkpoint, config={"model": model_cfg}, model=build_model(ModelConfig(**model_cfg)).state_dict()
        )
        encoder = ImageEncoder.from_checkpoint(self.checkpoint, device="cpu")
        self.images = load_fashion_mnist().images[:N_IMAGES]
        self.codes = encoder.encode(list(self.images))
        self.ids = np.array([f"fmnist/{i:05d}" for i in range(N_IMAGES)], dtype=object)
        self.codeset = write_codeset(
            str(work / "codes"),
            ids=list(self.ids),
            codes=self.codes,
            sources=list(self.ids),
            nbits=64,
            checkpoint_uri=self.checkpoint,
            checkpoint_sha256=encoder.checkpoint_sha256,
            config={},
            rows_per_shard=1000,
        )
        self.index = build_index_set(self.codeset.uri, str(work / "index"), num_shards=2)
        self.hamming = codes_lib.hamming
        self.to_hex = codes_lib.to_hex

    def expected(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        d = self.hamming(queries, self.codes)
        order = np.lexsort((np.broadcast_to(np.arange(len(self.ids)), d.shape), d), axis=1)[:, :k]
        return [[{"id": self.ids[j], "distance": int(row[j])} for j in o] for o, row in zip(order, d)]

    def png(self, i: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(self.images[i][..., 0]).save(buf, format="PNG")
        return buf.getvalue()


class Load:
    """A bounded client loop: ``threads`` clients each sending ``send(session)`` until stopped,
    recording ``(start, end, status, exact)`` per request."""

    def __init__(self, send, threads: int):
        self.send, self.records, self.stop = send, [], threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(threads)]

    def _client(self):
        with requests.Session() as s:
            while not self.stop.is_set():
                t = time.monotonic()
                try:
                    status, exact = self.send(s)
                except requests.RequestException:
                    status, exact = "exception", False
                self.records.append((t, time.monotonic(), status, exact))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def summarize(scenario: str, records: list, fault_at: float, window: float) -> dict:
    during = [r for r in records if r[1] >= fault_at and r[0] < fault_at + window]  # in flight at the fault too
    after = [r for r in records if r[0] >= fault_at + window]
    errors = collections.Counter(str(r[2]) for r in records if not (r[2] == 200 and r[3]))
    latency = [(r[1] - r[0]) * 1e3 for r in during]
    return {
        "scenario": scenario,
        "requests": len(records),
        "success_rate_during": sum(r[2] == 200 and r[3] for r in during) / max(1, len(during)),
        "success_rate_after": sum(r[2] == 200 and r[3] for r in after) / max(1, len(after)),
        "errors_by_status": dict(errors),
        "p99_ms_during": float(np.percentile(latency, 99)) if latency else 0.0,
        "lost_rows": 0,
        "duplicated_rows": 0,
        "requests_during": len(during),
        "requests_after": len(after),
    }


def replica_pids(app: str, deployment: str) -> list[int]:
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    actors = [ray.get_actor(n, namespace="serve") for n in names]
    return ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in actors])


def kill_one(app: str, deployment: str) -> float:
    pids = replica_pids(app, deployment)
    if len(pids) < 2:
        raise RuntimeError(f"{deployment} has {len(pids)} replicas; the scenario needs 2")
    os.kill(pids[0], signal.SIGKILL)
    return time.monotonic()


def replica_scenarios(corpus: Corpus, args) -> list[dict]:
    """``shard-replica-kill`` and ``encoder-kill`` on one app with 2 replicas of each shard and of the encoder."""
    from ray import serve

    from rayhash.serve import start

    url = start(
        corpus.index.uri,
        port=args.port,
        name="chaos",
        ready_timeout_s=600,
        shards={"num_replicas": 2},
        encoder={"num_replicas": 2},
        timeout_s=10.0,
    )
    rows = []
    try:
        rng = np.random.default_rng(0)
        queries = corpus.codes[rng.choice(N_IMAGES, 16)]
        body = {"codes": corpus.to_hex(queries), "k": 50}
        want = corpus.expected(queries, 50)

        def codes(s):
            r = s.post(f"{url}/search/codes", json=body, timeout=30)
            return r.status_code, r.status_code == 200 and r.json()["results"] == want

        image = corpus.png(7)
        want_image = corpus.expected(corpus.codes[7:8], 10)[0]

        def images(s):
            r = s.post(f"{url}/search/image", params={"k": 10}, files={"file": ("q.png", image)}, timeout=30)
            return r.status_code, r.status_code == 200 and r.json()["results"] == want_image

        for scenario, send, deployment in (
            ("shard-replica-kill", codes, "shard-0"),
            ("encoder-kill", images, "encoder"),
        ):
            with Load(send, args.threads) as load:
                time.sleep(args.warmup)
                fault_at = kill_one("chaos", deployment)
                time.sleep(args.window + args.after)
            rows.append(summarize(scenario, load.records, fault_at, args.window))
            logger.info("%s", rows[-1])
            wait_replicas("chaos", deployment, 2, timeout_s=120)
    finally:
        serve.delete("chaos")
    return rows


def wait_replicas(app: str, deployment: str, n: int, timeout_s: float) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if serve.status().applications[app].deployments[deployment].replica_states.get("RUNNING", 0) >= n:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{deployment} did not get back to {n} replicas within {timeout_s:g} s")


def tampered_artifacts(corpus: Corpus, work: Path) -> dict:
    """One byte changed in a copy of each artifact's file: each load must refuse it, naming the file."""
    from rayhash.encode import codeset
    from rayhash.index import indexset
    from rayhash.models import checkpoint

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    copies = {
        name: Path(shutil.copytree(src, work / f"tampered-{name}"))
        for name, src in (
            ("checkpoint", corpus.checkpoint),
            ("codes", corpus.codeset.uri),
            ("index", corpus.index.uri),
        )
    }
    targets = {
        "checkpoint": (next(copies["checkpoint"].glob("*.pt")), lambda: checkpoint.load(str(copies["checkpoint"]))),
        "code shard": (
            copies["codes"] / corpus.codeset.shards[0].path,
            lambda: codeset.read_codes(codeset.read_manifest(str(copies["codes"]))),
        ),
        "index shard": (
            copies["index"] / corpus.index.shards[1].index_path,
            lambda: indexset.load_shard(str(copies["index"]), 1),
        ),
    }
    errors, named = collections.Counter(), 0
    for what, (path, load) in targets.items():
        flip(path)
        try:
            load()
            errors["accepted"] += 1
            logger.error("tampered %s at %s was accepted", what, path)
        except Exception as e:
            errors[type(e).__name__] += 1
            named += path.name in str(e)
            logger.info("tampered %s refused: %s", what, str(e)[:200])
    return {
        "scenario": "tampered-artifacts",
        "requests": len(targets),
        "success_rate_during": named / len(targets),  # refused, naming the changed file
        "success_rate_after": 1.0 if not errors["accepted"] else 0.0,
        "errors_by_status": dict(errors),
        "p99_ms_during": 0.0,
        "lost_rows": 0,
        "duplicated_rows": 0,
    }


def hostile(corpus: Corpus, args) -> dict:
    from chaos_hostile import TOKEN, expected, hostile_requests
    from ray import serve

    from rayhash.serve import start
    from rayhash.serve.auth import TOKEN_ENV

    url = start(
        corpus.index.uri,
        port=args.port,
        name="chaos-hostile",
        route_prefix="/h",
        ready_timeout_s=600,
        ingress={"ray_actor_options": {"runtime_env": {"env_vars": {TOKEN_ENV: TOKEN}}}},
    )
    try:
        answers, latencies = hostile_requests(url, corpus)
        statuses = collections.Counter(str(status) for _, status in answers)
        good = requests.post(
            f"{url}/search/codes",
            json={"codes": corpus.to_hex(corpus.codes[:2]), "k": 5},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        ok_after = good.status_code == 200 and good.json()["results"] == corpus.expected(corpus.codes[:2], 5)
        served_5xx = [name for name, status in answers if str(status).startswith("5")]
        return {
            "scenario": "hostile",
            "requests": len(answers),
            # each answered as expected: mostly a 4xx naming the problem
            "success_rate_during": sum(status == expected(name) for name, status in answers) / len(answers),
            "success_rate_after": 1.0 if ok_after else 0.0,
            "errors_by_status": dict(statuses),
            "p99_ms_during": float(np.percentile(latencies, 99)),
            "lost_rows": 0,
            "duplicated_rows": 0,
            "cases": {name: status for name, status in answers},
            "unexpected": {name: status for name, status in answers if status != expected(name)},
            "answered_5xx": served_5xx,
        }
    finally:
        serve.delete("chaos-hostile")


S3_ENV = {"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """A moto S3 server on loopback that can go away and come back on the same port, its
    buckets intact (moto keeps them in this process while the HTTP server is down)."""

    def __init__(self, port: int):
        self.port, self.server = port, None
        self.endpoint = f"http://127.0.0.1:{port}"

    def up(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()

    def down(self) -> None:
        self.server.stop()


def s3_outage_encode(corpus: Corpus, s3: S3Server, work: Path) -> dict:
    """The S3 endpoint goes away mid-encode: the job fails with a clear error, the code set
    committed before stays whole, and a rerun once S3 is back commits every input once, each
    code equal to the model's."""
    import boto3
    import torch

    from rayhash import storage
    from rayhash.encode import EncodeConfig, codeset, run_encode
    from rayhash.models import ModelConfig, build_model, checkpoint
    from rayhash.models.encoder import ImageEncoder

    boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").create_bucket(Bucket="chaos")
    n = 600
    for i in range(n):
        storage.write_bytes_atomic(f"s3://chaos/lake/{i:05d}.png", corpus.png(i))
    torch.manual_seed(1)  # a second model: its run writes new chunks rather than reusing the first's
    model_cfg = {"backbone": "small_cnn", "bits": 64}
    second = str(work / "ckpt-2")
    checkpoint.save(second, config={"model": model_cfg}, model=build_model(ModelConfig(**model_cfg)).state_dict())

    def encode(ckpt: str, on_staged=None):
        cfg = EncodeConfig(
            input="s3://chaos/lake",
            checkpoint=ckpt,
            output="s3://chaos/codes",
            rows_per_shard=100,
            read_batch=50,
            cpus_per_actor=0.5,
            progress=False,
        )
        return run_encode(cfg, on_staged=on_staged)

    before = encode(corpus.checkpoint)
    outage = {"at": None}

    def cut(done: int, total: int) -> None:
        if outage["at"] is None and done >= 2:  # two chunks staged: the S3 endpoint goes away
            outage["at"] = time.monotonic()
            s3.down()

    errors = collections.Counter()
    try:
        encode(second, on_staged=cut)
        errors["committed despite the outage"] += 1
    except Exception as e:  # what the user sees
        errors[type(e).__name__] += 1
        logger.info("encode during the S3 outage failed: %s", str(e)[:300])
    failed_after = time.monotonic() - outage["at"] if outage["at"] else None
    s3.up()
    intact = codeset.read_manifest("s3://chaos/codes").sha256 == before.sha256
    ids_before, codes_before, _ = codeset.read_codes(before)  # every shard's SHA-256 checked
    after = encode(second)
    ids, codes, _ = codeset.read_codes(after)
    want = ImageEncoder.from_checkpoint(second, device="cpu").encode([corpus.images[int(i.split(".")[0])] for i in ids])
    identical = sum(np.array_equal(c, w) for c, w in zip(codes, want))
    return {
        "scenario": "s3-outage-encode",
        "requests": n,
        "success_rate_during": 0.0 if errors["committed despite the outage"] == 0 else 1.0,
        "success_rate_after": identical / n,
        "errors_by_status": dict(errors),
        "p99_ms_during": 0.0,
        "lost_rows": n - len(set(ids)),
        "duplicated_rows": len(ids) - len(set(ids)),
        "previous_code_set_intact": bool(intact and len(ids_before) == n),
        "seconds_to_fail_after_outage": failed_after,
    }


def train_node_loss() -> dict:
    """:mod:`chaos_train` in a process of its own: it starts its own 2-node cluster."""
    import json
    import subprocess

    here = Path(__file__).resolve().parent
    run = subprocess.run(
        [sys.executable, str(here / "chaos_train.py"), "--rounds", "4", "--lose-after-round", "1"],
        cwd=here.parent,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith('{"scenario"')]
    if not lines:
        raise RuntimeError(f"chaos_train.py printed no row (exit {run.returncode}): {run.stderr[-2000:]}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scenarios",
        default="shard-replica-kill,encoder-kill,train-node-loss,s3-outage-encode,tampered-artifacts,hostile",
    )
    parser.add_argument("--s3-port", type=int, default=8798)
    parser.add_argument("--threads", type=int, default=4, help="clients in the load loop")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the fault")
    parser.add_argument("--window", type=float, default=5.0, help="seconds after the fault that count as during")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after the window")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--out", default="benchmarks/results/chaos.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import ray

    s3 = S3Server(args.s3_port)
    s3.up()  # before Ray starts, so its workers get the endpoint
    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3.endpoint}
    os.environ.update(env)
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": env},
    )
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    corpus = Corpus(work)
    wanted = args.scenarios.split(",")
    rows = []
    if {"shard-replica-kill", "encoder-kill"} & set(wanted):
        rows += [r for r in replica_scenarios(corpus, args) if r["scenario"] in wanted]
    if "train-node-loss" in wanted:
        rows.append(train_node_loss())
    if "s3-outage-encode" in wanted:
        rows.append(s3_outage_encode(corpus, s3, work))
    if "tampered-artifacts" in wanted:
        rows.append(tampered_artifacts(corpus, work))
    if "hostile" in wanted:
        rows.append(hostile(corpus, args))
    for r in rows:
        r["hardware"] = hardware()
    write_result(args.out, {"command": command_line(), "rows": rows})
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
