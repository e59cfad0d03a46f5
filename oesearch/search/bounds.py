"""Exact k-NN inside a pool, pruned by a lower bound from a PCA projection.

A draw on a 300K x 3,072 corpus reads the pool's 10,000 full rows (123 MB of
float32) when it computes every exact distance. Natural images keep most of
their energy in few principal components, so a cheap bound rules most of the
pool out first. With an orthonormal basis ``P`` of ``r`` components, a mean
``mu``, and for every item the code ``[P^T (x - mu), ||residual of x||]``:

    ||x - q||^2 = ||P^T (x - q)||^2 + ||R (x - q)||^2
               >= ||P^T (x - q)||^2 + (||R (x - mu)|| - ||R (q - mu)||)^2

(reverse triangle inequality in the residual subspace ``R = I - P P^T``). The
right-hand side is the plain L2 distance between the two ``r + 1``-value codes,
so a FAISS flat index over the codes gives the pool's smallest bounds, touching
only the pool's rows. Exact distances (from the full flat index, the very
numbers an unpruned search computes) are then taken only for the items whose
bound does not exceed the k-th exact distance found among the best-bounded
ones. Every item left out has a bound, hence a true distance, above that: the
result is exactly the unpruned one.
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["ProjectedBound", "auto_bound_dims"]

_FIT_SAMPLE = 20_000  # rows the principal components are estimated from
_CHUNK = 20_000  # rows projected at a time (float64 temporaries)
# The bound is computed in float32 from float32 codes (the projection itself in
# float32 too); shrink it by more than that arithmetic can err, relative to the
# bound and to the data's scale, so it never exceeds a true distance.
_REL_MARGIN = 1e-4
_SCALE_MARGIN = 1e-5


def auto_bound_dims(size: int, dim: int) -> int:
    """Components to prune with: worth it for large image corpora (80MTI-like), off for small ones."""
    return 127 if dim >= 1024 and size >= 20_000 else 0


class ProjectedBound:
    """Codes ``[P^T (x - mu), ||residual||]`` of every corpus item, in a FAISS flat index."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray, codes: np.ndarray, scale: float) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.basis = np.ascontiguousarray(basis, dtype=np.float32)
        self.scale = float(scale)  # the largest ||x - mu||^2: sets the absolute error margin
        self.codes = faiss.IndexFlatL2(codes.shape[1])
        self.codes.add(np.ascontiguousarray(codes, dtype=np.float32))

    @property
    def dims(self) -> int:
        return self.basis.shape[1]

    @property
    def memory_bytes(self) -> int:
        return self.codes.ntotal * self.codes.d * 4 + self.basis.nbytes + self.mean.nbytes

    @classmethod
    def fit(cls, vectors: np.ndarray, dims: int, seed: int = 0) -> "ProjectedBound":
        """Principal components of a seeded sample, then the code of every row."""
        n, d = vectors.shape
        if not 1 <= dims < d:
            raise ValueError(f"bound dims must be in [1, {d}), got {dims}")
        rng = np.random.default_rng(seed)
        sample = np.asarray(vectors[np.sort(rng.choice(n, size=min(n, _FIT_SAMPLE), replace=False))], dtype=np.float64)
        mean = sample.mean(axis=0)
        _, eigenvectors = np.linalg.eigh(np.cov(sample - mean, rowvar=False))
        mean32 = mean.astype(np.float32)
        basis32 = np.ascontiguousarray(eigenvectors[:, ::-1][:, :dims], dtype=np.float32)  # largest variance first
        codes = np.empty((n, dims + 1), dtype=np.float32)
        scale = 0.0
        for lo in range(0, n, _CHUNK):
            codes[lo : lo + _CHUNK], norms = cls._encode(np.asarray(vectors[lo : lo + _CHUNK]), mean32, basis32)
            scale = max(scale, float(norms.max()))
        return cls(mean32, basis32, codes, scale)

    @staticmethod
    def _encode(rows: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes of ``rows``, and their ||x - mu||^2 (the projection in float32, the norms in float64)."""
        centred = np.asarray(rows, dtype=np.float32) - mean
        projected = centred @ basis
        norms = np.einsum("ij,ij->i", centred, centred, dtype=np.float64)
        kept = np.einsum("ij,ij->i", projected, projected, dtype=np.float64)
        residual = np.sqrt(np.maximum(norms - kept, 0.0))
        return np.concatenate([projected, residual[:, None].astype(np.float32)], axis=1), norms

    def nearest(self, exact: faiss.Index, centre: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` candidates nearest to ``centre`` under ``exact``'s distances, nearest first."""
        k = min(k, candidates.size)
        code = self._encode(centre, self.mean, self.basis)[0]
        slack = _SCALE_MARGIN * max(self.scale, float(np.square(centre - self.mean).sum()))
        # The scan over the pool's codes costs the same whatever m is; a generous m avoids a second scan.
        m = min(candidates.size, max(16 * k, 1024))
        while True:
            bounds, ranked = _search(self.codes, code, candidates, m)  # smallest bounds first
            kth = self._exact(exact, centre, ranked[:k], k)[0][-1]
            needed = int(np.searchsorted(bounds * (1 - _REL_MARGIN) - slack, kth, side="right"))
            if needed < m or m == candidates.size:
                return self._exact(exact, centre, ranked[: max(needed, k)], k)[1]
            m = min(candidates.size, 4 * m)  # the bound was loose here: look further

    @staticmethod
    def _exact(exact: faiss.Index, centre: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return _search(exact, centre, np.ascontiguousarray(ids, dtype=np.int64), k)

    # persistence: plain arrays next to the FAISS file
    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "basis": self.basis, "codes": self.codes.reconstruct_n(0, self.codes.ntotal),
                "scale": np.float64(self.scale)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ProjectedBound":
        return cls(arrays["mean"], arrays["basis"], arrays["codes"], float(arrays["scale"]))



def _search(index: faiss.Index, query: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` of ``ids`` nearest to ``query`` in ``index``, nearest first (FAISS reads only those rows)."""
    distances, found = index.search(query, min(k, ids.size), params=faiss.SearchParameters(sel=faiss.IDSelectorArray(ids)))
    return distances[0], found[0].astype(np.int64, copy=False)
