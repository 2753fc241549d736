"""Product-quantised codes ("pq"): M sub-spaces of ``d_sub`` dims, K centroids in each.

A vector ``z`` of ``dim = M * d_sub`` floats is cut into M consecutive sub-vectors; its code is
the index of the nearest centroid in each, one byte per sub-space (K <= 256), so a code is M
bytes: the layout of Parquet's ``fixed_size_binary[M]`` and of hex with ``2 * M`` digits.
Distances are squared L2 and floats:

- asymmetric (ADC), from a continuous query to a code's reconstruction: the sum over
  sub-spaces of one entry of the query's ``(M, K)`` table;
- symmetric (SDC), between two codes through the codebooks: the sum of centroid-to-centroid
  distances, which equals ADC from the first code's reconstruction.

The codebooks (float32 ``(M, K, d_sub)``) travel as a ``.npy`` file that rayhash writes and
reads itself, after its SHA-256 matches and without ever unpickling.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from rayhash import storage
from rayhash.codespec import parse_hex

KIND = "pq"
_NPY_MAGIC = b"\x93NUMPY"
_CHUNK = 4096  # rows per distance-table block: bounds memory at _CHUNK * M * K float64s


def check_codebooks(codebooks: np.ndarray) -> np.ndarray:
    """``codebooks`` as a read-only float32 ``(M, K, d_sub)`` array, or ``ValueError`` naming what is wrong."""
    cb = np.asarray(codebooks)
    if cb.ndim != 3 or cb.dtype.kind != "f" or 0 in cb.shape:
        raise ValueError(f"codebooks must be a float array of shape (M, K, d_sub), got {cb.dtype} {cb.shape}")
    k = cb.shape[1]
    if not 2 <= k <= 256 or k & (k - 1):
        raise ValueError(f"K (codebooks.shape[1]) must be a power of two from 2 to 256 (one byte a sub-space), got {k}")
    if not np.isfinite(cb).all():
        raise ValueError("codebooks hold NaN or infinite values")
    cb = np.array(cb, dtype=np.float32, order="C")  # a copy: the spec must not change under its holder
    cb.flags.writeable = False
    return cb


@dataclass(frozen=True, eq=False)
class PQSpec:
    """M sub-spaces x K centroids of ``d_sub`` dims, with the codebooks that define the codes.

    :meth:`to_dict` is the manifest's part (no codebooks: those live in their own file, whose
    SHA-256 the manifest records); :meth:`from_dict` joins it to the loaded codebooks again.
    """

    m: int
    d_sub: int
    k: int = 256
    codebooks: np.ndarray = field(kw_only=True, repr=False)

    def __post_init__(self):
        cb = check_codebooks(self.codebooks)
        if cb.shape != (self.m, self.k, self.d_sub):
            raise ValueError(
                f"codebooks of shape {cb.shape} do not fit a spec of M={self.m}, K={self.k}, d_sub={self.d_sub}: "
                f"expected ({self.m}, {self.k}, {self.d_sub})"
            )
        object.__setattr__(self, "codebooks", cb)

    @classmethod
    def from_codebooks(cls, codebooks: np.ndarray) -> PQSpec:
        cb = check_codebooks(codebooks)
        m, k, d_sub = cb.shape
        return cls(m=m, d_sub=d_sub, k=k, codebooks=cb)

    @property
    def dim(self) -> int:
        return self.m * self.d_sub

    @property
    def nbytes(self) -> int:
        return self.m

    @property
    def nbits(self) -> int:
        """Bits of information in a code: ``M * log2(K)`` (16 / 32 / 64 for M = 2 / 4 / 8 at K = 256)."""
        return self.m * (self.k.bit_length() - 1)

    def to_dict(self) -> dict:
        return {"kind": KIND, "m": self.m, "k": self.k, "d_sub": self.d_sub, "dim": self.dim, "nbits": self.nbits}

    @classmethod
    def from_dict(cls, spec: dict, codebooks: np.ndarray) -> PQSpec:
        if spec.get("kind") != KIND:
            raise ValueError(f"code spec kind is {spec.get('kind')!r}, not {KIND!r}")
        out = cls(m=int(spec["m"]), d_sub=int(spec["d_sub"]), k=int(spec["k"]), codebooks=codebooks)
        if "dim" in spec and int(spec["dim"]) != out.dim:
            raise ValueError(f"code spec says dim={spec['dim']}, but M * d_sub = {out.dim}")
        return out


# --- fitting, encoding, decoding -------------------------------------------------------------


def fit(vectors: np.ndarray, m: int, k: int = 256, *, niter: int = 25, nredo: int = 1, seed: int = 0) -> PQSpec:
    """Codebooks by k-means in each sub-space (faiss, exact assignment), the same for the same seed;
    ``nredo`` runs from as many starts and keeps the lowest quantisation error."""
    import faiss  # lazily: the spec itself needs only numpy

    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or m <= 0 or x.shape[1] % m:
        raise ValueError(f"vectors must be (n, dim) with dim a multiple of M={m}, got shape {x.shape}")
    if len(x) < k:
        raise ValueError(f"k-means of K={k} centroids needs at least {k} vectors, got {len(x)}")
    d_sub = x.shape[1] // m
    codebooks = np.empty((m, k, d_sub), dtype=np.float32)
    for j in range(m):
        km = faiss.Kmeans(d_sub, k, niter=niter, nredo=nredo, seed=seed, verbose=False, max_points_per_centroid=len(x))
        km.cp.min_points_per_centroid = 1  # small training sets are the tests' and pilots' norm
        km.train(np.ascontiguousarray(x[:, j * d_sub : (j + 1) * d_sub]))
        codebooks[j] = km.centroids
    return PQSpec(m=m, d_sub=d_sub, k=k, codebooks=codebooks)


def _check_vectors(spec: PQSpec, vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != spec.dim or x.dtype.kind not in "fiu":
        raise ValueError(
            f"{what} must be numbers of shape (n, {spec.dim}) for M={spec.m} x d_sub={spec.d_sub}, "
            f"got {x.dtype} {x.shape}"
        )
    return x


def check_codes(spec: PQSpec, codes: np.ndarray) -> np.ndarray:
    """``codes`` as uint8 ``(n, M)`` with every entry below K, or ``ValueError`` naming the expected shape."""
    c = np.asarray(codes)
    if c.dtype != np.uint8 or c.ndim != 2 or c.shape[1] != spec.m:
        raise ValueError(f"PQ codes must be uint8 of shape (n, {spec.m}) (M bytes each), got {c.dtype} {c.shape}")
    if spec.k < 256 and c.size and int(c.max()) >= spec.k:
        raise ValueError(f"PQ codes hold centroid {int(c.max())}, but each sub-space has K={spec.k}")
    return c


def _sub_distances(spec: PQSpec, x: np.ndarray) -> np.ndarray:
    """Squared L2 from each row's sub-vectors to every centroid: float64 ``(n, M, K)``."""
    xs = x.astype(np.float64).reshape(len(x), spec.m, spec.d_sub)
    cb = spec.codebooks.astype(np.float64)
    d = np.einsum("nmd,nmd->nm", xs, xs)[:, :, None] - 2 * np.einsum("nmd,mkd->nmk", xs, cb)
    d += np.einsum("mkd,mkd->mk", cb, cb)[None]
    return np.maximum(d, 0.0)  # the expansion may dip below zero by rounding


