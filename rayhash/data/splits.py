"""Query / database / training splits: the fixed protocols of PROTOCOL.md, and a random one.

Protocol splits draw from ``numpy.random.default_rng(0)``: first the queries, 100 per class
from the test positions, then the training set, 500 per class from the database. Within
each class the indices are kept in the order ``rng.choice`` drew them, and the classes are
concatenated 0..9 (not sorted): anyone re-running the recipe gets the same arrays in the
same order. The database is every non-query position, in position order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Index arrays into a dataset's positions (int64)."""

    query: np.ndarray
    database: np.ndarray
    train: np.ndarray
    name: str


@dataclass(frozen=True)
class _Recipe:
    n_total: int
    test_start: int  # test positions are test_start..n_total-1
    n_classes: int = 10
    query_per_class: int = 100
    train_per_class: int | None = 500  # None: train on the whole database


PROTOCOLS = {
    "fmnist-1k": _Recipe(n_total=70_000, test_start=60_000),
    "fmnist-all": _Recipe(n_total=70_000, test_start=60_000, train_per_class=None),
    "cifar10-1": _Recipe(n_total=60_000, test_start=50_000),
}


def protocol_split(name: str, labels: np.ndarray) -> Split:
    """The named protocol split for ``labels`` (one int class per position)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown split {name!r}; known: {', '.join(sorted(PROTOCOLS))}.")
    r = PROTOCOLS[name]
    labels = np.asarray(labels)
    if labels.shape != (r.n_total,):
        raise ValueError(
            f"split {name!r} needs {r.n_total} single-label positions, got labels of shape "
            f"{labels.shape}; load the whole dataset (train then test) first."
        )
    rng = np.random.default_rng(0)
    positions = np.arange(r.n_total)
    is_test = positions >= r.test_start
    query = np.concatenate(
        [rng.choice(positions[is_test & (labels == c)], r.query_per_class, replace=False) for c in range(r.n_classes)]
    )
    in_db = np.ones(r.n_total, dtype=bool)
    in_db[query] = False
    database = positions[in_db]
    if r.train_per_class is None:
        train = database.copy()
    else:
        train = np.concatenate(
            [rng.choice(positions[in_db & (labels == c)], r.train_per_class, replace=False) for c in range(r.n_classes)]
        )
    return Split(query.astype(np.int64), database.astype(np.int64), train.astype(np.int64), name)


def random_split(n: int, n_query: int, n_train: int | None, seed: int = 0) -> Split:
    """For unlabelled data: ``n_query`` random queries, the rest as the database, and
    ``n_train`` random database items to train on (all of them when ``None``)."""
    if not 0 <= n_query < n:
        raise ValueError(f"n_query={n_query} must be in [0, n={n}).")
    if n_train is not None and not 0 < n_train <= n - n_query:
        raise ValueError(f"n_train={n_train} must be in (0, {n - n_query}] (the database size).")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    query = np.sort(perm[:n_query])
    database = np.sort(perm[n_query:])
    train = database if n_train is None else np.sort(rng.choice(database, n_train, replace=False))
    return Split(
        query.astype(np.int64),
        database.astype(np.int64),
        train.astype(np.int64),
        f"random-{n_query}q-{n_train or 'all'}t-seed{seed}",
    )
