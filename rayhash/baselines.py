"""Shallow baselines that every learned method must beat: LSH and ITQ for binary codes, PQ for
product-quantised ones.

Each fits on a training set of feature vectors ``(n, d)`` and says the kind of code it gives
(``code_kind``). LSH and ITQ encode to continuous projections ``(n, nbits)`` that
:func:`rayhash.codespec.binary.pack` binarises (bit = projection > 0); PQ encodes to codes of
M = nbits / 8 bytes, and a query keeps its features, scored by asymmetric distance. Their state is
a plain dict of numpy arrays, so it saves with ``numpy.savez`` and loads without pickle.
"""

from __future__ import annotations

import logging

import numpy as np

from rayhash.codespec import pq as pq_lib
from rayhash.codespec.binary import check_nbits

logger = logging.getLogger(__name__)


def _check_features(x, name: str = "x", dims: int | None = None, dtype=np.float64) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number) or len(x) == 0:
        raise ValueError(
            f"{name} must be a non-empty numeric array (n, d), got {x.dtype} {x.shape}; flatten images first."
        )
    if dims is not None and x.shape[1] != dims:
        raise ValueError(f"{name} has {x.shape[1]} features but the baseline was fitted on {dims}.")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values.")
    return x.astype(dtype, copy=False)


class _Baseline:
    """A mean to centre with and a linear projection ``(d, nbits)``: encode = (x - mean) @ W."""

    code_kind = "binary"

    def __init__(self) -> None:
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    @property
    def nbits(self) -> int:
        self._check_fitted()
        return int(self.projection.shape[1])

    def _check_fitted(self) -> None:
        if self.projection is None:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call fit(x, nbits, seed) or load_state_dict first."
            )

    def encode(self, x) -> np.ndarray:
        """Continuous projections ``(n, nbits)`` float32; pack them with ``rayhash.codespec.binary.pack``."""
        self._check_fitted()
        # float32 halves the memory of encoding a whole dataset; fitting stays in float64.
        x = _check_features(x, dims=len(self.mean), dtype=np.float32)
        return (x - self.mean.astype(np.float32)) @ self.projection.astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {"mean": self.mean.copy(), "projection": self.projection.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> _Baseline:
        missing = {"mean", "projection"} - set(state)
        if missing:
            raise ValueError(f"{type(self).__name__} state lacks {sorted(missing)}; it holds {sorted(state)}.")
        mean = np.asarray(state["mean"], np.float64)
        projection = np.asarray(state["projection"], np.float64)
        if mean.ndim != 1 or projection.ndim != 2 or projection.shape[0] != len(mean):
            raise ValueError(f"state shapes do not fit: mean {mean.shape}, projection {projection.shape}.")
        check_nbits(int(projection.shape[1]))
        self.mean, self.projection = mean, projection
        return self


class LSH(_Baseline):
    """Random hyperplanes through the training mean (Charikar's SimHash on centred inputs)."""

    def fit(self, x, nbits: int, seed: int = 0) -> LSH:
        x = _check_features(x)
        check_nbits(nbits)
        self.mean = x.mean(axis=0)
        self.projection = np.random.default_rng(seed).standard_normal((x.shape[1], nbits))
        return self


class ITQ(_Baseline):
    """Iterative quantisation (Gong & Lazebnik, CVPR 2011): PCA to nbits, then a rotation R
    that minimises the quantisation loss ``||sign(V R) - V R||^2`` by alternating the codes
    and an orthogonal Procrustes step, from a seeded random rotation."""

    def __init__(self, n_iter: int = 50) -> None:
        super().__init__()
        if n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}.")
        self.n_iter = n_iter
        self.pca: np.ndarray | None = None  # (d, nbits) principal directions
        self.rotation: np.ndarray | None = None  # (nbits, nbits) orthogonal
        self.loss_history: list[float] = []  # loss at the start and after each iteration

    def fit(self, x, nbits: int, seed: int = 0) -> ITQ:
        x = _check_features(x)
        check_nbits(nbits)
        if nbits > min(x.shape):
            raise ValueError(
                f"ITQ keeps nbits={nbits} principal components, but x {x.shape} has at most "
                f"{min(x.shape)}; use fewer bits or more samples/features."
            )
        self.mean = x.mean(axis=0)
        centred = x - self.mean
        eigvals, eigvecs = np.linalg.eigh(centred.T @ centred)  # ascending order
        pca = eigvecs[:, ::-1][:, :nbits]
        v = centred @ pca
        rotation, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((nbits, nbits)))
        self.loss_history = [_quantisation_loss(v @ rotation)]
        for _ in range(self.n_iter):
            b = np.where(v @ rotation > 0, 1.0, -1.0)
            # Procrustes: the orthogonal R maximising tr(B^T V R) is U_A U_B^T for B^T V = U_B S U_A^T.
            u_b, _, u_a_t = np.linalg.svd(b.T @ v)
            rotation = u_a_t.T @ u_b.T
            self.loss_history.append(_quantisation_loss(v @ rotation))
        logger.debug("ITQ %d bits: quantisation loss %.4g -> %.4g", nbits, self.loss_history[0], self.loss_history[-1])
        self.pca, self.rotation = pca, rotation
        self.projection = pca @ rotation
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**super().state_dict(), "pca": self.pca.copy(), "rotation": self.rotation.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> ITQ:
        if not {"pca", "rotation"} <= set(state):
            raise ValueError(f"ITQ state needs 'pca' and 'rotation' beside the projection; it holds {sorted(state)}.")
        super().load_state_dict(state)
        self.pca = np.asarray(state["pca"], np.float64)
        self.rotation = np.asarray(state["rotation"], np.float64)
        return self


