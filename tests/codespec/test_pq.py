"""PQ code spec: codes, reconstructions and distances against brute-force loops over sub-spaces;
k-means fitting; hex; the codebooks file (checksum, never unpickled)."""

import pickle
from pathlib import Path

import faiss
import numpy as np
import pytest

from rayhash import storage
from rayhash.codespec import pq


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # the test machine is shared; k-means is small here
    yield
    faiss.omp_set_num_threads(saved)


@pytest.fixture(scope="module")
def spec():
    rng = np.random.default_rng(0)
    return pq.PQSpec(m=3, d_sub=5, k=16, codebooks=rng.standard_normal((3, 16, 5)))


def ref_encode(codebooks, x):
    """Nearest centroid per sub-space, one vector and one sub-space at a time."""
    m, k, d_sub = codebooks.shape
    out = np.zeros((len(x), m), dtype=np.uint8)
    for i in range(len(x)):
        for j in range(m):
            sub = x[i, j * d_sub : (j + 1) * d_sub].astype(np.float64)
            out[i, j] = np.argmin([np.sum((sub - codebooks[j, c]) ** 2) for c in range(k)])
    return out


def ref_decode(codebooks, codes):
    return np.array([np.concatenate([codebooks[j, c] for j, c in enumerate(row)]) for row in codes])


def test_encode_and_decode_match_loops(spec):
    x = np.random.default_rng(1).standard_normal((60, spec.dim)).astype(np.float32)
    codes = pq.encode(spec, x)
    assert codes.dtype == np.uint8 and codes.shape == (60, 3)
    np.testing.assert_array_equal(codes, ref_encode(spec.codebooks, x))
    np.testing.assert_array_equal(pq.decode(spec, codes), ref_decode(spec.codebooks, codes))
    # a reconstruction encodes back to its own code
    np.testing.assert_array_equal(pq.encode(spec, pq.decode(spec, codes)), codes)


