"""Search speed (PROTOCOL.md "Speed"): direct faiss vs the served endpoint, IVF vs flat, for
binary codes (Hamming) and, with ``--code-kind pq``, product-quantised codes.

    python benchmarks/search_bench.py --sizes 1000000,10000000 --batch 64 --workdir /tmp/sbwork
    python benchmarks/search_bench.py --code-kind pq --sizes 1000000,10000000 --placements ingress \
        --formats arrow --queries 200 --min-queries 400 --single-queries 100

PQ codes (``--code-kind pq``, 8 bytes: M = 8 sub-spaces of 256 centroids over a 64-dim vector,
DeepQuan's 64-bit shape): the 70,000 images' raw pixels projected on their 64 principal axes
(fitted on the fmnist-1k training images), quantised by codebooks k-means fitted on those
training vectors; the database repeats the 69,000 non-query images' codes and replaces each
sub-space's centroid of each copy by a random one with probability 6%; queries are the query
images' codes, sent as codes (``/search/codes``, ``/search/packed``) and searched by their
reconstructions, as the service does, and searched directly by the same reconstructions.
Flat is ``IndexPQ`` and IVF ``IndexIVFPQ``, both holding those codebooks
(:mod:`rayhash.index.pq`). Rows carry ``code_kind``; a run of one kind keeps the other kind's
rows in the output file, each row holding its own ``command``.

Codes with the structure of real ones: ITQ (64 bits) of the 70,000 Fashion-MNIST images' raw
pixels, fitted on the fmnist-1k training images; the database repeats the 69,000 non-query
images' codes and flips each bit of each copy with probability 6%; the protocol's 1,000 query
images are the queries. Every ratio is measured within one run on the same machine, codes and
thread budget: direct = one faiss call over the 1,000 queries in this process, at the better of
1 and ``--threads`` OpenMP threads, measured before and after the served run; served = HTTP on
127.0.0.1 to a Serve app of ``--shards`` shards, held by ``--ingress-replicas`` ingress replicas
themselves (``--placements ingress``; IVF shards merged into one index per replica) and/or by
one deployment each (``deployments``), faiss at one thread per search: one query at a time
(concurrency 1, against one faiss call per query in this process), then ``--concurrency``
requests in flight of one query each, then of ``--batch`` queries each in each of ``--formats``
(the API's default list of ``{"id", "distance"}`` per query, ``columns``, and ``arrow``), then
of each ``--bulk-batch`` size in ``arrow``, sent as a bulk client would: the codes' raw bytes to
``/search/packed`` (``--bulk-body packed``) or hex in JSON. Every served run records the CPU
each role spent per query (``cpu_us_per_query``, from ``/proc``: ingress replicas, shard
replicas, this load generator, everything else, whose busiest processes
``other_cpu_us_per_query`` names), beside ``direct_cpu_us_per_query``: on a machine whose
cores the served run fills, served over direct cannot pass the ratio of those.
Requests go to the ingress replicas' own ports when Serve runs direct ingress (the default
here), spread evenly, else through Serve's proxy; the concurrency-1 row also times the proxy
path. The load generator is one aiohttp client with a keep-alive connection per request in
flight, parsing answers with orjson or pyarrow (it shares the machine's cores with the
service). ``direct_topk_qps`` is ``rayhash.index.search.topk`` in this process: what each
served shard computes. Writes ``benchmarks/results/search.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import orjson
import pyarrow as pa
from results_io import command_line, write_result

from rayhash.baselines import ITQ
from rayhash.codespec import binary as codes_lib
from rayhash.codespec import pq as pq_lib
from rayhash.data import load_fashion_mnist, protocol_split
from rayhash.encode.codeset import write_codeset
from rayhash.index import build_index_set, topk
from rayhash.index import pq as pq_index
from rayhash.index.build import ivf_template

logger = logging.getLogger("search_bench")
FLIP = 0.06


def structured_codes(n: int, nbits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(database codes (n, nbits/8), query codes (1000, nbits/8))`` as the module doc says."""
    data = load_fashion_mnist()
    split = protocol_split("fmnist-1k", data.labels)
    pixels = data.images.reshape(len(data), -1).astype(np.float32) / 255.0
    itq = ITQ().fit(pixels[split.train], nbits, seed=seed)
    packed = codes_lib.pack(itq.encode(pixels))
    base = packed[split.database]
    rng = np.random.default_rng(seed)
    db = np.empty((n, nbits // 8), dtype=np.uint8)
    for lo in range(0, n, 1 << 20):  # flip bits a chunk at a time: 10M x 64 floats at once is 5 GB
        hi = min(n, lo + (1 << 20))
        flips = np.packbits(rng.random((hi - lo, nbits)) < FLIP, axis=1)
        db[lo:hi] = base[np.arange(lo, hi) % len(base)] ^ flips
    return db, packed[split.query]


def structured_pq_codes(n: int, m: int = 8, d_sub: int = 8, seed: int = 0):
    """``(spec, database codes (n, M), query codes (1000, M))`` as the module doc says."""
    data = load_fashion_mnist()
    split = protocol_split("fmnist-1k", data.labels)
    pixels = data.images.reshape(len(data), -1).astype(np.float32) / 255.0
    mean = pixels[split.train].mean(0)
    axes = np.linalg.svd(pixels[split.train] - mean, full_matrices=False)[2][: m * d_sub]
    z = (pixels - mean) @ axes.T
    spec = pq_lib.fit(z[split.train], m, 256, niter=20, seed=seed)
    base = pq_lib.encode(spec, z[split.database])
    rng = np.random.default_rng(seed)
    db = np.empty((n, m), dtype=np.uint8)
    for lo in range(0, n, 1 << 20):
        hi = min(n, lo + (1 << 20))
        chunk = base[np.arange(lo, hi) % len(base)]
        swap = rng.random(chunk.shape) < FLIP
        chunk[swap] = rng.integers(0, 256, int(swap.sum()), dtype=np.uint8)
        db[lo:hi] = chunk
    return spec, db, pq_lib.encode(spec, z[split.query])


def timed(fn, repeat: int = 3) -> float:
    """Median wall time of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def direct_qps(index, q: np.ndarray, k: int, threads: int, repeat: int = 3) -> tuple[float, dict]:
    """Queries per second of one faiss call over all queries, at the best of 1..threads OpenMP
    threads (on a busy machine one thread can beat two): ``(best, {threads: qps})``."""
    by_threads = {}
    for t in sorted({1, threads}):
        faiss.omp_set_num_threads(t)
        by_threads[t] = len(q) / timed(lambda: index.search(q, k), repeat)
    faiss.omp_set_num_threads(threads)
    return max(by_threads.values()), by_threads


def single_query_ms(index, q: np.ndarray, k: int, threads: int, n: int = 200) -> tuple[float, float, float]:
    """One faiss call per query: ``(p50, p99, mean)`` milliseconds."""
    faiss.omp_set_num_threads(threads)
    lat = []
    for i in range(min(n, len(q))):
        t = time.perf_counter()
        index.search(q[i : i + 1], k)
        lat.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99)), float(np.mean(lat))


def recall_at_k(dist: np.ndarray, exact_kth: np.ndarray, k: int) -> float:
    """PROTOCOL.md: mean over queries of (returned items within the exact k-th distance) / k."""
    return float(((dist[:, :k] <= exact_kth[:, None]) & (dist[:, :k] >= 0)).sum(1).mean() / k)


def parse_answer(data: bytes, fmt: str):
    """What a client does with an answer before using it: JSON into objects, or an Arrow stream into a table."""
    return pa.ipc.open_stream(data).read_all() if fmt == "arrow" else orjson.loads(data)


def answer_distances(answer, fmt: str) -> list[list[int]]:
    if fmt == "arrow":
        return answer["distances"].to_pylist()
    return [[r["distance"] for r in res] if fmt == "objects" else res["distances"] for res in answer["results"]]


def request_bodies(q: np.ndarray, per_request: int, k: int, fmt: str, packed: bool) -> list[dict]:
    """One request per ``per_request`` queries: hex codes as JSON for ``/search/codes``, or with
    ``packed`` the codes' bytes for ``/search/packed`` (key ``"packed"``; the rest go as query parameters)."""
    chunks = [q[i : i + per_request] for i in range(0, len(q), per_request)]
    if packed:
        return [{"packed": c.tobytes(), "k": k, "format": fmt} for c in chunks]
    return [{"codes": [bytes(row).hex() for row in c], "k": k, "format": fmt} for c in chunks]


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """``{pid: (command line, CPU seconds so far)}`` of every process (Linux ``/proc``; empty elsewhere)."""
    if not os.path.isdir("/proc"):
        return {}
    out, tick = {}, os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        out[int(pid)] = (cmd, (int(fields[11]) + int(fields[12])) / tick)  # utime + stime
    return out


def cpu_by_role(before: dict, after: dict, app: str) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds spent between two :func:`cpu_seconds` snapshots by the app's ingress replicas,
    its shard replicas, this process (the load generator) and everything else; and the "else"
    by process (its command's first two words), the busiest five."""
    roles = dict.fromkeys(("ingress", "shards", "load_generator", "other"), 0.0)
    other: dict[str, float] = {}
    for pid, (cmd, t) in after.items():
        used = t - before.get(pid, (cmd, 0.0))[1]
        if pid == os.getpid():
            roles["load_generator"] += used
        elif f"ServeReplica:{app}:ingress" in cmd:
            roles["ingress"] += used
        elif f"ServeReplica:{app}:" in cmd:
            roles["shards"] += used
        else:
            roles["other"] += used
            name = " ".join(os.path.basename(w) for w in cmd.split()[:2])[:60]
            other[name] = other.get(name, 0.0) + used
    return roles, dict(sorted(other.items(), key=lambda kv: -kv[1])[:5])


async def http_load(urls: list[str], bodies: list[dict], concurrency: int) -> tuple[float, list[float], list]:
    """POST every body (see :func:`request_bodies`) with ``concurrency`` in flight, spread evenly
    over ``urls`` (one per ingress replica): (requests/s, latencies ms, parsed answers)."""
    import aiohttp

    answers: list = [None] * len(bodies)
    latencies: list[float] = []
    next_body = iter(range(len(bodies)))

    def post(client, url, body):
        if "packed" not in body:
            return client.post(f"{url}/search/codes", json=body)
        params = {key: str(v) for key, v in body.items() if key != "packed"}
        return client.post(
            f"{url}/search/packed",
            params=params,
            data=body["packed"],
            headers={"Content-Type": "application/octet-stream"},
        )

    async def worker(client, url):
        for i in next_body:
            t = time.perf_counter()
            async with post(client, url, bodies[i]) as r:
                data = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {data[:500]!r}")
                answers[i] = parse_answer(data, bodies[i].get("format", "objects"))
            latencies.append((time.perf_counter() - t) * 1e3)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as client:
        t = time.perf_counter()
        await asyncio.gather(*(worker(client, urls[w % len(urls)]) for w in range(concurrency)))
        elapsed = time.perf_counter() - t
    return len(bodies) / elapsed, latencies, answers


def serve_and_load(index_uri: str, q: np.ndarray, k: int, args, placement: str) -> list[dict]:
    """Deploy the index set; measure one query at a time, then ``--concurrency`` in flight of one
    query per request and of ``--batch`` per request, in each of ``--formats``."""
    from ray import serve

    from rayhash.serve import start
    from rayhash.serve.app import direct_ingress_urls

    in_ingress = placement == "ingress"
    # Each shard's search call gets its share of the thread budget (1 with the defaults); under
    # load several fan-out batches run at once, which is what fills the cores.
    threads = max(1, args.threads // args.shards)
    replicas = args.ingress_replicas if in_ingress else 1
    most = max(args.batch, *map(int, args.bulk_batch.split(",")))  # queries in the largest request
    proxy_url = start(
        index_uri,
        encode_images=False,
        port=args.port,
        name="bench",
        ready_timeout_s=600,
        threads=threads,
        max_queries=most,
        batch_rows=max(256, most),
        timeout_s=120.0,
        shards_in_ingress=in_ingress,
        ingress={"num_replicas": replicas},
    )
    direct = direct_ingress_urls("bench")
    urls = direct or [proxy_url]
    common = {
        "placement": placement,
        "http_path": "direct-ingress" if direct else "proxy",
        "ingress_replicas": replicas,
        "search_threads": threads,
    }
    out = []
    try:
        # (requests in flight, queries per request, answer format, request body)
        plan = [(1, 1, "objects", "json"), (args.concurrency, 1, "objects", "json")]
        plan += [(args.concurrency, args.batch, fmt, "json") for fmt in args.formats.split(",")]
        plan += [(args.concurrency, int(b), "arrow", args.bulk_body) for b in args.bulk_batch.split(",") if int(b)]
        for concurrency, per_request, fmt, request in plan:
            bodies = request_bodies(q, per_request, k, fmt, packed=request == "packed")
            # at least --min-queries, and two requests per connection: big requests must still fill every slot
            rounds = max(1, args.min_queries // len(q), -(-2 * concurrency // len(bodies)))
            if concurrency == 1:
                bodies, rounds = bodies[: args.single_queries], 1
            asyncio.run(http_load(urls, bodies[: 2 * concurrency], concurrency))  # warm up
            cpu_before = cpu_seconds()
            qps, lat, answers = asyncio.run(http_load(urls, bodies * rounds, concurrency))
            cpu, other = cpu_by_role(cpu_before, cpu_seconds(), "bench")
            served_queries = len(bodies) * rounds * per_request
            per_query = [d for a in answers[: len(bodies)] for d in answer_distances(a, fmt)]
            dist = np.array([d + [-1] * (k - len(d)) for d in per_query])
            row = {
                **common,
                "concurrency": concurrency,
                "queries_per_request": per_request,
                "format": fmt,
                "request_body": request,
                "served_qps": qps * per_request,
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "served_distances": dist,
                "cpu_us_per_query": {role: 1e6 * t / served_queries for role, t in cpu.items()},
                "other_cpu_us_per_query": {name: 1e6 * t / served_queries for name, t in other.items()},
            }
            if concurrency == 1 and direct:
                _, proxy_lat, _ = asyncio.run(http_load([proxy_url], bodies, 1))
                row.update(
                    proxy_p50_ms=float(np.percentile(proxy_lat, 50)), proxy_p99_ms=float(np.percentile(proxy_lat, 99))
                )
            out.append(row)
            logger.info("%s", {k_: v for k_, v in row.items() if k_ != "served_distances"})
    finally:
        serve.delete("bench")
    return out


def bench_size(n: int, args, work: Path) -> list[dict]:
    k, pq = args.k, args.code_kind == "pq"
    repeat = 3 if n <= 2_000_000 else 1  # a 10M flat pass takes seconds: one timing each there
    t0 = time.perf_counter()
    ids = [f"{i:09d}" for i in range(n)]
    nlist = args.nlist or (1024 if n <= 2_000_000 else 4096)
    train_size = min(n, 64 * nlist)  # build_index_set's default: the same lists, served or direct
    if pq:
        spec, db, sent = structured_pq_codes(n, seed=args.seed)
        sent = sent[: args.queries]  # what a client sends: codes
        q = pq_lib.decode(spec, sent)  # what the shards search for them, and direct faiss too
        nbits, what = spec.nbits, f"PQ (M={spec.m}) of Fashion-MNIST pixels' 64 principal components"
        cs_args = {"spec": spec, "checkpoint_uri": "pq:fmnist-1k-pca64-pixels"}
        flat = pq_index.flat_index(spec)
        pq_index.add_codes(flat, spec, db)
        ivf = pq_index.ivf_template(spec, db, nlist=nlist, nprobe=1, train_size=train_size, seed=args.seed)
        pq_index.add_codes(ivf, spec, db)
    else:
        nbits, what = args.bits, "ITQ of Fashion-MNIST pixels"
        db, q = structured_codes(n, nbits, seed=args.seed)
        q = sent = q[: args.queries]
        cs_args = {"nbits": nbits, "checkpoint_uri": "itq:fmnist-1k-raw-pixels"}
        flat = faiss.IndexBinaryFlat(nbits)
        flat.add(db)
        ivf = ivf_template(db, nbits, nlist=nlist, nprobe=1, train_size=train_size, seed=args.seed)
        ivf.add(db)
    cs = write_codeset(
        str(work / f"codes-{n}"),
        ids=ids,
        codes=db,
        sources=ids,
        checkpoint_sha256="0" * 64,
        config={"codes": f"{what}, repeated, {FLIP:.0%} of {'sub-codes replaced' if pq else 'bits flipped'}"},
        **cs_args,
    )
    del ids, db
    logger.info("%d codes, their code set and indexes in %.0f s", n, time.perf_counter() - t0)
    exact_d, _ = flat.search(q, k)
    sweep = []
    for nprobe in (16, 32, 64, 128, 256):
        ivf.nprobe = nprobe
        d, _ = ivf.search(q, k)
        sweep.append(
            {
                "nprobe": nprobe,
                "qps": direct_qps(ivf, q, k, args.threads, repeat)[0],
                "recall_at_100": recall_at_k(d, exact_d[:, k - 1], k),
            }
        )
        logger.info("ivf nlist=%d %s", nlist, sweep[-1])
    good = [s for s in sweep if s["recall_at_100"] >= args.target_recall] or sweep[-1:]
    ivf.nprobe = max(good, key=lambda s: s["qps"])["nprobe"]
    indexes = {"flat": flat, "ivf": ivf}
    # The sub-linear speed-up: both indexes timed in alternation, so both see the same machine.
    rounds = [
        {kind: direct_qps(index, q, k, args.threads, repeat)[1] for kind, index in indexes.items()}
        for _ in range(repeat)
    ]
    best_threads = {kind: max(rounds[0][kind], key=rounds[0][kind].get) for kind in indexes}
    speedup = float(np.median([max(r["ivf"].values()) / max(r["flat"].values()) for r in rounds]))
    topk_qps = {}
    for kind, index in indexes.items():  # sorted by (distance, position), as each served shard does
        faiss.omp_set_num_threads(best_threads[kind])
        topk_qps[kind] = len(q) / timed(lambda: topk(index, q, k), repeat=1 if kind == "flat" else repeat)  # noqa: B023 (timed calls it at once)
    faiss.omp_set_num_threads(args.threads)

    rows = []
    common = {
        "codes": n,
        "code_kind": args.code_kind,
        "bits": nbits,
        "queries": len(q),
        "k": k,
        "threads": args.threads,
        "shards": args.shards,
        "serve_throughput_optimized": not args.serve_default_env,
    }
    for kind, index in indexes.items():
        if kind not in args.kinds.split(","):
            continue
        params = {"nlist": nlist, "nprobe": int(ivf.nprobe), "seed": args.seed} if kind == "ivf" else {}
        ix = build_index_set(cs.uri, str(work / f"index-{kind}-{n}"), num_shards=args.shards, kind=kind, **params)
        for placement in args.placements.split(","):
            lat = single_query_ms(index, q, k, best_threads[kind])
            before, by_threads = direct_qps(index, q, k, args.threads, repeat)
            served = serve_and_load(ix.uri, sent, k, args, placement)
            after, _ = direct_qps(index, q, k, args.threads, repeat)  # again after: drift in the load shows as a gap
            direct = (before + after) / 2
            for s in served:
                dist = s.pop("served_distances")
                same = np.allclose if pq else np.array_equal  # float distances: to faiss's last bits
                if kind == "flat" and not same(dist, exact_d[: len(dist)]):
                    raise AssertionError("served flat results differ from a direct flat search")
                # One query at a time is compared with one faiss call per query; load, with one call for all.
                ref = 1e3 / lat[2] if s["concurrency"] == 1 else direct
                rows.append(
                    {
                        **common,
                        "command": command_line(),
                        "index": kind,
                        **params,
                        "direct_qps": ref,
                        **s,
                        "served_over_direct": s["served_qps"] / ref,
                        "direct_mode": "one query per call" if s["concurrency"] == 1 else "one call, all queries",
                        "served_over_direct_topk": s["served_qps"] / topk_qps[kind],
                        "direct_qps_before_after": [before, after],
                        "direct_qps_by_threads": by_threads,
                        # one thread's time per query: CPU without OpenMP's idle spinning
                        "direct_cpu_us_per_query": 1e6 / by_threads[1],
                        "direct_p50_ms": lat[0],
                        "direct_p99_ms": lat[1],
                        "speedup_over_flat": speedup if kind == "ivf" else 1.0,
                        "recall_at_100": recall_at_k(dist, exact_d[: len(dist), k - 1], k),
                        "direct_topk_qps": topk_qps[kind],
                        **({"nprobe_sweep": sweep} if kind == "ivf" else {}),
                    }
                )
                logger.info("%s", {k_: v for k_, v in rows[-1].items() if k_ != "nprobe_sweep"})
        shutil.rmtree(ix.uri, ignore_errors=True)
    shutil.rmtree(cs.uri, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--code-kind", choices=("binary", "pq"), default="binary")
    parser.add_argument("--bits", type=int, default=64, help="binary codes' length (pq codes are 64 bits: M=8)")
    parser.add_argument("--queries", type=int, default=1000, help="the first N of the protocol's 1,000 queries")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="faiss OpenMP threads in all: direct runs the best of 1 and this; served shards share it",
    )
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16, help="queries per request in the batched served run")
    parser.add_argument("--min-queries", type=int, default=2000, help="queries sent per served measurement")
    parser.add_argument("--single-queries", type=int, default=300, help="requests sent one at a time (concurrency 1)")
    parser.add_argument(
        "--placements",
        default="ingress,deployments",
        help="where the shards live: in the ingress replica, and/or one deployment each",
    )
    parser.add_argument(
        "--ingress-replicas",
        type=int,
        default=2,
        help="ingress replicas when they hold the shards; requests spread over their ports",
    )
    parser.add_argument("--formats", default="objects,columns,arrow", help="answer formats of the batched runs")
    parser.add_argument(
        "--bulk-batch",
        default="256",
        help="queries per request of last runs in the arrow format, as a bulk client sends: "
        "comma-separated sizes, one run each (0: none)",
    )
    parser.add_argument(
        "--bulk-body",
        choices=("json", "packed"),
        default="packed",
        help="how the bulk runs send their codes: hex in JSON (/search/codes) or raw bytes (/search/packed)",
    )
    parser.add_argument("--kinds", default="flat,ivf", help="indexes to measure")
    parser.add_argument("--nlist", type=int, default=None, help="default 1024 up to 2M codes, 4096 above")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--serve-default-env",
        action="store_true",
        help="keep Serve's default threads and transport (else RAY_SERVE_THROUGHPUT_OPTIMIZED=1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="working folder for code and index sets (default: a temp dir)")
    parser.add_argument("--out", default="benchmarks/results/search.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    faiss.omp_set_num_threads(args.threads)

    import ray

    if not args.serve_default_env:
        # Serve's own switch: user code and router on the replica's event loop, gRPC between
        # deployments. Set before Ray starts, so the proxy, controller and replicas all run it.
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        # Under direct ingress a deleted ingress replica stays up 30 s for load balancers to notice:
        # nothing balances here, and the benchmark deploys and deletes one app per measurement.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")  # a fresh local cluster
    work = Path(args.workdir or tempfile.mkdtemp(prefix="search-bench-"))
    # Rows of the other code kind stay (a row without code_kind is binary), with the command that made them.
    kept, command = [], command_line()
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = orjson.loads(f.read())
        kept = [r for r in old["rows"] if r.get("code_kind", "binary") != args.code_kind]
        if args.code_kind != "binary":
            command = old["command"] if kept else command
            kept = [{"command": old["command"], **r} if "command" not in r else r for r in kept]
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += bench_size(n, args, work)
        write_result(args.out, {"command": command, "rows": kept + rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
