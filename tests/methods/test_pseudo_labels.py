"""Pseudo labels against numpy (whitening, Lloyd from the same seeds, PSCH's thresholds), and
2 gloo ranks against one process."""

import numpy as np
import pytest
import torch

from rayhash import dist
from rayhash.clustering import kmeans_plusplus
from rayhash.methods.pseudo_labels import UNLABELLED, cluster_features, distance_thresholds, prepare_features


def _features(n=90, d=6, blobs=4, seed=0):
    """Post-ReLU-like features: a few overlapping blobs, so thresholds have members to drop."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (blobs, d))
    x = centres[np.arange(n) % blobs] + rng.normal(0, 1, (n, d))
    return torch.from_numpy(np.maximum(x, 0) + 0.05 * rng.random((n, d))).float()


def _np_prepare(x, pca_dims):
    x = x.astype(np.float64)
    if pca_dims:
        eigval, eigvec = np.linalg.eigh(np.cov(x, rowvar=False, bias=True))
        top, var = eigvec[:, ::-1][:, :pca_dims], eigval[::-1][:pca_dims]
        x = (x - x.mean(0)) @ top / np.sqrt(var)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_lloyd(x, init, n_iter, tol=1e-4):
    """Lloyd's k-means with scikit-learn's relative tolerance, written out in numpy."""
    threshold = tol * x.var(0).mean()
    centres = init.copy()
    for _ in range(n_iter):
        labels = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        assert len(np.unique(labels)) == len(centres), "the reference has no rule for an empty cluster"
        new = np.stack([x[labels == c].mean(0) for c in range(len(centres))])
        shift = ((new - centres) ** 2).sum()
        centres = new
        if shift <= threshold:
            break
    return ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1), centres


def _align_signs(ours, ref):
    """``ref`` with each column's sign flipped to agree with ``ours`` (eigenvectors have no sign)."""
    return ref * np.sign((ours * ref).sum(0))


@pytest.mark.parametrize("pca_dims", [0, 6, 3])
def test_prepare_features_matches_numpy_whitening(pca_dims):
    x = _features()
    ours = prepare_features(x, pca_dims).numpy()
    ref = _np_prepare(x.numpy(), pca_dims)
    assert ours.shape == (90, pca_dims or 6)
    np.testing.assert_allclose(ours, _align_signs(ours, ref) if pca_dims else ref, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-12)
    if pca_dims:
        # Whitened, the data has identity covariance whatever the eigenvectors' signs: our unit
        # rows scaled back by the whitened rows' norms must have it too.
        x64 = x.double().numpy()
        eigval, eigvec = np.linalg.eigh(np.cov(x64, rowvar=False, bias=True))
        white = (x64 - x64.mean(0)) @ eigvec[:, ::-1][:, :pca_dims] / np.sqrt(eigval[::-1][:pca_dims])
        rescaled = ours * np.linalg.norm(white, axis=1, keepdims=True)
        np.testing.assert_allclose(np.cov(rescaled, rowvar=False, bias=True), np.eye(pca_dims), atol=1e-9)


def test_prepare_features_rejects_a_pca_width_out_of_range():
    with pytest.raises(ValueError, match="pca_dims must be between 1 and the feature width 6"):
        prepare_features(_features(), 7)


