"""Fold an index set's write log into a new index set version.

The new version is built the normal way from a new code set: the old code set's items with
every logged add, replacement and delete applied (``source`` is kept for built items, and is
``writelog:<seq>`` for written ones), then :func:`rayhash.index.build.build_index_set` with the
old index's kind, shard count and parameters. Its shards therefore equal a fresh build from
the same items, and it starts with an empty log of its own. The old version is left as it is:
serve the new one (pin its ``index_sha256``) and retire the old one when no replica reads it.
"""

from __future__ import annotations

import logging

import numpy as np

from rayhash import storage
from rayhash.codespec import binary as codes_lib
from rayhash.codespec import pq as pq_lib
from rayhash.encode import codeset
from rayhash.index import build, indexset, writelog

logger = logging.getLogger(__name__)


def live_items(index_uri: str, up_to: int | None = None) -> tuple[dict, codeset.CodeSetManifest, int]:
    """The items an index set serves with its log replayed (up to record ``up_to``, default all):
    ``({id: (code, source)}, its code set's manifest, the last record applied)``."""
    m = indexset.read_index_manifest(index_uri)
    cs = codeset.read_manifest(m.codeset_uri)
    if cs.sha256 != m.codeset_manifest_sha256:
        raise storage.ChecksumError(
            f"{m.codeset_uri}: the code set changed since index {m.uri} was built from it; "
            "compact from the code set version the index records"
        )
    ids, codes, sources = codeset.read_codes(cs)
    items = {i: (c, s) for i, c, s in zip(ids.tolist(), codes, sources.tolist(), strict=True)}
    spec = codeset.read_spec(cs)
    last = 0
    for record in writelog.replay(m.uri, m.sha256):
        if up_to is not None and record.seq > up_to:
            break
        for op in record.ops:
            if op.op == "delete":
                items.pop(op.id, None)
            elif spec is None:
                items[op.id] = (codes_lib.from_hex([op.code], cs.nbits)[0], f"writelog:{record.seq}")
            else:
                items[op.id] = (pq_lib.from_hex([op.code], spec.m, spec.k)[0], f"writelog:{record.seq}")
        last = record.seq
    return items, cs, last


def compact(index_uri: str, out_codeset: str, out_index: str, up_to: int | None = None) -> indexset.IndexSetManifest:
    """Write the live items of ``index_uri`` as a code set at ``out_codeset`` and build an index set
    at ``out_index`` with the old index's options. Returns the new index manifest."""
    m = indexset.read_index_manifest(index_uri)
    items, cs, last = live_items(index_uri, up_to)
    if not items:
        raise ValueError(f"{m.uri}: every item is deleted; an index set needs at least one item")
    ids = sorted(items)
    codes = np.stack([items[i][0] for i in ids]).astype(np.uint8)
    spec = codeset.read_spec(cs)
    new_cs = codeset.write_codeset(
        out_codeset,
        ids=ids,
        codes=codes,
        sources=[items[i][1] for i in ids],
        nbits=cs.nbits if spec is None else None,  # pq codes are described by their spec
        checkpoint_uri=cs.checkpoint_uri,
        checkpoint_sha256=cs.checkpoint_sha256,
        config={**cs.config, "compacted_from": {"index": m.uri, "index_sha256": m.sha256, "writelog_seq": last}},
        spec=spec,
    )
    params = {k: v for k, v in m.params.items() if k in ("nlist", "nprobe", "train_size", "seed")}
    built = build.build_index_set(new_cs.uri, out_index, num_shards=len(m.shards), kind=m.kind, **params)
    logger.info("compacted %s (log up to record %d) into %s: %d items", m.uri, last, built.uri, built.items)
    return built
