"""Fan-out to every shard and the exact merge of their answers.

Every query goes to every shard at once; each shard answers its own top-k by
(distance, id) and :func:`rayhash.index.search.merge_topk` cuts the union at k, which equals
one flat search over all codes. A shard that does not answer (all replicas gone, or past the
request timeout) fails the request with a 503 naming it, unless the caller asked for
``partial`` results, which are then marked as such.

The shards are either Serve deployments (one handle each) or held by the ingress replica
itself (``ServeConfig.shards_in_ingress``): loaded there, checksums first, and searched in
worker threads, with no actor hop per query, for indexes that fit in one replica's memory. A
shard cannot then fail apart from the ingress. IVF shards held together are merged into one
index first (:func:`rayhash.index.shards.merge_shards`): the same lists probed, without
repeating the coarse quantizer and the top-k heap per shard.
"""

import asyncio
import logging

import numpy as np
import pyarrow as pa
from fastapi import HTTPException
from ray.exceptions import RayActorError

from rayhash.index import indexset
from rayhash.index import shards as shards_lib
from rayhash.index.search import merge_topk
from rayhash.serve.answers import id_lookup
from rayhash.serve.metrics import shard_items_gauge
from rayhash.serve.shard import search_shard, shard_info

logger = logging.getLogger(__name__)


class ShardUnavailable(Exception):
    def __init__(self, shard: int, reason: str):
        super().__init__(f"shard {shard} ({reason})")
        self.shard = shard


async def answer_within(response, what: str, timeout_s: float):
    """``response`` awaited for at most ``timeout_s``; a 503 naming ``what`` if it does not come."""
    try:
        return await asyncio.wait_for(response, timeout_s)
    except TimeoutError:
        raise HTTPException(503, f"{what} did not answer within {timeout_s:g} s") from None
    except RayActorError as e:
        raise HTTPException(503, f"{what} lost its replica ({type(e).__name__}); retry") from None


