"""live_bench.py's rows that run on a Ray cluster of this process: writes under search, and a swap.

The cluster starts as ``rayhash serve`` starts one (Serve's fast path on: see rayhash.cli.connect_ray).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import requests

K = 100  # PROTOCOL.md: search figures at k = 100
APP_WRITES, APP_SWAP = "live-writes", "live-swap"


def cluster() -> None:
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")


def hex_body(codes: np.ndarray, k: int = K) -> dict:
    return {"codes": [bytes(r).hex() for r in codes], "k": k}


def shard_pids(app: str) -> list[int]:
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{app}#shard-")
    ]
    actors = [ray.get_actor(n, namespace="serve") for n in names]
    return [ray.get(a.__ray_call__.remote(lambda _: os.getpid())) for a in actors]


def writes_row(index, q: np.ndarray, args) -> dict:
    """Single-item writes as fast as they are acknowledged, beside one-at-a-time searches; then
    every shard replica SIGKILLed, and every acknowledged item searched for."""
    from rayhash.serve import start, stop

    cluster()
    url = start(
        index.uri,
        encode_images=False,
        writes=True,
        name=APP_WRITES,
        port=args.port + 1,
        ready_timeout_s=900,
        shards={"num_replicas": 2, "health_check_period_s": 1, "health_check_timeout_s": 5},
    )
    rng = np.random.default_rng(7)
    acked, search_ms, stop_at = {}, [], time.monotonic() + args.write_seconds

    def writer():
        with requests.Session() as s:
            i = 0
            while time.monotonic() < stop_at:
                code = rng.integers(0, 256, 8, dtype=np.uint8)
                r = s.post(f"{url}/items", json={"items": [{"id": f"written-{i:07d}", "code": code.tobytes().hex()}]})
                if r.status_code == 200:
                    acked[f"written-{i:07d}"] = code
                i += 1

    def searcher():
        with requests.Session() as s:
            j = 0
            while time.monotonic() < stop_at:
                t = time.perf_counter()
                s.post(f"{url}/search/codes", json=hex_body(q[j % len(q)][None]), timeout=30).raise_for_status()
                search_ms.append((time.perf_counter() - t) * 1e3)
                j += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=writer), threading.Thread(target=searcher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    killed = shard_pids(APP_WRITES)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # the replacements answer once they have loaded and replayed the log
        time.sleep(1.0)
        fresh = set(shard_pids(APP_WRITES)) - set(killed)
        if len(fresh) == len(killed) and requests.post(f"{url}/search/codes", json=hex_body(q[:1])).status_code == 200:
            break
    ids, codes = list(acked), np.stack(list(acked.values()))
    lost = 0
    for lo in range(0, len(ids), 256):
        r = requests.post(f"{url}/search/codes", json=hex_body(codes[lo : lo + 256], 5), timeout=120)
        r.raise_for_status()
        lost += sum(i not in {x["id"] for x in res} for i, res in zip(ids[lo : lo + 256], r.json()["results"]))
    stop(APP_WRITES)
    p50, p99 = np.percentile(search_ms, 50), np.percentile(search_ms, 99)
    return {
        "kind": "writes",
        "codes": index.items,
        "index": index.kind,
        "placement": "deployments",
        "shard_replicas": len(killed),
        "items_per_write": 1,
        "seconds": round(elapsed, 2),
        "acked": len(acked),
        "acked_per_s": len(acked) / elapsed,
        "searches": len(search_ms),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "killed_shard_processes": len(killed),
        "acked_lost_after_kill": int(lost),
    }


def swap_row(index_a, index_b, q: np.ndarray, args) -> dict:
    """Swap A -> B and back under clients sending one query at a time; every answer checked
    against its named version's answer to the same query while that version alone served."""
    from rayhash.serve import start, stop
    from rayhash.serve.swap import swap

    cluster()
    url = start(index_a.uri, encode_images=False, shards_in_ingress=None, name=APP_SWAP, port=args.port + 2)
    queries = q[:50]

    def reference() -> tuple[str, list]:
        with requests.Session() as s:
            answers = [s.post(f"{url}/search/codes", json=hex_body(row[None])).json() for row in queries]
        return answers[0]["index_version"], [a["results"] for a in answers]

    va, ref_a = reference()
    placement = requests.get(f"{url}/stats", timeout=30).json()["placement"]
    answers, stopping = [], threading.Event()

    def client(c: int):
        with requests.Session() as s:
            j = c
            while not stopping.is_set():
                try:
                    r = s.post(f"{url}/search/codes", json=hex_body(queries[j % len(queries)][None]), timeout=30)
                    answers.append((j % len(queries), r.status_code, r.json() if r.status_code == 200 else r.text))
                except requests.RequestException as e:
                    answers.append((j % len(queries), None, repr(e)))
                j += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.swap_clients)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    forward = swap(index_b.uri, name=APP_SWAP)
    time.sleep(2.0)
    back = swap(index_a.uri, name=APP_SWAP)
    time.sleep(2.0)
    stopping.set()
    for t in threads:
        t.join()
    swap(index_b.uri, name=APP_SWAP)
    vb, ref_b = reference()
    stop(APP_SWAP)
    refs = {va: ref_a, vb: ref_b}
    errors = [a for a in answers if a[1] != 200]
    ok = [a for a in answers if a[1] == 200]
    mixed = sum(
        body["index_version"] not in refs or body["results"] != refs[body["index_version"]][i] for i, _, body in ok
    )
    by_version = {v: sum(body["index_version"] == v for _, _, body in ok) for v in refs}
    return {
        "kind": "swap",
        "codes": index_a.items,
        "index": index_a.kind,
        "placement": placement,
        "clients": args.swap_clients,
        "swaps": [
            {k: forward[k] for k in ("from", "to", "seconds")},
            {k: back[k] for k in ("from", "to", "seconds")},
        ],
        "requests": len(answers),
        "errors": len(errors),
        "error_examples": [str(e[2])[:200] for e in errors[:3]],
        "mixed_answers": int(mixed),
        "answers_by_version": by_version,
        "queries_whose_answers_differ": sum(a != b for a, b in zip(ref_a, ref_b)),
        "distinct_queries": len(queries),
    }
