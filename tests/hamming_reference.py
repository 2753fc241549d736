"""The reference every search test is checked against: brute-force Hamming top-k, ties by id."""

import numpy as np

from rayhash.codespec.binary import hamming


def brute_force(q, ids, codes, k):
    """Reference top-k per query: (distances, ids) sorted by (Hamming distance, id string)."""
    ids = np.asarray(ids, dtype=object)
    rank = np.argsort(np.argsort(ids.astype(str)))
    d = hamming(q, codes)
    order = np.lexsort((np.broadcast_to(rank, d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, axis=1), ids[order]
