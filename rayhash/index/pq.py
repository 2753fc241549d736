"""PQ index shards beside the binary ones: faiss ``IndexPQ`` (exact) and ``IndexIVFPQ`` (sub-linear)
over codes that were already learned, with the learned codebooks loaded.

Nothing is retrained or re-encoded: the codebooks are copied into faiss's ``ProductQuantizer``
and the codes are added as they are (``add_sa_codes``), so faiss scores exactly the codes
the code set holds. The IVF kind searches by the codes themselves (``by_residual = False``):
its coarse quantizer only chooses which lists to probe, trained by k-means on the codes'
reconstructions. A query is a float vector scored by ADC; a query given as a code searches
by its reconstruction, which scores every code by the symmetric distance through the codebooks.

Ids follow :mod:`rayhash.index.build`: sorted, cut into contiguous shards, an item's faiss
position is its place in its shard, so the global key (offset + position) orders items as
their ids do and :func:`rayhash.index.search.merge_topk` merges the shards exactly.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from rayhash.codespec import pq as pq_spec
from rayhash.index.build import ivf_params, ivf_sample, shard_bounds, sorted_unique


def _faiss_codes(spec: pq_spec.PQSpec, codes: np.ndarray) -> np.ndarray:
    """Codes in faiss's layout: ``log2(K)`` bits per sub-space, packed (one byte each at K = 256)."""
    nbits = spec.k.bit_length() - 1
    if nbits == 8:
        return np.ascontiguousarray(codes)
    return faiss.pack_bitstrings(np.ascontiguousarray(codes, dtype=np.int32), nbits)


def _load_codebooks(pq: faiss.ProductQuantizer, spec: pq_spec.PQSpec) -> None:
    if (pq.M, pq.ksub, pq.dsub) != (spec.m, spec.k, spec.d_sub):
        raise ValueError(f"faiss PQ is M={pq.M}, K={pq.ksub}, d_sub={pq.dsub}; the spec is {spec}")
    faiss.copy_array_to_vector(spec.codebooks.ravel(), pq.centroids)


def flat_index(spec: pq_spec.PQSpec) -> faiss.IndexPQ:
    """An empty ``IndexPQ`` holding the spec's codebooks, ready for :func:`add_codes`."""
    index = faiss.IndexPQ(spec.dim, spec.m, spec.k.bit_length() - 1)
    _load_codebooks(index.pq, spec)
    index.is_trained = True
    return index


def ivf_template(
    spec: pq_spec.PQSpec, codes: np.ndarray, *, nlist: int, nprobe: int, train_size: int, seed: int
) -> faiss.IndexIVFPQ:
    """An empty ``IndexIVFPQ`` with the spec's codebooks and a coarse quantizer trained on the
    reconstructions of (a sample of) ``codes``: every shard is a copy, so all probe one set of lists."""
    sample = ivf_sample(codes, nlist=nlist, nprobe=nprobe, train_size=train_size, seed=seed)
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(spec.dim), spec.dim, nlist, spec.m, spec.k.bit_length() - 1)
    index.by_residual = False  # the learned codes encode the vectors, not residuals to a list centre
    _load_codebooks(index.pq, spec)
    index.cp.seed = seed
    faiss.Clustering(spec.dim, nlist, index.cp).train(pq_spec.decode(spec, sample), index.quantizer)
    index.is_trained = True
    index.nprobe = nprobe
    return index


def add_codes(index, spec: pq_spec.PQSpec, codes: np.ndarray) -> None:
    """Append ``codes`` (uint8 ``(n, M)``) to a flat or IVF PQ index at positions ``ntotal ...``, unchanged."""
    codes = pq_spec.check_codes(spec, codes)
    stored = _faiss_codes(spec, codes)
    if isinstance(index, faiss.IndexIVFPQ):
        # faiss's standalone IVF code: the list number (little-endian, coarse_code_size bytes), then the PQ code.
        _, lists = index.quantizer.search(pq_spec.decode(spec, codes), 1)
        width = index.coarse_code_size()
        prefix = lists[:, 0].astype("<i8").view(np.uint8).reshape(len(codes), 8)[:, :width]
        stored = np.ascontiguousarray(np.hstack([prefix, stored]))
    elif not isinstance(index, faiss.IndexPQ):
        raise TypeError(f"add_codes takes an IndexPQ or IndexIVFPQ, got {type(index).__name__}")
    if len(codes):
        index.add_sa_codes(stored)


def build_pq_shards(
    ids: np.ndarray,
    codes: np.ndarray,
    spec: pq_spec.PQSpec,
    *,
    num_shards: int = 1,
    kind: str = "flat",
    nlist: int | None = None,
    nprobe: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
) -> tuple[list[tuple[Any, np.ndarray]], dict]:
    """Sort ``(ids, codes)`` by id and cut them into ``num_shards`` PQ indexes, as
    :func:`rayhash.index.build.build_shards` does for binary codes: ``([(index, sorted ids), ...], params)``."""
    codes = pq_spec.check_codes(spec, codes)
    n = len(ids)
    if len(codes) != n:
        raise ValueError(f"codes must be uint8 of shape ({n}, {spec.m}) for {n} ids, got {codes.shape}")
    ids, codes = sorted_unique(
        ids, codes, kind=kind, num_shards=num_shards, ivf_options=bool(nlist or nprobe or train_size)
    )
    params: dict = {}
    template = None
    if kind == "ivf":
        params = ivf_params(n, nlist=nlist, nprobe=nprobe, train_size=train_size, seed=seed)
        template = faiss.serialize_index(ivf_template(spec, codes, **params))
    shards = []
    for lo, hi in shard_bounds(n, num_shards):
        index = flat_index(spec) if template is None else faiss.deserialize_index(template)
        add_codes(index, spec, codes[lo:hi])
        shards.append((index, ids[lo:hi]))
    return shards, params


def stored_codes(index, spec: pq_spec.PQSpec) -> np.ndarray:
    """The codes a flat or IVF PQ index holds, by position: uint8 ``(ntotal, M)`` as they were added."""
    if isinstance(index, faiss.IndexIVFPQ):
        packed = np.zeros((index.ntotal, index.code_size), dtype=np.uint8)
        invlists = index.invlists
        for list_no in range(index.nlist):
            size = invlists.list_size(list_no)
            if size:
                positions = faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy()
                packed[positions] = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * index.code_size).reshape(
                    size, index.code_size
                )
    else:
        packed = faiss.vector_to_array(index.codes).reshape(index.ntotal, index.code_size)
    nbits = spec.k.bit_length() - 1
    return packed if nbits == 8 else faiss.unpack_bitstrings(packed, spec.m, nbits).astype(np.uint8)