@pytest.mark.parametrize("pca_dims", [0, 4])
def test_labels_centres_and_thresholds_match_numpy(pca_dims):
    x, k, seed = _features(), 5, 3
    pl = cluster_features(x, k, pca_dims=pca_dims, n_iter=20, seed=seed)
    points = pl.points.numpy()
    ref_points = _np_prepare(x.numpy(), pca_dims)
    ref_points = _align_signs(points, ref_points) if pca_dims else ref_points
    # The same k-means++ seeds (data points: find their rows), then an independent numpy Lloyd.
    seeds = kmeans_plusplus(pl.points, k, seed=seed).numpy()
    rows = [int(np.flatnonzero((points == s).all(1))[0]) for s in seeds]
    ref_labels, ref_centres = _np_lloyd(ref_points, ref_points[rows], n_iter=20)
    np.testing.assert_array_equal(pl.labels.numpy(), ref_labels)
    np.testing.assert_allclose(pl.centers.numpy(), ref_centres, atol=1e-9)
    assert pl.inertia == pytest.approx(((ref_points - ref_centres[ref_labels]) ** 2).sum(), rel=1e-9)

    dists = np.linalg.norm(ref_points - ref_centres[ref_labels], axis=1)
    mu = np.array([dists[ref_labels == c].mean() for c in range(k)])
    sigma = np.array([dists[ref_labels == c].std() for c in range(k)])
    for alpha in (0.0, 1.0, -0.5):
        labels, thresholds = distance_thresholds(pl, alpha)
        np.testing.assert_allclose(thresholds.numpy(), mu + alpha * sigma, rtol=1e-9)
        expected = np.where(dists <= (mu + alpha * sigma)[ref_labels], ref_labels, UNLABELLED)
        np.testing.assert_array_equal(labels.numpy(), expected)
        assert 0 < (expected == UNLABELLED).sum() < len(expected)  # the threshold keeps some and drops some
    labels, _ = distance_thresholds(pl, 100.0)
    assert torch.equal(labels, pl.assign)  # a wide enough threshold keeps every label
    assert torch.equal(pl.assign, pl.labels)


def test_k_is_capped_at_the_number_of_items(caplog):
    x = _features(n=7)
    with caplog.at_level("WARNING", logger="rayhash.methods.pseudo_labels"):
        pl = cluster_features(x, 10)
    assert "only 7 training items: using 7 clusters instead of 10" in caplog.text
    assert pl.k == 7 and sorted(pl.labels.tolist()) == list(range(7))  # one item per cluster
    labels, thresholds = distance_thresholds(pl, 1.0)
    assert torch.equal(labels, pl.labels) and float(thresholds.abs().max()) == 0.0


def _rank_pseudo_labels(runs: dict):
    """Each rank clusters its slice of every run's features; returns the labels and global state."""
    out = {}
    for name, (x, cut, k, pca_dims, alpha) in runs.items():
        shard = x[:cut] if dist.rank() == 0 else x[cut:]
        pl = cluster_features(shard, k, pca_dims=pca_dims, seed=1)
        labels, thresholds = distance_thresholds(pl, alpha)
        out[name] = {
            "points": pl.points,
            "assign": pl.assign,
            "labels": labels,
            "centers": pl.centers,
            "thresholds": thresholds,
            "inertia": pl.inertia,
        }
    return out


def test_two_gloo_ranks_equal_one_process():
    x, small = _features(), _features(n=7, seed=1)
    runs = {
        "plain": (x, 50, 5, 0, 1.0),
        "whitened": (x, 50, 5, 4, 0.5),
        "capped": (small, 3, 10, 0, 1.0),
    }
    ranks = dist.launch_local(_rank_pseudo_labels, nprocs=2, args=(runs,))
    for name, (x, *_) in runs.items():
        one = _rank_pseudo_labels({name: (x, len(x), *runs[name][2:])})[name]  # rank 0 of one process holds all
        for key in ("points", "assign", "labels"):
            got = torch.cat([r[name][key] for r in ranks])
            torch.testing.assert_close(got, one[key], rtol=0, atol=1e-12, msg=f"{name}: {key}")
        for r in ranks:
            for key in ("centers", "thresholds"):
                torch.testing.assert_close(r[name][key], one[key], rtol=0, atol=1e-12, msg=f"{name}: {key}")
            assert r[name]["inertia"] == pytest.approx(one["inertia"], rel=1e-12)
    whitened = torch.cat([r["whitened"]["labels"] for r in ranks])
    assert 0 < int((whitened == UNLABELLED).sum()) < len(whitened)
