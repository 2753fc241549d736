"""Build an index set from a code set: sort by id, cut into shards, one faiss binary index each
(PQ indexes are built beside these, in :mod:`rayhash.index.pq`, with the same sort and cut).

Pure (faiss + numpy, no Ray): ``jobs/build_index.py`` and ``rayhash index`` parse a config and
call :func:`build_index_set`; it runs the same on a laptop or as a Ray job on a cluster node.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from rayhash.codespec.binary import check_nbits
from rayhash.config import ConfigError
from rayhash.encode import codeset
from rayhash.index import indexset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexBuildConfig:
    codeset: str = ""  # code-set directory (or its manifest.json), local or s3://
    out: str = ""  # index-set directory to write
    num_shards: int = 1
    kind: str = "flat"  # "flat" (exact) or "ivf" (faiss.IndexBinaryIVF, sub-linear)
    nlist: int | None = None  # ivf: inverted lists (default: a power of two near sqrt(n))
    nprobe: int | None = None  # ivf: lists searched per query (default nlist / 8)
    train_size: int | None = None  # ivf: codes sampled to train the quantizer (default 64 per list)
    seed: int = 0
    threads: int | None = None  # faiss OpenMP threads (default: faiss's own)


def default_nlist(n: int) -> int:
    """A power of two near sqrt(n): 1,024 lists at 1M codes, 4,096 at 10M (PROTOCOL.md "Speed")."""
    return max(1, 2 ** round(math.log2(max(1.0, math.sqrt(n)))))


def ivf_template(codes: np.ndarray, nbits: int, *, nlist: int, nprobe: int, train_size: int, seed: int):
    """An empty, trained ``IndexBinaryIVF``: every shard is a copy of it, so all share one quantizer."""
    sample = ivf_sample(codes, nlist=nlist, nprobe=nprobe, train_size=train_size, seed=seed)
    quantizer = faiss.IndexBinaryFlat(nbits)
    index = faiss.IndexBinaryIVF(quantizer, nbits, nlist)
    index.cp.seed = seed
    index.train(np.ascontiguousarray(sample))
    index.nprobe = nprobe
    return index


def ivf_sample(rows: np.ndarray, *, nlist: int, nprobe: int, train_size: int, seed: int) -> np.ndarray:
    """The rows an IVF quantizer trains on (all, or ``train_size`` drawn with ``seed``), once ``nlist``
    and ``nprobe`` are checked against them."""
    if not 1 <= nlist <= len(rows):
        raise ValueError(f"nlist must be between 1 and the number of codes ({len(rows)}), got {nlist}")
    if not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe must be between 1 and nlist ({nlist}), got {nprobe}")
    rng = np.random.default_rng(seed)
    return rows if train_size >= len(rows) else rows[np.sort(rng.choice(len(rows), train_size, replace=False))]


def ivf_params(n: int, *, nlist: int | None, nprobe: int | None, train_size: int | None, seed: int) -> dict:
    """An IVF kind's parameters as the manifest records them, defaults filled in."""
    nlist = nlist or default_nlist(n)
    return {
        "nlist": nlist,
        "nprobe": nprobe or max(1, nlist // 8),
        "train_size": min(n, train_size or 64 * nlist),
        "seed": seed,
    }


def sorted_unique(
    ids, codes: np.ndarray, *, kind: str, num_shards: int, ivf_options: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, codes)`` sorted by id, once the shard options are checked; duplicate ids are refused,
    since "ties ordered by id" and lookups by id need each id once."""
    n = len(ids)
    if kind not in indexset.INDEX_KINDS:
        raise ValueError(f"index kind {kind!r} is not one of {indexset.INDEX_KINDS}")
    if not 1 <= num_shards <= max(n, 1):
        raise ValueError(f"num_shards must be between 1 and the number of codes ({n}), got {num_shards}")
    if kind == "flat" and ivf_options:
        raise ValueError("nlist, nprobe and train_size apply to kind='ivf' only")
    ids = np.asarray(ids, dtype=indexset.ID_DTYPE)
    order = np.argsort(ids, kind="stable")
    ids, codes = ids[order], np.ascontiguousarray(codes[order])
    dup = np.flatnonzero(ids[1:] == ids[:-1])
    if len(dup):
        raise ValueError(
            f"id {ids[dup[0]]!r} appears more than once ({len(dup)} duplicates in all); "
            "ids must be unique to be looked up and to break ties"
        )
    return ids, codes


def shard_bounds(n: int, num_shards: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each shard's contiguous run of sorted items."""
    return [
        (int(part[0]), int(part[-1]) + 1) if len(part) else (0, 0) for part in np.array_split(np.arange(n), num_shards)
    ]


def build_shards(
    ids: np.ndarray,
    codes: np.ndarray,
    nbits: int,
    *,
    num_shards: int = 1,
    kind: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> tuple[list[tuple[Any, np.ndarray]], dict]:
    """Sort ``(ids, codes)`` by id and cut them into ``num_shards`` indexes.

    Returns ``([(faiss index, sorted ids), ...], params)``; duplicate ids are refused, since
    "ties ordered by id" and lookups by id need each id once.
    """
    check_nbits(nbits)
    codes = np.asarray(codes)
    n = len(ids)
    if codes.dtype != np.uint8 or codes.shape != (n, nbits // 8):
        raise ValueError(
            f"codes must be uint8 of shape ({n}, {nbits // 8}) for {n} ids of {nbits} bits, "
            f"got {codes.dtype} {codes.shape}"
        )
    ids, codes = sorted_unique(
        ids, codes, kind=kind, num_shards=num_shards, ivf_options=bool(nlist or nprobe or train_size)
    )
    params: dict = {}
    template = None
    if kind == "ivf":
        params = ivf_params(n, nlist=nlist, nprobe=nprobe, train_size=train_size, seed=seed)
        template = ivf_template(codes, nbits, **params)
        template_bytes = faiss.serialize_index_binary(template)
    shards = []
    for lo, hi in shard_bounds(n, num_shards):
        index = faiss.IndexBinaryFlat(nbits) if template is None else faiss.deserialize_index_binary(template_bytes)
        index.add(codes[lo:hi])
        shards.append((index, ids[lo:hi]))
    return shards, params


def build_index_set(
    codeset_uri: str,
    out_uri: str,
    *,
    num_shards: int = 1,
    kind: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> indexset.IndexSetManifest:
    """Read a committed code set (checksums verified), build its shards and commit an index set."""
    saved_threads = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        return _build(
            codeset_uri,
            out_uri,
            num_shards=num_shards,
            kind=kind,
            nlist=nlist,
            nprobe=nprobe,
            train_size=train_size,
            seed=seed,
        )
    finally:
        faiss.omp_set_num_threads(saved_threads)


def _build(codeset_uri: str, out_uri: str, **options) -> indexset.IndexSetManifest:
    cs = codeset.read_manifest(codeset_uri)
    ids, codes, _ = codeset.read_codes(cs)
    expected = int(cs.counts.get("encoded", cs.num_codes))
    if not len(ids) == cs.num_codes == expected:
        raise ValueError(
            f"{cs.uri}: read {len(ids)} codes, the shards record {cs.num_codes} and counts.encoded "
            f"{expected}; the code set is inconsistent, re-run the encode job"
        )
    spec = codeset.read_spec(cs)  # pq: the codebooks, checked against the manifest's SHA-256
    if spec is None:
        shards, params = build_shards(ids, codes, cs.nbits, **options)
    else:
        from rayhash.index.pq import build_pq_shards  # it builds on this module's sort and cut

        shards, params = build_pq_shards(ids, codes, spec, **options)
    built = sum(int(index.ntotal) for index, _ in shards)
    if built != expected:  # faiss adds whatever it is given; check nothing was lost on the way
        raise RuntimeError(f"built {built} index entries from a code set of {expected} codes")
    return indexset.write_index_set(
        out_uri,
        shards,
        nbits=cs.nbits,
        kind=options["kind"],
        params=params,
        codeset_uri=cs.uri,
        codeset_manifest_sha256=cs.sha256,
        checkpoint_uri=cs.checkpoint_uri,
        checkpoint_sha256=cs.checkpoint_sha256,
        spec=spec,
    )


def check_build_config(cfg: IndexBuildConfig) -> None:
    if not cfg.codeset or not cfg.out:
        raise ConfigError(
            "set both codeset (the code-set directory) and out (where to write the index set), "
            "e.g. --codeset=runs/codes --out=runs/index"
        )


def build_from_config(cfg: IndexBuildConfig) -> indexset.IndexSetManifest:
    check_build_config(cfg)
    return build_index_set(
        cfg.codeset,
        cfg.out,
        num_shards=cfg.num_shards,
        kind=cfg.kind,
        nlist=cfg.nlist,
        nprobe=cfg.nprobe,
        train_size=cfg.train_size,
        seed=cfg.seed,
        threads=cfg.threads,
    )