def encode(spec: PQSpec, vectors: np.ndarray) -> np.ndarray:
    """Nearest centroid in each sub-space: uint8 ``(n, M)`` (the lowest index among equally near ones)."""
    x = _check_vectors(spec, vectors)
    out = np.empty((len(x), spec.m), dtype=np.uint8)
    for lo in range(0, len(x), _CHUNK):
        out[lo : lo + _CHUNK] = _sub_distances(spec, x[lo : lo + _CHUNK]).argmin(axis=2)
    return out


def decode(spec: PQSpec, codes: np.ndarray) -> np.ndarray:
    """Reconstructions ``(n, dim)`` float32: each code's centroids laid side by side."""
    c = check_codes(spec, codes)
    return spec.codebooks[np.arange(spec.m), c].reshape(len(c), spec.dim)


# --- distances -------------------------------------------------------------------------------


def adc_tables(spec: PQSpec, queries: np.ndarray) -> np.ndarray:
    """Squared L2 from each query's sub-vectors to every centroid: float32 ``(n_q, M, K)``."""
    q = _check_vectors(spec, queries, "queries")
    return np.concatenate(
        [_sub_distances(spec, q[lo : lo + _CHUNK]) for lo in range(0, len(q), _CHUNK)]
        or [np.zeros((0, spec.m, spec.k))]
    ).astype(np.float32)


