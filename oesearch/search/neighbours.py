"""Neighbour look-ups for the mutation and mating operators (paper Appendix H).

Mutation replaces an individual ``d`` by a uniformly random pick among the ``k``
corpus items ``p`` with the smallest ``||p - d||^2`` inside a uniformly random
pool of ``P`` corpus items. Mating draws a child among the ``k`` pool items with
the smallest ``||p - a||^2 + ||p - b||^2``. Both are one operation here: for
query vectors ``q_1..q_m``

    sum_i ||p - q_i||^2 = m * ||p - mean(q)||^2 + const(q),

so the candidates are exactly the ``k`` nearest neighbours of the queries' mean.
The queries themselves and every corpus item whose image bytes equal a query's
(its *duplicate group*) are never candidates.

FAISS choice (exact and fast):
    The vectors live in a plain ``faiss.IndexFlatL2`` whose ids are corpus
    positions. A pool-restricted search passes ``faiss.IDSelectorArray(pool)``
    through ``SearchParameters``; for a flat L2 index FAISS routes that selector
    to ``knn_L2sqr_by_idx``, which computes ``fvec_L2sqr`` (the direct sum of
    squared differences, no ``||x||^2 + ||y||^2 - 2xy`` cancellation) for the
    pool's ids only. A draw therefore costs O(P * D), independent of the corpus
    size, and copies no vectors (``faiss.knn`` on ``vectors[pool]`` would copy
    P * D floats per draw). ``pool="all"`` searches the whole index with an
    ``IDSelectorNot`` that hides the queries' duplicate groups.

Past about 1M vectors (``kind="ivf"`` or ``"ivfpq"``):
    A flat index holds N * D float32 (2M x 3,072 is 24.6 GB). ``ivf``
    (``IndexIVFFlat``) partitions the corpus into ``nlist`` k-means cells and
    searches the ``nprobe`` cells nearest to the query; ``ivfpq``
    (``IndexIVFPQ``) also compresses each vector to ``pq_m`` bytes. The pool is
    passed as an ``IDSelectorBatch`` (a hash set: an IVF scan tests every id of
    the probed cells). Their contract: candidates are pool members outside the
    queries' duplicate groups, ranked by the index's distance among the pool
    members in the probed cells. With ``nprobe >= nlist`` an ``ivf`` index
    ranks exactly like the flat one; ``ivfpq`` distances stay approximate.
    Fewer than ``k`` candidates come back when the probed cells hold fewer pool
    members. Same data, same seed: same index, same draws.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import faiss
import numpy as np

from oesearch.search.bounds import ProjectedBound

__all__ = ["NeighbourIndex", "duplicate_groups_of"]

# Sidecar files written next to the persisted FAISS index.
_GROUPS_SUFFIX = ".groups.npy"
_BOUND_SUFFIX = ".bound.npz"
_META_SUFFIX = ".meta.json"
_FORMAT_VERSION = 1
KINDS = ("flat", "ivf", "ivfpq")
# IVF cells are trained on at most this many vectors per cell (FAISS warns below 39).
_TRAIN_PER_CELL = 64
# Rows hashed per chunk: bounds the memory of reading a memmapped corpus.
_HASH_CHUNK = 4096


def duplicate_groups_of(images: np.ndarray) -> np.ndarray:
    """Group corpus items whose raw bytes are identical.

    Each item (``images[i]``, any shape and dtype) is hashed with a 128-bit
    BLAKE2b digest of its bytes; equal digests share a group. Groups are
    numbered in order of first appearance, so a corpus without duplicates gets
    ``arange(N)`` and the numbering does not depend on the hash values.

    Args:
        images: Array of shape ``(N, ...)``; may be a ``np.memmap``.

    Returns:
        ``(N,)`` int64 group ids.
    """
    n = len(images)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    digests = np.empty((n, 16), dtype=np.uint8)
    for start in range(0, n, _HASH_CHUNK):
        chunk = np.ascontiguousarray(images[start : start + _HASH_CHUNK])
        rows = chunk.reshape(len(chunk), -1)
        for offset, row in enumerate(rows):
            digest = hashlib.blake2b(row.data, digest_size=16).digest()
            digests[start + offset] = np.frombuffer(digest, dtype=np.uint8)
    # One void scalar per digest so np.unique compares whole digests.
    keys = digests.view(np.dtype((np.void, 16))).ravel()
    _, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
    # Renumber unique digests by where they first occur (deterministic, readable).
    rank = np.empty(len(first_index), dtype=np.int64)
    rank[np.argsort(first_index, kind="stable")] = np.arange(len(first_index))
    return rank[inverse.ravel()]


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file in ``path``'s folder, then rename.

    ``os.replace`` within one folder is atomic, so readers never see a
    half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _sidecars(path: Path) -> tuple[Path, Path]:
    path = Path(path)
    return path.with_name(path.name + _GROUPS_SUFFIX), path.with_name(path.name + _META_SUFFIX)


def _build(vectors: np.ndarray, kind: str, nlist: int | None, pq_m: int) -> faiss.Index:
    """A FAISS index of ``kind`` over ``vectors``; IVF cells are trained on a seeded sample."""
    n, d = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
        index.add(vectors)
        return index
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose from {KINDS}")
    nlist = int(nlist or max(1, round(4 * np.sqrt(n))))
    if nlist > n:
        raise ValueError(f"nlist={nlist} exceeds the corpus of {n} vectors")
    quantizer = faiss.IndexFlatL2(d)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, d, nlist)
    else:
        if d % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the vector dimension {d}")
        index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8)
    sample = np.random.default_rng(0).choice(n, size=min(n, _TRAIN_PER_CELL * max(nlist, 256)), replace=False)
    _train_ivf(index, vectors[np.sort(sample)], n)
    index.add(vectors)
    return index


GPU_TRAIN_MIN = 1_000_000  # corpora of this many images or more train their IVF cells on a GPU, when one is usable


def gpu_faiss_available() -> bool:
    """Whether this faiss build has GPU support and sees a GPU (faiss-cpu, the default install, never does)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _train_ivf(index: faiss.Index, sample: np.ndarray, n: int) -> None:
    """``index.train(sample)``; for a corpus of ``GPU_TRAIN_MIN`` or more with a GPU faiss build, the coarse
    k-means (the part that grows with the corpus) runs on the GPU and the rest (IVF-PQ's codebooks) on the CPU.

    GPU k-means rounds differently, so its cells may differ from a CPU build's; the index is built once per
    corpus and cached, and every search on it sees the same cells.
    """
    if n < GPU_TRAIN_MIN or not gpu_faiss_available():
        index.train(sample)
        return
    ivf = faiss.extract_index_ivf(index)
    d = sample.shape[1]
    clustering = faiss.Clustering(d, ivf.nlist, ivf.cp)  # the parameters IndexIVF.train would use
    clustering.train(sample, faiss.GpuIndexFlatL2(faiss.StandardGpuResources(), d))
    ivf.quantizer.add(faiss.vector_to_array(clustering.centroids).reshape(ivf.nlist, d))
    index.train(sample)  # the quantizer is trained and full: only the residual codebooks (IVF-PQ) train here


