"""rayhash.serve.answers in one process: every merged result's id, found by id_lookup in the
shards' flat Arrow ids, equals brute force's (the served path is tests/serve/test_search_service.py)."""

import faiss
import numpy as np
import pyarrow as pa
import pytest

from rayhash.codespec.binary import hamming
from rayhash.index.search import merge_topk, topk
from rayhash.index.shards import fixed_width_ids, ids_of, take_ids
from rayhash.serve.answers import id_lookup


@pytest.mark.parametrize("k", [1, 9, 40, 700])
def test_merged_ids_equal_brute_force(k):
    # 16-bit codes from 40 values: ties at every distance; uneven shards, one of a single item,
    # string ids of two lengths in one shard (no fixed-width copy) and fixed-width in the others.
    rng = np.random.default_rng(k)
    vocab = rng.integers(0, 256, (40, 2), dtype=np.uint8)
    db, q = vocab[rng.integers(0, 40, 600)], rng.integers(0, 256, (12, 2), dtype=np.uint8)
    ids = np.array([f"item-{i:05d}" for i in range(600)], dtype=object)
    ids[:250] = [f"a{i:03d}" for i in range(250)]  # still ascending: "a..." sorts before "item-..."
    ids[250:300] = [f"b{i}" for i in range(50)]  # 2-3 digits: no fixed width
    parts = []
    for lo, hi in [(0, 250), (250, 300), (300, 301), (301, 600)]:
        index = faiss.IndexBinaryFlat(16)
        index.add(db[lo:hi])
        d, pos = topk(index, q, k)
        shard_ids = fixed_width_ids(pa.array(list(ids[lo:hi]), pa.string()))
        parts.append((d, np.where(pos >= 0, pos + lo, -1), take_ids(shard_ids, pos.ravel())))
    dist, keys, source = merge_topk([p[:2] for p in parts], k)
    lookup, table = id_lookup(source, parts)
    got = ids_of(table, lookup)

    full = hamming(q, db)
    order = np.lexsort((np.broadcast_to(np.arange(600), full.shape), full), axis=1)[:, :k]
    kk = min(k, 600)
    np.testing.assert_array_equal(dist[:, :kk], np.take_along_axis(full, order, axis=1))
    np.testing.assert_array_equal(got[:, :kk], ids[order])
    assert (got[:, kk:] == None).all() and (lookup[:, kk:] == -1).all()  # noqa: E711 (object array)
