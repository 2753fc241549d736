import numpy as np
import pytest

from rayhash.data.splits import protocol_split, random_split


def reference_split(labels: np.ndarray, test_start: int, train_per_class: int | None):
    """PROTOCOL.md's recipe, written out independently of rayhash.data.splits."""
    rng = np.random.default_rng(0)
    query = []
    for c in range(10):
        test_of_c = [p for p in range(test_start, len(labels)) if labels[p] == c]
        query.extend(rng.choice(test_of_c, 100, replace=False).tolist())
    taken = set(query)
    database = [p for p in range(len(labels)) if p not in taken]
    if train_per_class is None:
        return query, database, database
    train = []
    for c in range(10):
        db_of_c = [p for p in database if labels[p] == c]
        train.extend(rng.choice(db_of_c, train_per_class, replace=False).tolist())
    return query, database, train


def test_fmnist_1k_follows_the_protocol(fmnist):
    labels = fmnist.labels
    s = protocol_split("fmnist-1k", labels)
    assert (len(s.query), len(s.database), len(s.train)) == (1_000, 69_000, 5_000)
    assert s.query.min() >= 60_000
    assert np.bincount(labels[s.query]).tolist() == [100] * 10
    assert np.bincount(labels[s.train]).tolist() == [500] * 10
    assert not set(s.query) & set(s.database)
    assert set(s.train) <= set(s.database)
    assert len(set(s.train)) == 5_000
    assert np.all(np.diff(s.database) > 0)  # database in position order
    # classes concatenated 0..9, each in drawn order
    assert np.all(np.diff(labels[s.query]) >= 0) and np.all(np.diff(labels[s.train]) >= 0)
    query, database, train = reference_split(labels, 60_000, 500)
    assert s.query.tolist() == query
    assert s.database.tolist() == database
    assert s.train.tolist() == train
    again = protocol_split("fmnist-1k", labels.copy())
    assert np.array_equal(again.query, s.query) and np.array_equal(again.train, s.train)


def test_fmnist_all_trains_on_the_whole_database(fmnist):
    s = protocol_split("fmnist-all", fmnist.labels)
    one_k = protocol_split("fmnist-1k", fmnist.labels)
    assert np.array_equal(s.query, one_k.query) and np.array_equal(s.database, one_k.database)
    assert np.array_equal(s.train, s.database)


def test_cifar10_1_on_cifar_shaped_labels():
    labels = np.random.default_rng(5).permutation(np.arange(60_000) % 10)
    s = protocol_split("cifar10-1", labels)
    assert (len(s.query), len(s.database), len(s.train)) == (1_000, 59_000, 5_000)
    query, database, train = reference_split(labels, 50_000, 500)
    assert (s.query.tolist(), s.database.tolist(), s.train.tolist()) == (query, database, train)


def test_bad_names_and_labels_are_refused(fmnist):
    with pytest.raises(ValueError, match="cifar10-1, fmnist-1k, fmnist-all"):
        protocol_split("fmnist", fmnist.labels)
    with pytest.raises(ValueError, match="70000"):
        protocol_split("fmnist-1k", fmnist.labels[:60_000])


def test_random_split():
    s = random_split(1_000, 100, 300, seed=3)
    assert (len(s.query), len(s.database), len(s.train)) == (100, 900, 300)
    assert sorted(np.concatenate([s.query, s.database]).tolist()) == list(range(1_000))
    assert set(s.train) <= set(s.database)
    assert np.array_equal(random_split(1_000, 100, 300, seed=3).train, s.train)
    assert not np.array_equal(random_split(1_000, 100, 300, seed=4).query, s.query)
    whole = random_split(1_000, 100, None)
    assert np.array_equal(whole.train, whole.database)
    with pytest.raises(ValueError, match="n_train"):
        random_split(1_000, 100, 901)