class NeighbourIndex:
    """Exact L2 neighbour search over a corpus, restricted to random pools.

    Attributes:
        index: The ``faiss.IndexFlatL2``; id ``i`` is corpus item ``i``.
        duplicate_groups: ``(N,)`` int64; equal ids mean identical image bytes.
        build_seconds: Wall time spent building (or loading) this index.
        memory_bytes: Bytes held by the index codes plus the duplicate tables.
        loaded_from_cache: True when the index came from a persisted file.
        key: The cache key stored with a persisted index, if any.
    """

    def __init__(
        self,
        vectors: np.ndarray | None,
        duplicate_groups: np.ndarray,
        *,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int | None = None,
        pq_m: int = 64,
        bound_dims: int = 0,
        _index: faiss.Index | None = None,
        _bound: ProjectedBound | None = None,
    ) -> None:
        """Build a flat L2 index over ``vectors``.

        Args:
            vectors: ``(N, D)`` array, the corpus as the model sees it (callers
                pass images flattened and scaled to [0, 1]). Converted to
                contiguous float32.
            duplicate_groups: ``(N,)`` integer group ids, see
                :func:`duplicate_groups_of`.
            kind: ``"flat"`` (exact), ``"ivf"`` or ``"ivfpq"`` (see the module doc).
            nlist: IVF cells; default about 4 * sqrt(N).
            nprobe: IVF cells searched per draw (default 32, or what a loaded index holds).
            pq_m: bytes per vector of ``ivfpq`` (must divide D).
            bound_dims: ``flat`` only: prune pool searches with lower bounds
                from up to this many principal components (0: off). Results are
                unchanged; see :mod:`oesearch.search.bounds`.
            _index, _bound: Internal; already built parts (used by :meth:`load`).
        """
        start = time.perf_counter()
        if _index is None:
            if vectors is None:
                raise ValueError("vectors are required to build a NeighbourIndex")
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
                raise ValueError(
                    f"vectors must be a non-empty (N, D) array, got shape {vectors.shape}"
                )
            _index = _build(vectors, kind, nlist, pq_m)
            if bound_dims and kind == "flat":
                _bound = ProjectedBound.fit(vectors, bound_dims)
        self.index: faiss.Index = _index
        self.bound: ProjectedBound | None = _bound
        self.ivf = faiss.try_extract_index_ivf(_index) if not isinstance(_index, faiss.IndexFlat) else None
        if self.ivf is not None:
            if nprobe is not None or _index is None or not self.ivf.nprobe:
                self.ivf.nprobe = nprobe or 32
            if self.ivf.direct_map.type == faiss.DirectMap.NoMap:
                self.ivf.make_direct_map()  # reconstruct() of the query rows
        groups = np.ascontiguousarray(duplicate_groups, dtype=np.int64)
        if groups.shape != (self.size,):
            raise ValueError(
                f"duplicate_groups must have shape ({self.size},), got {groups.shape}"
            )
        self.duplicate_groups: np.ndarray = groups
        # Members of group g are _group_order[_group_start[g]:_group_stop[g]]
        # (searchsorted on the sorted ids), so a query's duplicates are found
        # in O(log N) instead of scanning all N group ids per draw.
        self._group_order = np.argsort(groups, kind="stable")
        self._sorted_groups = groups[self._group_order]
        self.loaded_from_cache: bool = False
        self.key: str | None = None
        self.build_seconds: float = time.perf_counter() - start

    # ------------------------------------------------------------------ basics

    @property
    def size(self) -> int:
        """Number of corpus items N."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return int(self.index.d)

    @property
    def kind(self) -> str:
        if self.ivf is None:
            return "flat"
        return "ivfpq" if isinstance(faiss.downcast_index(self.index), faiss.IndexIVFPQ) else "ivf"

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the FAISS codes (plus, for IVF, ids, direct map and centroids) and the duplicate tables."""
        codes = self.size * int(self.index.code_size)
        if self.ivf is not None:
            codes += 16 * self.size + self.ivf.nlist * self.dim * 4
        if self.bound is not None:
            codes += self.bound.memory_bytes
        tables = (
            self.duplicate_groups.nbytes + self._group_order.nbytes + self._sorted_groups.nbytes
        )
        return codes + tables

    def __repr__(self) -> str:
        return f"NeighbourIndex(N={self.size}, D={self.dim}, memory_bytes={self.memory_bytes})"

    # ------------------------------------------------------------------ search

    def duplicates_of(self, query_ids: Sequence[int]) -> np.ndarray:
        """All corpus ids sharing a duplicate group with any query (queries included)."""
        queries = self._check_queries(query_ids)
        wanted = np.unique(self.duplicate_groups[queries])
        lo = np.searchsorted(self._sorted_groups, wanted, side="left")
        hi = np.searchsorted(self._sorted_groups, wanted, side="right")
        return np.concatenate([self._group_order[a:b] for a, b in zip(lo, hi)])

    def nearest(
        self, query_ids: Sequence[int], pool: np.ndarray | None, k: int, *, _sampled: bool = False
    ) -> np.ndarray:
        """The up-to-``k`` candidates of a pool, nearest first.

        Candidates are pool members outside the queries' duplicate groups,
        ranked by ``sum_i ||p - q_i||^2`` (computed as the distance to the
        queries' mean, which ranks identically).

        Args:
            query_ids: One (mutation) or more (mating) corpus ids.
            pool: Distinct corpus ids to search among; ``None`` means the whole
                corpus (``pool="all"``).
            k: Number of candidates wanted, at least 1.

        Returns:
            int64 ids sorted by increasing distance; fewer than ``k`` when the
            pool holds fewer eligible items.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = self._check_queries(query_ids)
        excluded = self.duplicates_of(queries)
        if pool is None:
            inner = faiss.IDSelectorBatch(excluded)
            selector = faiss.IDSelectorNot(inner)
            search_k = min(k, self.size)
        else:
            # A pool draw() sampled without replacement is distinct and in range by construction:
            # skipping the np.unique check saves ~0.9 ms of a 10,000-item draw.
            candidates = np.asarray(pool, dtype=np.int64) if _sampled else self._check_pool(pool)
            candidates = candidates[~np.isin(candidates, excluded)]
            if candidates.size == 0:
                return candidates
            # IDSelectorArray keeps a reference to `candidates`; FAISS turns it
            # into knn_L2sqr_by_idx, touching only these rows. An IVF scan asks
            # is_member of every id in a probed cell: a hash set there.
            flat = self.ivf is None
            if flat and self.bound is not None:
                single = int(queries[0]) if len(queries) == 1 else None
                return self.bound.nearest(self.index, self._query_mean(queries), candidates, k, query_id=single)
            selector = faiss.IDSelectorArray(candidates) if flat else faiss.IDSelectorBatch(candidates)
            search_k = min(k, candidates.size)
        centre = self._query_mean(queries)
        params = (faiss.SearchParameters(sel=selector) if self.ivf is None
                  else faiss.SearchParametersIVF(sel=selector, nprobe=self.ivf.nprobe))
        _, ids = self.index.search(centre, search_k, params=params)
        ids = ids[0]
        return ids[ids >= 0].astype(np.int64, copy=False)

    def draw(
        self,
        query_ids: Sequence[int],
        rng: np.random.Generator,
        pool_size: int | None,
        k: int,
    ) -> int:
        """Draw one neighbour the way the paper's mutation / mating does.

        Samples a pool with ``rng.choice(N, size=pool_size, replace=False)``
        (``None``: the whole corpus, no sampling), takes the ``k`` nearest
        eligible members (see :meth:`nearest`) and returns one of them chosen
        with ``rng.integers``. All randomness comes from ``rng``.

        Args:
            query_ids: ``[d]`` for mutation, ``[a, b]`` for mating.
            rng: Source of all randomness.
            pool_size: Pool size P, or ``None`` for ``pool="all"``.
            k: Number of nearest candidates to pick from.

        Returns:
            A corpus id, never a query or a byte-identical duplicate of one.

        Raises:
            ValueError: On invalid ``pool_size`` / ``k`` / ids, or when the
                pool holds no eligible candidate.
        """
        self.validate(pool_size, k)
        pool = None if pool_size is None else rng.choice(self.size, size=pool_size, replace=False)
        candidates = self.nearest(query_ids, pool, k, _sampled=pool is not None)
        if candidates.size == 0:
            where = "the corpus" if pool is None else f"the pool of {pool_size}"
            raise ValueError(
                f"no candidate left in {where} after excluding queries {list(query_ids)} "
                "and their exact duplicates"
            )
        return int(candidates[rng.integers(candidates.size)])

    def validate(self, pool_size: int | None, k: int) -> None:
        """Raise ``ValueError`` unless ``pool_size`` and ``k`` fit this corpus."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if pool_size is None:
            return
        if pool_size < 1:
            raise ValueError(f"pool size must be at least 1, got {pool_size}")
        if pool_size > self.size:
            raise ValueError(
                f"pool of {pool_size} exceeds the corpus of {self.size} items; "
                "lower search.pool or use 'all'"
            )
        if k > pool_size:
            raise ValueError(f"k={k} exceeds the pool of {pool_size}; lower k or raise the pool")

    def _check_queries(self, query_ids: Sequence[int]) -> np.ndarray:
        queries = np.asarray(query_ids, dtype=np.int64).ravel()
        if queries.size == 0:
            raise ValueError("at least one query id is required")
        if queries.min() < 0 or queries.max() >= self.size:
            raise ValueError(f"query ids {queries.tolist()} out of range [0, {self.size})")
        return queries

    def _check_pool(self, pool: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(pool, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"pool ids out of range [0, {self.size})")
        if np.unique(ids).size != ids.size:
            # Repeated ids would come back as repeated candidates.
            raise ValueError("pool ids must be distinct")
        return ids

    def _query_mean(self, queries: np.ndarray) -> np.ndarray:
        # reconstruct_batch reads the stored float32 rows; the mean is taken in
        # float64 so a single query comes back bit-exact.
        rows = self.index.reconstruct_batch(queries).astype(np.float64)
        return rows.mean(axis=0, keepdims=True).astype(np.float32)

    # ------------------------------------------------------------- persistence

    def save(self, path: Path, key: str | None = None) -> None:
        """Persist the index to ``path`` plus ``.groups.npy``/``.meta.json`` sidecars.

        Every file is written atomically. The metadata (holding ``key``) goes
        last and is removed first, so a crash mid-save never leaves a key that
        vouches for a mismatched index.
        """
        path = Path(path)
        groups_path, meta_path = _sidecars(path)
        meta_path.unlink(missing_ok=True)
        _atomic_write(path, lambda tmp: faiss.write_index(self.index, tmp))

        def write_groups(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, self.duplicate_groups)

        _atomic_write(groups_path, write_groups)
        bound_path = path.with_name(path.name + _BOUND_SUFFIX)
        if self.bound is not None:

            def write_bound(tmp: str) -> None:
                with open(tmp, "wb") as handle:
                    np.savez(handle, **self.bound.arrays())

            _atomic_write(bound_path, write_bound)
        else:
            bound_path.unlink(missing_ok=True)
        meta = {
            "format": _FORMAT_VERSION,
            "key": key if key is not None else self.key,
            "size": self.size,
            "dim": self.dim,
        }
        _atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        if key is not None:
            self.key = key

    @classmethod
    def load(cls, path: Path) -> NeighbourIndex:
        """Load an index written by :meth:`save`."""
        path = Path(path)
        start = time.perf_counter()
        groups_path, meta_path = _sidecars(path)
        index = faiss.read_index(str(path))
        groups = np.load(groups_path, allow_pickle=False)
        bound_path = path.with_name(path.name + _BOUND_SUFFIX)
        bound = None
        if bound_path.exists():
            with np.load(bound_path, allow_pickle=False) as arrays:
                bound = ProjectedBound.from_arrays(dict(arrays))
        loaded = cls(None, groups, _index=index, _bound=bound)
        loaded.loaded_from_cache = True
        if meta_path.exists():
            loaded.key = json.loads(meta_path.read_text()).get("key")
        loaded.build_seconds = time.perf_counter() - start
        return loaded

    @staticmethod
    def stored_key(path: Path) -> str | None:
        """The key persisted next to ``path``, or ``None`` if absent/unreadable."""
        _, meta_path = _sidecars(Path(path))
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("format") != _FORMAT_VERSION:
            return None
        return meta.get("key")

    @classmethod
    def build_or_load(
        cls,
        inputs: Callable[[], tuple[np.ndarray, np.ndarray]],
        cache_path: Path | None,
        key: str,
        size: int,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int | None = None,
        pq_m: int = 64,
        bound_dims: int = 0,
    ) -> NeighbourIndex:
        """Reuse the index persisted at ``cache_path`` if its key matches, else build and save.

        Args:
            inputs: Returns ``(vectors, duplicate_groups)`` for a build. It is
                called only when building, so a cached start skips converting
                and hashing the whole corpus.
            cache_path: Where the index lives; ``None`` disables caching.
            key: Identifies corpus content and preprocessing (e.g. a hash of
                the corpus cache and the index resolution); a different key
                forces a rebuild.
            size: Number of corpus items; a persisted index of another size is
                rebuilt.
            kind, nlist, nprobe, pq_m, bound_dims: As for the constructor;
                ``key`` must tell kinds and their build settings apart.
        """
        if cache_path is not None:
            cache_path = Path(cache_path)
            if cls.stored_key(cache_path) == key and cache_path.exists():
                try:
                    loaded = cls.load(cache_path)
                except (OSError, RuntimeError, ValueError):
                    loaded = None  # unreadable or inconsistent cache: rebuild
                same_bound = (loaded.bound.dims if loaded is not None and loaded.bound else 0) == (
                    bound_dims if kind == "flat" else 0)
                if loaded is not None and loaded.size == size and loaded.kind == kind and same_bound:
                    if loaded.ivf is not None and nprobe:
                        loaded.ivf.nprobe = nprobe
                    return loaded
        vectors, duplicate_groups = inputs()
        if len(vectors) != size:
            raise ValueError(f"inputs() gave {len(vectors)} vectors for a corpus of {size}")
        built = cls(vectors, duplicate_groups, kind=kind, nlist=nlist, nprobe=nprobe, pq_m=pq_m,
                    bound_dims=bound_dims)
        built.key = key
        if cache_path is not None:
            built.save(cache_path, key)
        return built