async def answer_retried(call, what: str, timeout_s: float):
    """``call()``'s answer within ``timeout_s`` in all, calling again when the replica that ran it
    died: for idempotent calls (encoding an image), which Serve re-routes only if they had not started."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await asyncio.wait_for(call(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise HTTPException(503, f"{what} did not answer within {timeout_s:g} s") from None
        except RayActorError as e:
            if loop.time() >= deadline:
                raise HTTPException(503, f"{what} lost its replica ({type(e).__name__}); retry") from None
            logger.warning("%s lost its replica mid-call; calling again", what)
            await asyncio.sleep(0.05)


class FanOut:
    """The shards one ingress replica asks: deployment handles, or indexes it holds itself.

    ``handles``: one per shard deployment; or none, and ``local={"uri", "nprobe", "threads"}``:
    the index set whose shards this replica loads and searches itself.
    """

    def __init__(self, handles: list, *, timeout_s: float, local: dict | None = None):
        self.handles, self.timeout_s = handles, timeout_s
        self.min_seq = None  # with live writes: the write-log record every search must reflect
        self.local, self.local_ids, self.threads = [], None, 1
        if local:
            m = indexset.read_index_manifest(local["uri"], local.get("sha256"))
            loaded = [indexset.load_shard(m, i, nprobe=local.get("nprobe")) for i in range(len(m.shards))]
            gauge = shard_items_gauge()
            for s in loaded:
                gauge.set(len(s), tags={"shard": str(s.number), "index_version": m.sha256[:12]})
            self.local = [shards_lib.merge_shards(loaded)] if m.kind == "ivf" and len(loaded) > 1 else loaded
            # Ids by global key, for the merged top-k; fixed-width when they allow it, the fastest to gather.
            self.local_ids = shards_lib.fixed_width_ids(shards_lib.shared_ids(self.local))
            self.threads = int(local.get("threads", 1))
            logger.info(
                "ingress holds the %d shards of %s itself, searched as %d (%d items)",
                len(loaded),
                m.uri,
                len(self.local),
                m.items,
            )

    def __len__(self) -> int:
        """How many targets a fan-out asks: shard deployments, or the indexes held here."""
        return len(self.local) or len(self.handles)

    def call(self, i: int, method: str, *args):
        """An awaitable of target ``i``'s ``search``, ``code_of`` or ``info``: an actor call, or a
        worker thread on the ``i``-th index this replica holds."""
        if not self.local:
            return getattr(self.handles[i], method).remote(*args)
        shard = self.local[i]
        if method == "search":
            return asyncio.to_thread(search_shard, shard, *args, self.threads)
        if method == "code_of":
            return asyncio.to_thread(shard.code_of, *args)
        return asyncio.to_thread(shard_info, shard)

    async def ask(self, i: int, codes: np.ndarray, k: int):
        """Target ``i``'s top-k of ``codes``, retried on a lost replica until the request's deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        error = "no answer"
        while (left := deadline - loop.time()) > 0:
            try:
                args = (codes, k) if self.min_seq is None else (codes, k, self.min_seq)
                return await asyncio.wait_for(self.call(i, "search", *args), left)
            except RayActorError as e:
                # The replica died while running this request (Serve re-routes only requests it had
                # not started). Searching is idempotent: the router has dropped the dead replica,
                # so the retry goes to another one, or waits for a new one until the deadline.
                error = f"replica lost: {type(e).__name__}"
                logger.warning("shard %d: %s; retrying", i, error)
                await asyncio.sleep(0.05)
            except TimeoutError:
                break
        raise ShardUnavailable(i, f"{error} within the {self.timeout_s:g} s request timeout")

    async def search(self, codes: list[np.ndarray], ks: list[int]) -> list[tuple]:
        """One fan-out and merge for a batch of requests' ``codes``, each with its own k: per request,
        ``(distances, id positions, id table, failed shards)`` for :meth:`results`."""
        rows = np.cumsum([0] + [len(c) for c in codes])
        k, queries = max(ks), np.concatenate(codes)
        answers = await asyncio.gather(*(self.ask(i, queries, k) for i in range(len(self))), return_exceptions=True)
        for a in answers:
            if isinstance(a, BaseException) and not isinstance(a, ShardUnavailable):
                raise a
        failed = [a for a in answers if isinstance(a, ShardUnavailable)]
        parts = [a for a in answers if not isinstance(a, BaseException)]
        if not parts:
            return [(None, None, None, failed)] * len(codes)
        if len(parts) == 1:  # already sorted by (distance, key)
            dist, keys = parts[0][:2]
            source = None
        else:
            dist, keys, source = merge_topk([p[:2] for p in parts], k)
        if self.local:  # the indexes held here answer keys into every id, held here too
            lookup, id_table = keys, self.local_ids
        else:
            if source is None:
                source = np.where(keys >= 0, np.arange(keys.shape[1]), -1)
            lookup, id_table = id_lookup(source, parts)
        # Rows are sorted by (distance, id): the first k' columns of a top-k are the top-k'.
        return [
            (dist[lo:hi, :kk], lookup[lo:hi, :kk], id_table, failed)
            for lo, hi, kk in zip(rows[:-1], rows[1:], ks, strict=True)
        ]

    def results(
        self, answer: tuple, partial: bool, arrow: bool = False
    ) -> tuple[np.ndarray, np.ndarray | pa.Array, list[int]]:
        """One request's share of :meth:`search` as ``(distances, ids, missing shard numbers)``, or a 503.

        ``ids``: object array (None for pads), or with ``arrow`` one flat Arrow string array
        (null for pads), gathered without making a Python string per result."""
        dist, lookup, id_table, failed = answer
        if failed and (not partial or len(failed) == len(self)):
            raise HTTPException(
                503,
                "index unavailable, results would be incomplete: "
                + "; ".join(map(str, failed))
                + ". Retry later, or pass partial=true to accept results from the other shards.",
            )
        # Only the answer's ids become strings, in the form it needs.
        ids = shards_lib.take_ids(id_table, lookup.ravel()) if arrow else shards_lib.ids_of(id_table, lookup)
        return dist, ids, sorted(f.shard for f in failed)
