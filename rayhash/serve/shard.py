"""One Serve deployment per index shard: loads its shard (checksum first) and searches it.

(With ``shards_in_ingress`` the ingress loads the shards itself and calls :func:`search_shard`
in a worker thread: the same search, one actor hop fewer per query.)

Concurrent requests are batched into one faiss call (``@serve.batch``): faiss scans codes
once per batch whatever the number of queries, so batching is where a busy shard gains its
throughput. faiss runs in a worker thread (it releases the GIL), keeping the replica's event
loop free to queue the next batch meanwhile.

With live writes (``writes=True``) a replica holds its shard as a
:class:`rayhash.index.live.LiveShard`: it replays the index set's write log when it starts, and
before any call whose ``min_seq`` (the last record the ingress acknowledged) it has not applied
yet, so a search that follows an acknowledged write sees it on every replica, restarted ones
included. Serve's handles cannot address one replica, so the log, not a broadcast, carries the
write to each.

Answers carry their ids as one flat Arrow string array, not a Python string per result:
gathering, pickling and unpickling a Python string per result would cost more than the faiss
search itself, and Arrow's buffers pass between processes without a per-result step.
"""

from __future__ import annotations

import asyncio
import logging

import faiss
import numpy as np
import pyarrow as pa
import ray
from ray import serve

from rayhash.index import indexset, writelog
from rayhash.index.live import LiveShard, answer_keys, as_arrow_ids
from rayhash.index.shards import IndexShard, fixed_width_ids, take_ids
from rayhash.serve.metrics import shard_items_gauge

logger = logging.getLogger(__name__)


def query_rows(codes: list[np.ndarray]) -> int:
    """Batch size in query rows, not requests: one request may carry many codes."""
    return sum(len(c) for c in codes)


def search_shard(shard: IndexShard, codes: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, global keys)`` of ``shard.search_keys`` with ``threads`` OpenMP threads; call
    it in the thread that searches. No ids: both callers look up only the ids they answer with
    (after the merge, or one request's slice)."""
    # OpenMP's thread count belongs to the calling thread: set it in the worker thread itself.
    faiss.omp_set_num_threads(threads)
    return shard.search_keys(codes, k)


def shard_info(shard: IndexShard) -> dict:
    return {"shard": shard.number, "items": len(shard), "nbits": shard.nbits, "code_kind": shard.code_kind}


def live_search(live: LiveShard, codes: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    faiss.omp_set_num_threads(threads)
    return live.search(codes, k)


@serve.deployment
class IndexShardDeployment:
    def __init__(
        self,
        index_uri: str,
        shard: int,
        *,
        manifest_sha256: str | None = None,
        nprobe: int | None = None,
        threads: int = 1,
        batch_rows: int = 256,
        batch_wait_s: float = 0.0,
        writes: bool = False,
    ):
        self.threads = threads
        manifest = indexset.read_index_manifest(index_uri, manifest_sha256)
        self.manifest = manifest
        self.shard = indexset.load_shard(manifest, shard, nprobe=nprobe)  # raises ChecksumError first
        self.live, self.catching_up = None, asyncio.Lock()
        if writes:  # a restarted replica starts here: everything acknowledged is in the log
            self.live = LiveShard(self.shard)
            self.live.apply(writelog.replay(manifest.uri, manifest.sha256))
        shard_items_gauge().set(len(self.shard), tags={"shard": str(shard), "index_version": manifest.sha256[:12]})
        self.ids = fixed_width_ids(self.shard.ids)  # what take_ids gathers fastest
        self.search_batch.set_max_batch_size(batch_rows)
        self.search_batch.set_batch_wait_timeout_s(batch_wait_s)
        logger.info("shard %d of %s: %d items", shard, index_uri, len(self.shard))

    async def catch_up(self, min_seq: int) -> None:
        """Apply the write log up to at least record ``min_seq`` (one replay at a time)."""
        if self.live is None or self.live.seq >= min_seq:
            return
        async with self.catching_up:
            if self.live.seq < min_seq:
                m = self.manifest
                await asyncio.to_thread(lambda: self.live.apply(writelog.replay(m.uri, m.sha256, after=self.live.seq)))
            if self.live.seq < min_seq:
                raise RuntimeError(
                    f"shard {self.shard.number}: the write log ends at record {self.live.seq}, but record "
                    f"{min_seq} was acknowledged; is this replica reading the index set the ingress writes to?"
                )

    async def search(self, codes: np.ndarray, k: int, min_seq: int = 0) -> tuple[np.ndarray, np.ndarray, pa.Array]:
        """Top-k of ``codes`` (packed bits, or pq query vectors) by (distance, id): ``(distances
        (n, k), keys int64 (n, k), ids)``, the ids one Arrow string array of n * k, row by row, null for pads.
        The keys are global keys, or with live writes ``shard * k + column`` (:mod:`rayhash.index.live`)."""
        await self.catch_up(min_seq)
        return await self.search_batch(codes, k)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.0, batch_size_fn=query_rows)
    async def search_batch(self, codes: list[np.ndarray], ks: list[int]) -> list[tuple]:
        rows = np.cumsum([0] + [len(c) for c in codes])
        k = max(ks)
        if self.live is not None:
            dist, ids = await asyncio.to_thread(live_search, self.live, np.concatenate(codes), k, self.threads)
            # Keys from each request's own k: every shard answers one fan-out with the same k.
            return [
                (dist[lo:hi, :kk], answer_keys(self.shard.number, ids[lo:hi, :kk], kk), as_arrow_ids(ids[lo:hi, :kk]))
                for lo, hi, kk in zip(rows[:-1], rows[1:], ks)
            ]
        dist, keys = await asyncio.to_thread(search_shard, self.shard, np.concatenate(codes), k, self.threads)
        # Rows are sorted by (distance, key), so the first k' columns of a top-k are the top-k'.
        out = []
        for lo, hi, kk in zip(rows[:-1], rows[1:], ks):
            d, key = dist[lo:hi, :kk], keys[lo:hi, :kk]
            out.append((d, key, take_ids(self.ids, np.where(key >= 0, key - self.shard.offset, -1).ravel())))
        return out

    async def code_of(self, item_id: str, min_seq: int = 0) -> np.ndarray | None:
        if self.live is None:
            return self.shard.code_of(item_id)
        await self.catch_up(min_seq)
        return self.live.code_of(item_id)

    async def info(self) -> dict:
        # node_id: which Ray node holds this replica, so an operator can see shards spread over nodes
        info = {**shard_info(self.shard), "node_id": ray.get_runtime_context().get_node_id()}
        if self.live is not None:  # the first built id: where this shard's id range starts (writelog.owner)
            info.update(items=len(self.live), seq=self.live.seq, first_id=self.shard.ids[0].as_py())
        return info
