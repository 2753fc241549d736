"""The live index's figures: the default serving path's latency, writes under search, a swap.

    python benchmarks/live_bench.py                    # -> benchmarks/results/live.json

Rows, each measured in this one run on this machine:

- ``latency``: ``rayhash serve`` started as users start it (a subprocess, its defaults, a local
  Ray cluster of its own), then one query at a time over a kept-alive connection to the URL it
  prints, 64-bit codes at ``--codes`` items, IVF and flat; beside direct faiss on the same
  queries (one call per query, one thread) in the same run. Then ``--concurrency`` requests of
  ``--batch`` queries in flight at the same URL, for the batched throughput.
- ``writes``: a service with ``writes=true`` (shard deployments, 2 replicas each) over the IVF
  index; one client adds single items as fast as it is acknowledged while another searches one
  query at a time; then every shard replica's process is SIGKILLed and each acknowledged item is
  searched for once the replacements answer.
- ``swap``: the default service over index version A, then a blue/green swap to version B (other
  codes) under ``--swap-clients`` clients sending one query at a time; each answer is checked
  against its named version's answer to the same query taken while only that version served.

The codes are search_bench.py's: ITQ codes of Fashion-MNIST pixels, repeated with bits flipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import requests
from results_io import command_line, hardware, write_result
from search_bench import http_load, request_bodies, structured_codes

from rayhash.encode.codeset import write_codeset
from rayhash.index import build_index_set, indexset
from rayhash.index import shards as shards_lib

K = 100  # PROTOCOL.md: search figures at k = 100


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def code_set_and_indexes(work: Path, n: int, seed: int, kinds: tuple[str, ...]) -> tuple[dict, np.ndarray]:
    db, q = structured_codes(n, 64, seed=seed)
    ids = [f"{seed}-{i:09d}" for i in range(n)]
    cs = write_codeset(
        str(work / f"codes-{seed}"),
        ids=ids,
        codes=db,
        sources=ids,
        nbits=64,
        checkpoint_uri="itq:fmnist-1k-raw-pixels",
        checkpoint_sha256="0" * 64,
        config={"codes": "ITQ of Fashion-MNIST pixels, repeated, bits flipped"},
    )
    # IVF probes 16 of its 1,024 lists: search.json's setting (recall@100 0.998 at 1M), so the
    # batched figure compares with it; the index set carries it, and the service uses its own.
    opts = {"ivf": {"nprobe": 16}, "flat": {}}
    built = {
        kind: build_index_set(cs.uri, str(work / f"index-{seed}-{kind}"), num_shards=2, kind=kind, **opts[kind])
        for kind in kinds
    }
    return built, q


def direct_index(index_uri: str):
    """The index set's shards as one faiss index, as the default service holds them (IVF merged)."""
    m = indexset.read_index_manifest(index_uri)
    loaded = [indexset.load_shard(m, i) for i in range(len(m.shards))]
    return shards_lib.merge_shards(loaded) if m.kind == "ivf" else loaded


def direct_single_ms(index_uri: str, q: np.ndarray) -> tuple[float, float]:
    """One faiss call per query, one thread: ``(p50, p99)`` ms, over every shard as served."""
    held = direct_index(index_uri)
    parts = held if isinstance(held, list) else [held]
    lat = []
    faiss.omp_set_num_threads(1)
    for i in range(len(q)):
        t = time.perf_counter()
        for p in parts:
            p.search_keys(q[i : i + 1], K)
        lat.append((time.perf_counter() - t) * 1e3)
    return percentiles(lat)


def rayhash_serve(index_uri: str, port: int) -> tuple[subprocess.Popen, str, list[str]]:
    """``rayhash serve`` as a user runs it: the process, the URL it prints, and every ingress
    replica's URL it lists (clients spread batches over those)."""
    cmd = [sys.executable, "-m", "rayhash", "serve", "--index", index_uri, "--port", str(port), "--encode_images=false"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # keeps its pipe drained
    deadline, url, printed = time.monotonic() + 600, None, time.monotonic()
    while time.monotonic() < deadline and proc.poll() is None:
        text = "".join(lines)
        url = url or next(iter(re.findall(r"answering at (\S+)", text)), None)
        replicas = re.findall(r"ingress replicas at ([^;]+);", text)
        if replicas or (url and time.monotonic() > printed + 10):
            return proc, url, replicas[0].split() if replicas else [url]
        if url is None:
            printed = time.monotonic()
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"rayhash serve printed no URL: {' '.join(cmd)}\n{''.join(lines)[-2000:]}")


