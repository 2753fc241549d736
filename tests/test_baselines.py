"""LSH, ITQ and PQ on scikit-learn's real digit images, checked against their defining properties."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

from rayhash.baselines import ITQ, LSH, PQ, create_baseline
from rayhash.codespec import binary as codes
from rayhash.codespec import pq
from rayhash.metrics import map_at_k
from rayhash.metrics_pq import map_at_k as map_at_k_adc


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    query, db = perm[:200], perm[200:]
    return x / 16.0, y, query, db


def test_itq_rotation_is_orthogonal_and_pca_matches_sklearn(digits):
    x, _, _, db = digits
    itq = ITQ().fit(x[db], nbits=16, seed=0)
    np.testing.assert_allclose(itq.rotation.T @ itq.rotation, np.eye(16), atol=1e-10)
    # Same principal subspace and order as scikit-learn, up to each direction's sign.
    sk = PCA(n_components=16).fit(x[db]).components_
    np.testing.assert_allclose(np.abs(sk @ itq.pca), np.eye(16), atol=1e-6)
    np.testing.assert_allclose(itq.projection, itq.pca @ itq.rotation)


def test_itq_quantisation_loss_decreases(digits):
    x, _, _, db = digits
    loss = np.array(ITQ(n_iter=50).fit(x[db], nbits=32, seed=3).loss_history)
    assert len(loss) == 51
    assert (np.diff(loss) <= 1e-9 * loss[0]).all()  # each alternating step can only lower it
    assert loss[-1] < 0.95 * loss[0]  # 27.5k -> 24.9k here


def test_itq_beats_lsh_on_real_images(digits):
    x, y, query, db = digits

    def score(model):
        q, d = codes.pack(model.encode(x[query])), codes.pack(model.encode(x[db]))
        return map_at_k(q, d, y[query], y[db], k=100)

    itq = [score(ITQ().fit(x[db], 16, seed=s)) for s in range(3)]
    lsh = [score(LSH().fit(x[db], 16, seed=s)) for s in range(3)]
    assert min(itq) > max(lsh) + 0.05, (itq, lsh)


def test_itq_is_seeded():
    x = np.random.default_rng(0).standard_normal((300, 20))
    a, b, c = (ITQ().fit(x, 8, seed=s).projection for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_lsh_hyperplanes_are_reproducible_by_seed_and_centred(digits):
    x, _, _, db = digits
    a, b, c = (LSH().fit(x[db], 32, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.projection, b.projection)
    assert not np.allclose(a.projection, c.projection)
    np.testing.assert_allclose(a.encode(a.mean[None]), 0, atol=1e-5)  # hyperplanes pass through the mean


def test_lsh_bit_disagreement_estimates_the_angle():
    # SimHash: P(bit differs) = angle / pi between the centred vectors.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 30))
    lsh = LSH().fit(x, 4096, seed=0)
    packed = codes.pack(lsh.encode(x[:5]))
    centred = x[:5] - lsh.mean
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    angles = np.arccos(np.clip(unit @ unit.T, -1, 1)) / np.pi
    np.testing.assert_allclose(codes.hamming(packed, packed) / 4096, angles, atol=0.03)


def test_pq_codes_are_the_nearest_centroids_of_seeded_kmeans_codebooks(digits):
    x, y, query, db = digits
    model = PQ().fit(x[db], nbits=32, seed=0)
    assert (model.code_kind, model.spec.m, model.spec.k, model.spec.d_sub, model.nbits) == ("pq", 4, 256, 16, 32)
    np.testing.assert_array_equal(model.spec.codebooks, pq.fit(x[db], 4, seed=0).codebooks)  # seeded k-means
    got = model.encode(x[query])
    books = model.spec.codebooks.astype(np.float64)
    for i in range(0, len(query), 17):  # numpy reference: brute force per sub-space
        for j in range(4):
            sub = x[query[i], j * 16 : (j + 1) * 16]
            assert got[i, j] == np.argmin(((books[j] - sub) ** 2).sum(axis=1))
    # ADC from the digits themselves ranks the codes better than ITQ's Hamming ranking at the same bytes
    itq = ITQ().fit(x[db], 32, seed=0)
    itq_map = map_at_k(codes.pack(itq.encode(x[query])), codes.pack(itq.encode(x[db])), y[query], y[db], k=100)
    assert map_at_k_adc(model.spec, x[query], model.encode(x[db]), y[query], y[db], k=100) > itq_map


@pytest.mark.parametrize("name", ["lsh", "itq", "pq"])
def test_state_dict_round_trip_through_npz(name, digits, tmp_path):
    x, _, _, db = digits
    model = create_baseline(name).fit(x[db], 16, seed=0)
    np.savez(tmp_path / "state.npz", **model.state_dict())
    with np.load(tmp_path / "state.npz", allow_pickle=False) as state:
        loaded = create_baseline(name).load_state_dict(dict(state))
    np.testing.assert_array_equal(loaded.encode(x[:50]), model.encode(x[:50]))
    assert loaded.nbits == 16


def test_bad_inputs_say_what_is_wrong():
    x = np.random.default_rng(0).standard_normal((100, 12))
    with pytest.raises(RuntimeError, match="not fitted"):
        LSH().encode(x)
    with pytest.raises(ValueError, match="multiple of 8"):
        LSH().fit(x, 12)
    with pytest.raises(ValueError, match="principal components"):
        ITQ().fit(x, 16)
    with pytest.raises(ValueError, match="fitted on 12"):
        ITQ().fit(x, 8).encode(x[:, :5])
    with pytest.raises(ValueError, match="flatten"):
        LSH().fit(x.reshape(10, 10, 12), 8)
    with pytest.raises(ValueError, match="NaN"):
        LSH().fit(np.full((4, 3), np.nan), 8)
    with pytest.raises(ValueError, match="rotation"):
        ITQ().load_state_dict(LSH().fit(x, 8).state_dict())
    with pytest.raises(ValueError, match="choose one of itq, lsh, pq"):
        create_baseline("opq")
    with pytest.raises(RuntimeError, match="not fitted"):
        PQ().encode(x)
    big = np.random.default_rng(0).standard_normal((300, 784))
    with pytest.raises(ValueError, match=r"M = nbits / 8 = 3 .* does not divide 784; .*\(8, 16, 32, 56, 64, 112, 128"):
        PQ().fit(big, 24)
    with pytest.raises(ValueError, match="fitted on 12"):
        PQ().fit(np.tile(x, (3, 1)), 16).encode(x[:, :6])
    with pytest.raises(ValueError, match="codebooks"):
        PQ().load_state_dict(LSH().fit(x, 8).state_dict())