def _quantisation_loss(z: np.ndarray) -> float:
    return float(np.square(np.where(z > 0, 1.0, -1.0) - z).sum())


class PQ:
    """Product quantisation (Jegou, Douze and Schmid, TPAMI 2011): the features cut into M = nbits / 8
    sub-spaces of consecutive dims, K = 256 centroids in each by k-means
    (:func:`rayhash.codespec.pq.fit`), so a code is M bytes, as DeepQuan's are."""

    code_kind = pq_lib.KIND

    def __init__(self, niter: int = 25) -> None:
        if niter < 1:
            raise ValueError(f"niter must be >= 1 (k-means iterations per sub-space), got {niter}.")
        self.niter = niter
        self.spec: pq_lib.PQSpec | None = None  # the codebooks, once fitted

    @property
    def nbits(self) -> int:
        return self._fitted().nbits

    def _fitted(self) -> pq_lib.PQSpec:
        if self.spec is None:
            raise RuntimeError("PQ is not fitted: call fit(x, nbits, seed) or load_state_dict first.")
        return self.spec

    def fit(self, x, nbits: int, seed: int = 0) -> PQ:
        x = _check_features(x, dtype=np.float32)
        check_nbits(nbits)
        m, dims = nbits // 8, x.shape[1]
        if dims % m:
            fits = ", ".join(str(8 * j) for j in range(1, 17) if dims % j == 0)
            raise ValueError(
                f"PQ cuts the {dims} features into M = nbits / 8 = {m} sub-spaces of equal width, and {m} does not "
                f"divide {dims}; choose nbits = 8 * M for an M that divides it ({fits}, ...)."
            )
        self.spec = pq_lib.fit(x, m, 256, niter=self.niter, seed=seed)
        return self

    def encode(self, x) -> np.ndarray:
        """Codes uint8 ``(n, M)``: the nearest centroid of each sub-space (queries are scored from ``x`` itself)."""
        spec = self._fitted()
        return pq_lib.encode(spec, _check_features(x, dims=spec.dim, dtype=np.float32))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"codebooks": self._fitted().codebooks.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> PQ:
        if "codebooks" not in state:
            raise ValueError(f"PQ state needs 'codebooks' (M, K, d_sub); it holds {sorted(state)}.")
        self.spec = pq_lib.PQSpec.from_codebooks(state["codebooks"])
        return self


BASELINES = {"lsh": LSH, "itq": ITQ, "pq": PQ}


def create_baseline(name: str, **kwargs) -> _Baseline | PQ:
    """An unfitted baseline by name (``lsh``, ``itq`` or ``pq``)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(sorted(BASELINES))}.")
    return BASELINES[name](**kwargs)