def one_at_a_time(url: str, q: np.ndarray) -> list[float]:
    """Latencies (ms) of one query per request, one request at a time (search_bench's client)."""
    _, lat, _ = asyncio.run(http_load([url], request_bodies(q, 1, K, "objects", packed=False), 1))
    return lat


def batched_qps(urls: list[str], q: np.ndarray, concurrency: int, batch: int) -> float:
    """Queries/s with ``concurrency`` requests of ``batch`` queries in flight, spread over ``urls``:
    search.json's batched row."""
    bodies = request_bodies(q, batch, K, "objects", packed=False)
    asyncio.run(http_load(urls, bodies[: 2 * concurrency], concurrency))  # warm up
    rounds = max(1, -(-2 * concurrency // len(bodies)), 2000 // len(q))
    rps, _, _ = asyncio.run(http_load(urls, bodies * rounds, concurrency))
    return rps * len(q) / len(bodies)


def search_json_qps(kind: str, codes: int, batch: int) -> float | None:
    """search.json's served q/s for the same batched load (binary codes held by the ingress)."""
    with open("benchmarks/results/search.json") as f:
        rows = json.load(f)["rows"]
    for r in rows:
        same = (r.get("code_kind", "binary"), r["codes"], r["index"], r["placement"]) == (
            "binary",
            codes,
            kind,
            "ingress",
        )
        if same and (r["concurrency"], r["queries_per_request"], r["format"]) == (16, batch, "objects"):
            return r["served_qps"]
    return None


def latency_rows(indexes: dict, q: np.ndarray, args) -> list[dict]:
    rows = []
    for kind, index in indexes.items():
        proc, url, replicas = rayhash_serve(index.uri, args.port)
        try:
            one_at_a_time(url, q[:50])  # warm up
            lat = one_at_a_time(url, q[: args.single])
            qps = batched_qps(replicas, q, args.concurrency, args.batch)
            stats = requests.get(f"{url}/stats", timeout=30).json()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
        p50, p99 = percentiles(lat)
        d50, d99 = direct_single_ms(index.uri, q[: args.single])
        rows.append(
            {
                "kind": "latency",
                "codes": index.items,
                "bits": 64,
                "index": kind,
                "path": "default",
                "url": re.sub(r":\d+", ":PORT", url),
                "placement": stats["placement"],
                "k": K,
                "queries": len(lat),
                "p50_ms": p50,
                "p99_ms": p99,
                "direct_p50_ms": d50,
                "direct_p99_ms": d99,
                "ingress_replicas": len(replicas),
                "batched": {
                    "concurrency": args.concurrency,
                    "queries_per_request": args.batch,
                    "format": "objects",
                    "spread_over_replica_urls": len(replicas),
                    "qps": qps,
                    "search_json_qps": search_json_qps(kind, index.items, args.batch),
                },
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codes", type=int, default=1_000_000)
    parser.add_argument("--single", type=int, default=1000, help="queries sent one at a time per latency row")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="queries per request in the batched measurement")
    parser.add_argument("--write-seconds", type=float, default=20.0)
    parser.add_argument("--swap-clients", type=int, default=4)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default="benchmarks/results/live.json")
    args = parser.parse_args()
    from live_bench_cluster import swap_row, writes_row

    work = Path(args.workdir or tempfile.mkdtemp(prefix="live-bench-"))
    indexes, q = code_set_and_indexes(work, args.codes, seed=0, kinds=("ivf", "flat"))
    rows = latency_rows(indexes, q, args)
    result = {"command": command_line(), "hardware": hardware(), "rows": rows}
    write_result(args.out, result)
    other, _ = code_set_and_indexes(work, args.codes, seed=1, kinds=("ivf",))
    writable, _ = code_set_and_indexes(work, args.codes, seed=2, kinds=("ivf",))
    rows.append(writes_row(writable["ivf"], q, args))
    print(rows[-1], flush=True)
    write_result(args.out, result)
    rows.append(swap_row(indexes["ivf"], other["ivf"], q, args))
    print(rows[-1], flush=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
