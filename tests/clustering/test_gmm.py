import io

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.mixture import GaussianMixture

from rayhash import dist
from rayhash.clustering import GMMState, fit_gmm, gmm, responsibilities, score, state_from_dict, state_to_dict

COV_TYPES = ["full", "diag"]


def _blobs(n=1500, d=4, centers=4, seed=0):
    """Blobs stretched by a random linear map, so the full covariances are far from diagonal."""
    x, _ = make_blobs(n, n_features=d, centers=centers, cluster_std=1.0, center_box=(-12, 12), random_state=seed)
    mix = np.random.default_rng(seed).normal(size=(d, d))
    return (x @ mix + 5.0).astype(np.float32)


def _state_of(g: GaussianMixture, covariance_type: str) -> GMMState:
    return GMMState(
        means=torch.tensor(g.means_),
        covariances=torch.tensor(g.covariances_),
        weights=torch.tensor(g.weights_),
        covariance_type=covariance_type,
        n_iter=int(g.n_iter_),
        converged=bool(g.converged_),
        lower_bound=float(g.lower_bound_),
    )


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_density_matches_sklearn_for_the_same_parameters(covariance_type):
    x = _blobs().astype(np.float64)
    g = GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(x)
    state = _state_of(g, covariance_type)
    assert score(torch.from_numpy(x), state) == pytest.approx(g.score(x), rel=1e-10)
    np.testing.assert_allclose(responsibilities(torch.from_numpy(x), state).numpy(), g.predict_proba(x), atol=1e-9)


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_fit_matches_sklearn(covariance_type):
    x = _blobs()
    g = GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(x)
    state = fit_gmm(torch.from_numpy(x), 4, covariance_type=covariance_type)
    ours = score(torch.from_numpy(x), state)
    assert abs(ours - g.score(x)) <= 0.01 * abs(g.score(x))
    assert state.converged and state.n_iter <= 100
    # EM never lowers the likelihood: the state after the last M-step scores at least its lower bound.
    assert ours >= state.lower_bound - 1e-9
    resp = responsibilities(torch.from_numpy(x), state)
    assert resp.dtype == torch.float32 and resp.shape == (len(x), 4)
    torch.testing.assert_close(resp.sum(1), torch.ones(len(x)))
    torch.testing.assert_close(state.weights.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_many_components_on_few_points():
    # The DSCH fine level: components outnumber the points each can hold in d dimensions.
    x = np.tanh(_blobs(n=300, d=16, centers=6) / 10)
    state = fit_gmm(torch.from_numpy(x), 40, covariance_type="full", init="kmeans++", max_iter=20)
    assert torch.linalg.cholesky_ex(state.covariances).info.eq(0).all()
    assert np.isfinite(state.lower_bound)
    assert score(torch.from_numpy(x), state) >= state.lower_bound - 1e-9


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_blocks_do_not_change_the_fit(covariance_type, monkeypatch):
    x = torch.from_numpy(_blobs(n=400))
    whole = fit_gmm(x, 3, covariance_type=covariance_type, max_iter=10)
    blocked = fit_gmm(x, 3, covariance_type=covariance_type, max_iter=10, chunk_rows=64)
    # Large inputs recompute their feature blocks every iteration instead of caching them.
    monkeypatch.setattr(gmm, "_CACHE_ELEMENTS", 0)
    recomputed = fit_gmm(x, 3, covariance_type=covariance_type, max_iter=10, chunk_rows=64)
    for other in (blocked, recomputed):
        torch.testing.assert_close(whole.means, other.means, rtol=0, atol=1e-9)
        torch.testing.assert_close(whole.covariances, other.covariances, rtol=0, atol=1e-9)
    torch.testing.assert_close(responsibilities(x, whole), responsibilities(x, whole, chunk_rows=64))


@pytest.mark.parametrize("covariance_type", COV_TYPES)
def test_state_dict_round_trips_through_torch_save(covariance_type):
    x = torch.from_numpy(_blobs(n=300))
    state = fit_gmm(x, 3, covariance_type=covariance_type, max_iter=5)
    buffer = io.BytesIO()
    torch.save(state_to_dict(state), buffer)
    buffer.seek(0)
    loaded = state_from_dict(torch.load(buffer, weights_only=True))
    for field in ("means", "covariances", "weights"):
        assert torch.equal(getattr(loaded, field), getattr(state, field))
    assert (loaded.covariance_type, loaded.n_iter, loaded.converged, loaded.lower_bound) == (
        state.covariance_type,
        state.n_iter,
        state.converged,
        state.lower_bound,
    )
    assert torch.equal(responsibilities(x, loaded), responsibilities(x, state))


def test_rejects_bad_input():
    x = torch.from_numpy(_blobs(n=50))
    with pytest.raises(ValueError, match="covariance_type"):
        fit_gmm(x, 2, covariance_type="spherical")
    with pytest.raises(ValueError, match="init"):
        fit_gmm(x, 2, init="random")
    with pytest.raises(ValueError, match="n_components"):
        fit_gmm(x, 51)
    with pytest.raises(ValueError, match="2-D floating"):
        fit_gmm(x[0], 2)
    state = fit_gmm(x, 2, max_iter=2)
    with pytest.raises(ValueError, match="x has 3 features but the GMM was fitted on 4"):
        responsibilities(x[:, :3], state)
    with pytest.raises(ValueError, match="missing keys \\['weights'\\]"):
        state_from_dict({k: v for k, v in state_to_dict(state).items() if k != "weights"})
    with pytest.raises(ValueError, match="not positive definite"):
        fit_gmm(torch.ones(20, 2), 2, reg_covar=0.0, covariance_type="diag")


def _fit_shard(x, bounds):
    shard = torch.from_numpy(x[bounds[dist.rank()] : bounds[dist.rank() + 1]])
    results = {}
    for cov in COV_TYPES:
        state = fit_gmm(shard, 4, covariance_type=cov)
        results[cov] = state_to_dict(state) | {"resp": responsibilities(shard, state), "score": score(shard, state)}
    return results


def test_two_ranks_equal_one_process():
    x = _blobs(n=1200)
    bounds = [0, 660, 1200]  # 55% / 45%
    ranks = dist.launch_local(_fit_shard, 2, args=(x, bounds))
    for cov in COV_TYPES:
        one = fit_gmm(torch.from_numpy(x), 4, covariance_type=cov)
        for r in ranks:
            for field in ("means", "covariances", "weights"):
                torch.testing.assert_close(r[cov][field], getattr(one, field), rtol=0, atol=1e-5)
            assert r[cov]["n_iter"] == one.n_iter
            assert r[cov]["score"] == pytest.approx(score(torch.from_numpy(x), one), rel=1e-9)
        resp = torch.cat([r[cov]["resp"] for r in ranks])
        torch.testing.assert_close(resp, responsibilities(torch.from_numpy(x), one), rtol=0, atol=1e-5)