def test_adc_tables_and_distances_match_loops(spec):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((7, spec.dim)).astype(np.float32)
    codes = rng.integers(0, spec.k, (50, spec.m)).astype(np.uint8)
    tables = pq.adc_tables(spec, q)
    assert tables.dtype == np.float32 and tables.shape == (7, spec.m, spec.k)
    for a in range(len(q)):
        for j in range(spec.m):
            for c in range(spec.k):
                sub = q[a, j * spec.d_sub : (j + 1) * spec.d_sub].astype(np.float64)
                assert tables[a, j, c] == pytest.approx(np.sum((sub - spec.codebooks[j, c]) ** 2), rel=1e-5, abs=1e-5)
    dist = pq.adc_distances(spec, q, codes)
    assert dist.dtype == np.float32 and dist.shape == (7, 50)
    # ADC is the squared distance from the query to each code's reconstruction
    recon = ref_decode(spec.codebooks, codes).astype(np.float64)
    want = ((q[:, None, :].astype(np.float64) - recon[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, want, rtol=1e-5, atol=1e-5)


def test_sdc_distances_match_reconstructions(spec):
    rng = np.random.default_rng(3)
    a = rng.integers(0, spec.k, (9, spec.m)).astype(np.uint8)
    b = rng.integers(0, spec.k, (40, spec.m)).astype(np.uint8)
    dist = pq.sdc_distances(spec, a, b)
    ra, rb = ref_decode(spec.codebooks, a).astype(np.float64), ref_decode(spec.codebooks, b).astype(np.float64)
    np.testing.assert_allclose(dist, ((ra[:, None] - rb[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-5)
    # symmetric: SDC(a, b) = SDC(b, a), zero on the same code, and ADC from a's reconstruction
    np.testing.assert_allclose(pq.sdc_distances(spec, b, a), dist.T, rtol=1e-6)
    assert np.all(np.diag(pq.sdc_distances(spec, a, a)) == 0)
    np.testing.assert_allclose(pq.adc_distances(spec, pq.decode(spec, a), b), dist, rtol=1e-5, atol=1e-5)


def test_centroid_usage_counts_each_sub_space(spec):
    codes = np.random.default_rng(4).integers(0, spec.k, (300, spec.m)).astype(np.uint8)
    usage = pq.centroid_usage(spec, codes)
    assert usage.shape == (spec.m, spec.k)
    for j in range(spec.m):
        for c in range(spec.k):
            assert usage[j, c] == sum(1 for row in codes if row[j] == c)


def test_fit_recovers_planted_centroids_and_repeats_with_a_seed():
    # 4 well-separated centres per sub-space, each vector a random centre per sub-space plus
    # small noise: k-means with K=4 (the best of 5 starts) must find the centres (up to order).
    rng = np.random.default_rng(5)
    m, k, d_sub = 2, 4, 3
    centres = rng.standard_normal((m, k, d_sub)) * 10
    pick = rng.integers(0, k, (800, m))
    x = np.concatenate([centres[j, pick[:, j]] for j in range(m)], axis=1) + rng.normal(0, 0.05, (800, m * d_sub))
    spec = pq.fit(x, m, k, nredo=5, seed=7)
    assert (spec.m, spec.k, spec.d_sub) == (m, k, d_sub)
    for j in range(m):
        got = spec.codebooks[j][np.lexsort(spec.codebooks[j].T)]
        want = centres[j][np.lexsort(centres[j].T)]
        np.testing.assert_allclose(got, want, atol=0.05)
    np.testing.assert_array_equal(pq.fit(x, m, k, nredo=5, seed=7).codebooks, spec.codebooks)


def test_fit_refuses_bad_inputs():
    x = np.zeros((10, 6), np.float32)
    with pytest.raises(ValueError, match="multiple of M=4"):
        pq.fit(x, 4, 4)
    with pytest.raises(ValueError, match="at least 16 vectors"):
        pq.fit(x, 2, 16)


def test_spec_shapes_and_dict_form(spec):
    assert spec.to_dict() == {"kind": "pq", "m": 3, "k": 16, "d_sub": 5, "dim": 15, "nbits": 12}
    again = pq.PQSpec.from_dict(spec.to_dict(), spec.codebooks)
    np.testing.assert_array_equal(again.codebooks, spec.codebooks)
    assert pq.PQSpec(m=8, d_sub=2, codebooks=np.zeros((8, 256, 2))).nbits == 64
    with pytest.raises(ValueError, match=r"expected \(3, 16, 4\)"):
        pq.PQSpec(m=3, d_sub=4, k=16, codebooks=spec.codebooks)
    with pytest.raises(ValueError, match="power of two"):
        pq.PQSpec.from_codebooks(np.zeros((2, 12, 3)))
    with pytest.raises(ValueError, match=r"shape \(M, K, d_sub\)"):
        pq.PQSpec.from_codebooks(np.zeros((2, 16)))
    with pytest.raises(ValueError, match="dim=16"):
        pq.PQSpec.from_dict({**spec.to_dict(), "dim": 16}, spec.codebooks)
    with pytest.raises(ValueError, match="not 'pq'"):
        pq.PQSpec.from_dict({**spec.to_dict(), "kind": "binary"}, spec.codebooks)
    # the spec keeps its own read-only copy
    source = np.ones((1, 2, 1), np.float32)
    held = pq.PQSpec.from_codebooks(source)
    source[:] = 5
    assert (held.codebooks == 1).all() and not held.codebooks.flags.writeable


def test_bad_codes_and_vectors_name_the_expected_shape(spec):
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        pq.decode(spec, np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pq.sdc_distances(spec, np.zeros((2, 3), np.int64), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="K=16"):
        pq.decode(spec, np.full((1, 3), 16, np.uint8))
    with pytest.raises(ValueError, match=r"\(n, 15\)"):
        pq.encode(spec, np.zeros((2, 14), np.float32))
    with pytest.raises(ValueError, match=r"\(n, 15\)"):
        pq.adc_tables(spec, np.zeros(15, np.float32))


def test_hex_round_trip_and_bad_lengths():
    codes = np.random.default_rng(6).integers(0, 256, (20, 4)).astype(np.uint8)
    texts = pq.to_hex(codes)
    assert all(len(t) == 8 for t in texts) and texts[0] == bytes(codes[0]).hex()
    np.testing.assert_array_equal(pq.from_hex(texts, 4), codes)
    with pytest.raises(ValueError, match="code 1 has 6 hex digits.*M=4 bytes, i.e. 8 hex digits"):
        pq.from_hex(["00" * 4, "00" * 3], 4)
    with pytest.raises(ValueError, match="code 0 has 10 hex digits"):
        pq.from_hex(["00" * 5], 4)
    with pytest.raises(ValueError, match="not valid hex"):
        pq.from_hex(["zz" * 4], 4)
    with pytest.raises(ValueError, match="must be a hex string"):
        pq.from_hex([1234], 4)
    with pytest.raises(ValueError, match="centroid 16.*K=16"):
        pq.from_hex(["0010"], 2, k=16)


# --- the codebooks file ----------------------------------------------------------------------


def test_codebooks_file_round_trip(spec, tmp_path):
    uri = str(tmp_path / "codebooks.npy")
    sha = pq.save_codebooks(uri, spec)
    assert sha == storage.sha256_uri(uri)
    loaded = pq.load_codebooks(uri, sha, spec.to_dict())
    assert loaded.to_dict() == spec.to_dict() and loaded.codebooks.dtype == np.float32
    np.testing.assert_array_equal(loaded.codebooks, spec.codebooks)
    with pytest.raises(ValueError, match=r"expected \(3, 16, 6\)"):
        pq.load_codebooks(uri, sha, {**spec.to_dict(), "d_sub": 6, "dim": 18})


def test_tampered_codebooks_file_is_refused(spec, tmp_path):
    uri = str(tmp_path / "codebooks.npy")
    sha = pq.save_codebooks(uri, spec)
    data = bytearray(Path(uri).read_bytes())
    data[-1] ^= 0x01  # one bit of the last centroid
    Path(uri).write_bytes(bytes(data))
    with pytest.raises(storage.ChecksumError, match="SHA-256"):
        pq.load_codebooks(uri, sha)


class _Trap:
    """Unpickling it touches a file: proof that someone ran pickle on the bytes."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("form", ["pickle", "object npy", "npz", "float64 npy"])
def test_codebooks_file_is_never_unpickled(tmp_path, form):
    marker = tmp_path / "unpickled"
    uri = tmp_path / "codebooks.npy"
    if form == "pickle":
        uri.write_bytes(pickle.dumps(_Trap(marker)))
    elif form == "object npy":
        np.save(uri, np.array([_Trap(marker)], dtype=object), allow_pickle=True)
    elif form == "npz":
        with open(uri, "wb") as f:
            np.savez(f, codebooks=np.zeros((2, 4, 3), np.float32))
    else:
        np.save(uri, np.zeros((2, 4, 3), np.float64))
    sha = storage.sha256_uri(str(uri))  # the checksum matches: only the format check stands in the way
    with pytest.raises(ValueError, match="not a .npy|unreadable|must be float32"):
        pq.load_codebooks(str(uri), sha)
    assert not marker.exists()
