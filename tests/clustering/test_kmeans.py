import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from rayhash import dist
from rayhash.clustering import kmeans, kmeans_plusplus
from rayhash.clustering.kmeans import assign


def _blobs(n=2000, d=5, centers=6, seed=0):
    x, _ = make_blobs(n, n_features=d, centers=centers, cluster_std=1.5, random_state=seed)
    return x.astype(np.float32)


def _brute_force(x, centers):
    d2 = ((x[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1)
    return d2.argmin(1), d2.min(1).sum()


def test_matches_sklearn_and_brute_force():
    x = _blobs()
    ours = kmeans(torch.from_numpy(x), 6, seed=0)
    ref = KMeans(6, n_init=10, random_state=0).fit(x)
    assert ours.inertia <= 1.02 * ref.inertia_
    labels, inertia = _brute_force(x, ours.centers.numpy())
    assert torch.equal(ours.labels, torch.from_numpy(labels))
    assert ours.inertia == pytest.approx(inertia, rel=1e-9)
    assert ours.centers.dtype == torch.float32 and 1 <= ours.n_iter <= 50


def test_blocks_do_not_change_the_result():
    x = torch.from_numpy(_blobs(n=500))
    whole, blocked = kmeans(x, 6, seed=3), kmeans(x, 6, seed=3, chunk_rows=64)
    assert torch.equal(whole.labels, blocked.labels)
    torch.testing.assert_close(whole.centers, blocked.centers, rtol=0, atol=1e-6)


def test_assign_breaks_near_ties_as_float64_does():
    # Rows a hair off the bisector of two centres (gaps far below float32's resolution at this
    # scale), among other centres: the float32 products must hand them to float64.
    rng = np.random.default_rng(0)
    d = 64
    centers = rng.normal(0, 10, (50, d))
    a, b = centers[0], centers[1]
    unit = (b - a) / np.linalg.norm(b - a)
    offsets = rng.choice([-1, 1], 400) * rng.uniform(1e-9, 1e-6, 400) * np.linalg.norm(b - a)
    rows = (a + b) / 2 + offsets[:, None] * unit + rng.normal(0, 1e-3, (400, d))
    rows -= ((rows - (a + b) / 2) @ unit - offsets)[:, None] * unit  # back onto the chosen offsets
    x = np.vstack([rows, rng.normal(0, 10, (600, d))])
    labels, d2 = assign(torch.from_numpy(x), torch.from_numpy(centers), chunk_rows=96)
    ref = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    assert set(labels[:400].tolist()) <= {0, 1} and len(set(labels[:400].tolist())) == 2
    np.testing.assert_array_equal(labels.numpy(), ref.argmin(1))
    np.testing.assert_allclose(d2.numpy(), ref.min(1), rtol=1e-12)


def test_plusplus_seeds_are_data_points_and_spread():
    x = _blobs(n=600, centers=4)
    seeds = kmeans_plusplus(torch.from_numpy(x), 4, seed=1).numpy()
    assert all((x == s.astype(np.float32)).all(1).any() for s in seeds)
    # On well-separated blobs k-means++ puts one seed in each blob.
    truth = KMeans(4, n_init=10, random_state=0).fit(x).cluster_centers_
    assert len(set(_brute_force(seeds, truth)[0])) == 4


def test_empty_cluster_moves_to_farthest_point(caplog):
    x = _blobs(n=400, centers=3)
    init = torch.tensor(np.concatenate([x[:3], np.full((1, x.shape[1]), 1e3, dtype=np.float32)]))
    with caplog.at_level("INFO", logger="rayhash.clustering.kmeans"):
        out = kmeans(torch.from_numpy(x), 4, init=init)
    assert "empty cluster" in caplog.text
    assert torch.bincount(out.labels, minlength=4).min() > 0
    assert (out.centers[3].abs() < np.abs(x).max()).all()


@pytest.mark.parametrize(
    "x, k, match",
    [
        (torch.zeros(5), 2, "2-D floating"),
        (torch.zeros(5, 2, dtype=torch.int64), 2, "2-D floating"),
        (torch.tensor([[0.0, float("nan")]]), 1, "NaN"),
        (torch.zeros(3, 2), 4, "k must be between 1 and the number of points"),
    ],
)
def test_rejects_bad_input(x, k, match):
    with pytest.raises(ValueError, match=match):
        kmeans(x, k)


def _configs(x):
    far = np.concatenate([x[:5], np.full((1, x.shape[1]), 1e3, dtype=np.float32)])
    return {
        "all_rows": dict(k=6, seed=0),
        "subsample": dict(k=6, seed=1, init_sample=300),
        "empty_cluster": dict(k=6, init=torch.from_numpy(far)),
    }


def _fit_shard(x, bounds):
    r = dist.rank()
    shard = torch.from_numpy(x[bounds[r] : bounds[r + 1]])
    results = {}
    for name, cfg in _configs(x).items():
        out = kmeans(shard, **cfg)
        results[name] = {"centers": out.centers, "labels": out.labels, "inertia": out.inertia}
    return results


def test_two_ranks_equal_one_process():
    x = _blobs(n=1500)
    bounds = [0, 825, 1500]  # 55% / 45%
    ranks = dist.launch_local(_fit_shard, 2, args=(x, bounds))
    for name, cfg in _configs(x).items():
        one = kmeans(torch.from_numpy(x), **cfg)
        for r in ranks:
            torch.testing.assert_close(r[name]["centers"], one.centers, rtol=0, atol=1e-5)
            assert r[name]["inertia"] == pytest.approx(one.inertia, rel=1e-9)
        assert torch.equal(torch.cat([r[name]["labels"] for r in ranks]), one.labels)
