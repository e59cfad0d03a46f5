"""Exact k-NN inside a pool, pruned by lower bounds from a PCA projection.

A draw on a 300K x 3,072 corpus reads the pool's 10,000 full rows (123 MB of
float32) when it computes every exact distance. Natural images keep most of
their energy in few principal components, so cheap bounds rule most of the
pool out first. With an orthonormal basis ``P_r`` of ``r`` components, a mean
``mu``, and for every item the code ``[P_r^T (x - mu), ||residual_r of x||]``:

    ||x - q||^2 = ||P_r^T (x - q)||^2 + ||R_r (x - q)||^2
               >= ||P_r^T (x - q)||^2 + (||R_r (x - mu)|| - ||R_r (q - mu)||)^2

(reverse triangle inequality in the residual subspace ``R_r = I - P_r P_r^T``).
The right-hand side is the plain L2 distance between two ``r + 1``-value
codes, and it grows with ``r``. Memory bandwidth, not arithmetic, sets the
cost, so the search runs in stages of increasing ``r`` (levels); each gathers
the codes of the items it is given (NumPy fancy indexing keeps many memory
loads in flight, where a per-row loop waits on each) and computes their bounds:

1. every pool item gets the coarsest bound (128 bytes per item at r = 31);
   the best-bounded ``w_1`` go on;
2. each further level re-ranks the survivors by a tighter bound, keeping ``w_l``;
3. exact distances (from the full flat index: the very numbers an unpruned
   search computes) of the ``k`` best-bounded items give ``t``, an upper bound
   on the true k-th distance;
4. every cut is checked: an item dropped at a level has a bound at least the
   last kept one; if that could be ``<= t``, the level keeps twice as many and
   the search goes on (bounds and distances already computed are kept, so
   only the new survivors cost anything). Otherwise every item with a true
   distance ``<= t`` is among the finest survivors with a finest bound
   ``<= t``, and their exact distances give exactly the unpruned result.
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["ProjectedBound", "auto_bound_dims", "level_dims"]

_FORMAT = 2  # persisted arrays: one code matrix per level
_FIT_SAMPLE = 20_000  # rows the principal components are estimated from
_CHUNK = 20_000  # rows projected at a time
# The bound is computed in float32 from float32 codes (the projection itself in
# float32 too); shrink it by more than that arithmetic can err, relative to the
# bound and to the data's scale, so it never exceeds a true distance.
_REL_MARGIN = 1e-4
_SCALE_MARGIN = 1e-5
# Survivors per level, as (multiple of k, minimum), finest level last: about what
# the average draw on natural images needs (measured on 300K CIFAR-like images);
# a draw that needs more widens the level, computing only the new survivors' bounds.
_WIDTHS = ((24, 1024), (12, 512), (5, 256))


def auto_bound_dims(size: int, dim: int) -> int:
    """Components of the finest bound: worth it for large image corpora (80MTI-like), off for small ones."""
    return 255 if dim >= 1024 and size >= 20_000 else 0


def level_dims(dims: int) -> tuple[int, ...]:
    """The components of each level: an eighth, a quarter (codes of 2^n values) and all ``dims``."""
    return tuple(sorted({max(1, (dims + 1) // 8 - 1), max(1, (dims + 1) // 4 - 1), dims}))


class ProjectedBound:
    """Codes ``[P_r^T (x - mu), ||residual_r||]`` of every corpus item, one float32 matrix per level r."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray, codes: list[np.ndarray], scale: float) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        # Stored as (dims, D) rows: the per-query projection reads them contiguously; `basis` is its view.
        self._basis_rows = np.ascontiguousarray(np.asarray(basis, dtype=np.float32).T)
        self.scale = float(scale)  # the largest ||x - mu||^2: sets the absolute error margin
        self.codes = [np.ascontiguousarray(level, dtype=np.float32) for level in codes]
        self.levels = tuple(level.shape[1] - 1 for level in self.codes)
        if self.levels != level_dims(self.dims):
            raise ValueError(f"bound levels {self.levels} do not match {self.dims} components")

    @property
    def basis(self) -> np.ndarray:
        """The (D, dims) orthonormal basis, largest variance first."""
        return self._basis_rows.T

    @property
    def dims(self) -> int:
        return self._basis_rows.shape[0]

    @property
    def memory_bytes(self) -> int:
        return sum(level.nbytes for level in self.codes) + self._basis_rows.nbytes + self.mean.nbytes

    @classmethod
    def fit(cls, vectors: np.ndarray, dims: int, seed: int = 0) -> "ProjectedBound":
        """Principal components of a seeded sample, then every row's code at every level."""
        n, d = vectors.shape
        if not 1 <= dims < d:
            raise ValueError(f"bound dims must be in [1, {d}), got {dims}")
        rng = np.random.default_rng(seed)
        sample = np.asarray(vectors[np.sort(rng.choice(n, size=min(n, _FIT_SAMPLE), replace=False))], dtype=np.float64)
        mean = sample.mean(axis=0)
        _, eigenvectors = np.linalg.eigh(np.cov(sample - mean, rowvar=False))
        mean32 = mean.astype(np.float32)
        basis32 = np.ascontiguousarray(eigenvectors[:, ::-1][:, :dims], dtype=np.float32)  # largest variance first
        codes = [np.empty((n, r + 1), dtype=np.float32) for r in level_dims(dims)]
        scale = 0.0
        for lo in range(0, n, _CHUNK):
            parts, norms = cls._encode(np.asarray(vectors[lo : lo + _CHUNK]), mean32, basis32)
            for level, part in zip(codes, parts):
                level[lo : lo + _CHUNK] = part
            scale = max(scale, float(norms.max()))
        return cls(mean32, basis32, codes, scale)

    @staticmethod
    def _encode(rows: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Codes of ``rows`` at every level, and their ||x - mu||^2 (projection in float32, norms in float64)."""
        centred = np.asarray(rows, dtype=np.float32) - mean
        projected = centred @ basis
        norms = np.einsum("ij,ij->i", centred, centred, dtype=np.float64)
        return _level_codes(projected, norms), norms

    def _encode_query(self, query: np.ndarray) -> list[np.ndarray]:
        """One vector's codes. FAISS's single-threaded SIMD dot products: BLAS would spread this one small
        product over threads, which costs milliseconds while the cores are busy training."""
        centred = np.ascontiguousarray(query, dtype=np.float32) - self.mean
        projected = np.empty(self.dims, dtype=np.float32)
        faiss.fvec_inner_products_ny(faiss.swig_ptr(projected), faiss.swig_ptr(centred),
                                     faiss.swig_ptr(self._basis_rows), centred.size, self.dims)
        norm = np.dot(centred.astype(np.float64), centred)
        return [code[0] for code in _level_codes(projected[None], norm[None])]

    def nearest(self, exact: faiss.IndexFlat, centre: np.ndarray, candidates: np.ndarray, k: int,
                query_id: int | None = None) -> np.ndarray:
        """The ``k`` candidates nearest to ``centre`` under ``exact``'s distances, nearest first.

        ``query_id``: the corpus item ``centre`` is, when it is one (mutation); its stored codes are used.
        Ties in distance are ordered as ``candidates`` are.
        """
        n, k = candidates.size, min(k, candidates.size)
        codes = ([level[query_id] for level in self.codes] if query_id is not None
                 else self._encode_query(centre[0]))
        slack = _SCALE_MARGIN * max(self.scale, float(np.square(centre - self.mean).sum()))
        widths = [max(multiple * k, minimum) for multiple, minimum in _WIDTHS[-len(self.levels):]]
        # Bounds and exact distances by position in `candidates`, computed once each (NaN: not yet),
        # so widening a level after a loose cut only computes what the new survivors need.
        bounds = [np.full(n, np.nan, dtype=np.float32) for _ in self.levels]
        distances = np.full(n, np.nan, dtype=np.float32)
        last = len(self.levels) - 1
        while True:
            kept = np.arange(n)  # the survivors' positions, in candidate order
            dropped_from = []  # per level: a lower bound on every item it dropped (inf: none dropped)
            for i, (level, code, width) in enumerate(zip(self.codes, codes, widths)):
                if width >= kept.size and i < last:
                    dropped_from.append(np.inf)  # nothing to cut here: only the finest bounds are needed
                    continue
                missing = kept[np.isnan(bounds[i][kept])]
                if missing.size:
                    bounds[i][missing] = self._bounds(level, code, candidates[missing], slack)
                level_bounds = bounds[i][kept]
                if width < kept.size:
                    cut = np.partition(level_bounds, width)[width]
                    kept = kept[level_bounds <= cut]  # at least width + 1; every dropped one is above `cut`
                    dropped_from.append(cut)
                else:
                    dropped_from.append(np.inf)
            finest = bounds[last][kept]
            probe = kept[np.argpartition(finest, k - 1)[:k]] if k < kept.size else kept
            self._fill(distances, exact, centre, candidates, probe)
            kth = distances[probe].max()  # >= the true k-th distance
            loose = [i for i, cut in enumerate(dropped_from) if cut <= kth]
            if not loose:
                # Every item within kth of the centre survived every level with a finest bound <= kth.
                needed = kept[finest <= kth]
                self._fill(distances, exact, centre, candidates, needed)
                order = np.lexsort((needed, distances[needed]))[:k]
                return candidates[needed[order]]
            for i in loose:  # a bound was too loose there: keep more at that level
                widths[i] *= 2

    @staticmethod
    def _fill(distances: np.ndarray, exact: faiss.IndexFlat, centre: np.ndarray, candidates: np.ndarray,
              positions: np.ndarray) -> None:
        """Exact distances of the candidates at ``positions`` that do not have one yet."""
        missing = positions[np.isnan(distances[positions])]
        if missing.size:
            distances[missing] = _distances(exact, centre, candidates[missing])

    def _bounds(self, level: np.ndarray, code: np.ndarray, ids: np.ndarray, slack: float) -> np.ndarray:
        """Lower bounds of the true squared distances of ``ids``, from their codes at one level."""
        rows = np.take(level, ids, axis=0)  # random rows: np.take copies them ~2x faster than level[ids]
        bounds = np.empty(len(ids), dtype=np.float32)
        faiss.fvec_L2sqr_ny(faiss.swig_ptr(bounds), faiss.swig_ptr(code), faiss.swig_ptr(rows), code.size, len(ids))
        return bounds * (1 - _REL_MARGIN) - slack

    # persistence: plain arrays next to the FAISS file
    def arrays(self) -> dict[str, np.ndarray]:
        levels = {f"codes_{r}": level for r, level in zip(self.levels, self.codes)}
        return {"format": np.int64(_FORMAT), "mean": self.mean, "basis": self.basis, "scale": np.float64(self.scale),
                **levels}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ProjectedBound":
        """Raises ``ValueError`` for arrays of another format (the caller rebuilds)."""
        if int(arrays.get("format", 1)) != _FORMAT:
            raise ValueError("a bound persisted in an older format")
        dims = arrays["basis"].shape[1]
        codes = [arrays[f"codes_{r}"] for r in level_dims(dims)]
        return cls(arrays["mean"], arrays["basis"], codes, float(arrays["scale"]))


def _level_codes(projected: np.ndarray, norms: np.ndarray) -> list[np.ndarray]:
    """Each level's codes from projections (n, dims) and ||x - mu||^2 (n,): the first r values and the residual."""
    kept = np.cumsum(np.square(projected, dtype=np.float64), axis=1)
    codes = []
    for r in level_dims(projected.shape[1]):
        residual = np.sqrt(np.maximum(norms - kept[:, r - 1], 0.0)).astype(np.float32)
        codes.append(np.concatenate([projected[:, :r], residual[:, None]], axis=1))
    return codes


def _distances(exact: faiss.IndexFlat, centre: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Squared L2 distances from ``centre`` to the (distinct) rows ``ids`` of ``exact``, in the order of ``ids``.

    A FAISS search restricted to ``ids`` with k = len(ids): the very numbers an unpruned search computes.
    (FAISS's fvec_L2sqr_by_idx gives the same numbers, but opens an OpenMP team for one query, which
    costs milliseconds while the cores are busy training.)
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.empty(0, dtype=np.float32)
    found_distances, found = exact.search(centre, ids.size, params=faiss.SearchParameters(sel=faiss.IDSelectorArray(ids)))
    sorter = np.argsort(ids)
    out = np.empty(ids.size, dtype=np.float32)
    out[sorter[np.searchsorted(ids, found[0], sorter=sorter)]] = found_distances[0]
    return out