def adc_distances(spec: PQSpec, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Asymmetric squared L2 from continuous queries to codes: float32 ``(n_q, n)``."""
    tables = adc_tables(spec, queries)
    return _sum_tables(tables, check_codes(spec, codes))


def sdc_tables(spec: PQSpec) -> np.ndarray:
    """Squared L2 between every two centroids of a sub-space: float32 ``(M, K, K)``."""
    out = np.empty((spec.m, spec.k, spec.k), dtype=np.float32)
    for j, cb in enumerate(spec.codebooks.astype(np.float64)):  # one sub-space at a time bounds memory
        diff = cb[:, None, :] - cb[None, :, :]
        out[j] = np.einsum("abd,abd->ab", diff, diff)
    return out


def sdc_distances(spec: PQSpec, codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
    """Symmetric squared L2 between codes, through the codebooks: float32 ``(n_a, n_b)``."""
    a, b = check_codes(spec, codes_a), check_codes(spec, codes_b)
    tables = sdc_tables(spec)
    return _sum_tables(tables[np.arange(spec.m)[None, :], a], b)


def _sum_tables(tables: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``out[q, i] = sum_m tables[q, m, codes[i, m]]`` for ``tables (n_q, M, K)``, summed in float64."""
    out = np.zeros((tables.shape[0], len(codes)), dtype=np.float64)
    for j in range(codes.shape[1]):
        out += tables[:, j, codes[:, j]]
    return out.astype(np.float32)


def centroid_usage(spec: PQSpec, codes: np.ndarray) -> np.ndarray:
    """How many codes pick each centroid: int64 ``(M, K)``, the code health of a PQ code set."""
    c = check_codes(spec, codes)
    return np.stack([np.bincount(c[:, j], minlength=spec.k) for j in range(spec.m)])


# --- hex -------------------------------------------------------------------------------------


def to_hex(codes: np.ndarray) -> list[str]:
    return [bytes(row).hex() for row in np.asarray(codes, dtype=np.uint8)]


def from_hex(texts: list[str], m: int, k: int = 256) -> np.ndarray:
    """Parse hex strings of exactly ``2 * m`` digits into uint8 ``(n, m)``; ``ValueError`` says which is bad."""
    out = parse_hex(
        texts,
        m,
        lambda i, text: (
            f"code {i} has {len(text)} hex digits; this index holds PQ codes of M={m} bytes, i.e. {2 * m} hex digits"
        ),
    )
    if k < 256 and len(out) and int(out.max()) >= k:
        i = int(np.argmax((out >= k).any(axis=1)))
        raise ValueError(f"code {i} names centroid {int(out[i].max())}, but each sub-space has K={k}")
    return out


# --- the codebooks file ----------------------------------------------------------------------


def codebooks_bytes(spec: PQSpec) -> bytes:
    """The codebooks as ``.npy`` bytes (float32, C order, no pickle)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(spec.codebooks), allow_pickle=False)
    return buf.getvalue()


def codebooks_from_bytes(data: bytes, source: str = "codebooks") -> np.ndarray:
    """Parse ``.npy`` bytes into checked codebooks; anything else (a pickle, an ``.npz``, object
    arrays) is refused before numpy could run code from it."""
    if not data.startswith(_NPY_MAGIC):
        raise ValueError(f"{source}: not a .npy array file; rayhash reads codebooks only as .npy float32 (M, K, d_sub)")
    try:
        cb = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{source}: unreadable .npy codebooks ({e})") from None
    if cb.dtype != np.float32:
        raise ValueError(f"{source}: codebooks must be float32 (M, K, d_sub), got {cb.dtype} {cb.shape}")
    return check_codebooks(cb)


def save_codebooks(uri: str, spec: PQSpec) -> str:
    """Write the codebooks file atomically; returns its SHA-256 for the manifest."""
    data = codebooks_bytes(spec)
    storage.write_bytes_atomic(uri, data)
    return storage.sha256_bytes(data)


def load_codebooks(uri: str, sha256: str, spec: dict | None = None) -> PQSpec:
    """The spec whose codebooks sit at ``uri``, read only once its bytes match ``sha256``
    (:class:`rayhash.storage.ChecksumError` otherwise); ``spec`` (a :meth:`PQSpec.to_dict`) must agree."""
    cb = codebooks_from_bytes(storage.read_verified(uri, sha256), uri)
    return PQSpec.from_codebooks(cb) if spec is None else PQSpec.from_dict(spec, cb)
