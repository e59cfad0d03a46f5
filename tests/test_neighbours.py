"""Tests for oesearch.search.neighbours against brute-force NumPy, with real FAISS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oesearch.search.neighbours import NeighbourIndex, duplicate_groups_of

N, D = 2000, 64
POOL, K = 400, 20
# Float32 FAISS distances vs float64 brute force: a relative slack far below the
# typical gap between neighbours (~1e-2 here) but above rounding (~1e-6).
RTOL = 1e-5

# Planted exact duplicates: source row -> copies elsewhere in the corpus.
PLANTED = {3: [10, 700, 1999], 42: [43], 100: [1500, 1501]}


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    rng = np.random.default_rng(1234)
    images = rng.integers(0, 256, size=(N, 8, 8), dtype=np.uint8)
    for source, copies in PLANTED.items():
        images[copies] = images[source]
    return images


@pytest.fixture(scope="module")
def vectors(corpus: np.ndarray) -> np.ndarray:
    # As callers do: flatten and scale to [0, 1].
    return corpus.reshape(N, -1).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def groups(corpus: np.ndarray) -> np.ndarray:
    return duplicate_groups_of(corpus)


@pytest.fixture(scope="module")
def index(vectors: np.ndarray, groups: np.ndarray) -> NeighbourIndex:
    return NeighbourIndex(vectors, groups)


def summed_sq_dist(vectors: np.ndarray, ids: np.ndarray, queries: list[int]) -> np.ndarray:
    """sum_q ||p - q||^2 for every p in ids, directly (not via the mean)."""
    p = vectors[ids].astype(np.float64)
    return sum(((p - vectors[q].astype(np.float64)) ** 2).sum(axis=1) for q in queries)


def eligible(pool: np.ndarray, groups: np.ndarray, queries: list[int]) -> np.ndarray:
    return pool[~np.isin(groups[pool], groups[queries])]


def kth_smallest(values: np.ndarray, k: int) -> float:
    return float(np.sort(values)[min(k, len(values)) - 1])


def assert_is_knn(
    got: np.ndarray, vectors: np.ndarray, pool: np.ndarray, groups: np.ndarray,
    queries: list[int], k: int,
) -> None:
    """Tie-safe: k distinct eligible ids, none farther than the brute-force k-th."""
    allowed = eligible(pool, groups, queries)
    assert len(got) == min(k, len(allowed))
    assert len(np.unique(got)) == len(got)
    assert np.isin(got, allowed).all()
    dist = summed_sq_dist(vectors, got, queries)
    bound = kth_smallest(summed_sq_dist(vectors, allowed, queries), k)
    assert (dist <= bound * (1 + RTOL)).all()
    assert (np.diff(dist) >= -bound * RTOL).all(), "not sorted nearest first"


# ------------------------------------------------------------------ duplicates


def test_duplicate_groups_match_planted_copies(groups: np.ndarray) -> None:
    assert groups.dtype == np.int64 and groups.shape == (N,)
    for source, copies in PLANTED.items():
        assert (groups[copies] == groups[source]).all()
    planted = sum(len(c) for c in PLANTED.values())
    assert len(np.unique(groups)) == N - planted
    # Numbered by first appearance: row 0 is group 0, groups never skip ahead.
    assert groups[0] == 0
    assert (np.maximum.accumulate(groups)[1:] - np.maximum.accumulate(groups)[:-1] <= 1).all()


def test_duplicate_groups_are_deterministic(corpus: np.ndarray) -> None:
    assert np.array_equal(duplicate_groups_of(corpus), duplicate_groups_of(corpus.copy()))
    assert np.array_equal(duplicate_groups_of(np.arange(5, dtype=np.int32)), np.arange(5))


# ------------------------------------------------------------------ nearest


@pytest.mark.parametrize("queries", [[3], [42], [100], [7], [3, 42], [100, 1500], [5, 6]])
def test_nearest_matches_brute_force(
    index: NeighbourIndex, vectors: np.ndarray, groups: np.ndarray, queries: list[int]
) -> None:
    rng = np.random.default_rng(sum(queries))
    pool = rng.choice(N, size=POOL, replace=False)
    # Force the queries and all their duplicates into the pool: at distance 0
    # (mutation) they would win if the exclusion failed.
    dup_ids = np.flatnonzero(np.isin(groups, groups[queries]))
    pool = np.unique(np.concatenate([pool, dup_ids]))
    got = index.nearest(queries, pool, K)
    assert_is_knn(got, vectors, pool, groups, queries, K)
    assert not np.isin(got, dup_ids).any()


def test_nearest_returns_all_when_fewer_than_k_remain(index: NeighbourIndex) -> None:
    pool = np.array([3, 10, 700, 8, 9])  # query 3 and two of its copies
    got = index.nearest([3], pool, 5)
    assert sorted(got.tolist()) == [8, 9]
    assert index.nearest([3], np.array([3, 10, 700, 1999]), 5).size == 0


def test_pool_all_matches_global_brute_force(
    index: NeighbourIndex, vectors: np.ndarray, groups: np.ndarray
) -> None:
    everything = np.arange(N)
    for queries in ([3], [100, 1500], [11, 12]):
        got = index.nearest(queries, None, K)
        assert_is_knn(got, vectors, everything, groups, queries, K)
        rng = np.random.default_rng(queries[0])
        picks = [index.draw(queries, rng, None, K) for _ in range(20)]
        assert np.isin(picks, got).all()


# ------------------------------------------------------------------ draws


def replay_pool(seed: int, pool_size: int) -> np.ndarray:
    """The pool a draw with this seed samples (draw's first use of the rng)."""
    return np.random.default_rng(seed).choice(N, size=pool_size, replace=False)


def test_mutation_draws_are_among_brute_force_knn(
    index: NeighbourIndex, vectors: np.ndarray, groups: np.ndarray
) -> None:
    for seed in range(300):
        query = [(3, 42, 100, 10, 555)[seed % 5]]
        pick = index.draw(query, np.random.default_rng(seed), POOL, K)
        pool = replay_pool(seed, POOL)
        allowed = eligible(pool, groups, query)
        assert pick in allowed, "picked the query, a duplicate, or outside the pool"
        bound = kth_smallest(summed_sq_dist(vectors, allowed, query), K)
        assert summed_sq_dist(vectors, np.array([pick]), query)[0] <= bound * (1 + RTOL)


def test_mating_draws_are_among_brute_force_summed_knn(
    index: NeighbourIndex, vectors: np.ndarray, groups: np.ndarray
) -> None:
    parents = [(3, 42), (100, 3), (10, 1500), (17, 18), (42, 43)]
    for seed in range(300):
        a, b = parents[seed % len(parents)]
        pick = index.draw([a, b], np.random.default_rng(seed), POOL, K)
        pool = replay_pool(seed, POOL)
        allowed = eligible(pool, groups, [a, b])
        assert pick in allowed
        assert groups[pick] not in (groups[a], groups[b])
        sums = summed_sq_dist(vectors, allowed, [a, b])
        bound = kth_smallest(sums, K)
        assert summed_sq_dist(vectors, np.array([pick]), [a, b])[0] <= bound * (1 + RTOL)


def test_draws_cover_the_candidates_uniformly_enough(index: NeighbourIndex) -> None:
    # With pool="all" the k candidates are fixed, so 400 uniform picks among 5
    # should hit every one of them (miss probability ~5 * 0.8**400).
    rng = np.random.default_rng(0)
    picks = [index.draw([7], rng, None, 5) for _ in range(400)]
    assert set(picks) == set(index.nearest([7], None, 5).tolist())


def test_same_seed_same_draws(index: NeighbourIndex) -> None:
    def run(seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [index.draw([i % N, (7 * i) % N][: 1 + i % 2], rng, POOL, K) for i in range(50)]

    assert run(5) == run(5)
    assert run(5) != run(6)


# ------------------------------------------------------------------ persistence


def test_save_load_round_trip(index: NeighbourIndex, tmp_path: Path) -> None:
    path = tmp_path / "corpus.faiss"
    index.save(path, key="k1")
    loaded = NeighbourIndex.load(path)
    assert loaded.loaded_from_cache and loaded.key == "k1"
    assert (loaded.size, loaded.dim) == (index.size, index.dim)
    assert np.array_equal(loaded.duplicate_groups, index.duplicate_groups)
    pool = np.random.default_rng(0).choice(N, size=POOL, replace=False)
    assert np.array_equal(loaded.nearest([3, 42], pool, K), index.nearest([3, 42], pool, K))
    for seed in range(20):
        assert loaded.draw([seed], np.random.default_rng(seed), POOL, K) == index.draw(
            [seed], np.random.default_rng(seed), POOL, K
        )
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_build_or_load_reuses_and_rebuilds(
    vectors: np.ndarray, groups: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "cache" / "corpus.faiss"
    builds: list[str] = []

    def inputs(v: np.ndarray = vectors, g: np.ndarray = groups, label: str = "v1"):
        builds.append(label)
        return v, g

    first = NeighbourIndex.build_or_load(inputs, path, key="v1", size=N)
    assert not first.loaded_from_cache and path.exists()
    assert first.build_seconds >= 0 and first.memory_bytes >= N * D * 4
    mtime = path.stat().st_mtime_ns

    again = NeighbourIndex.build_or_load(inputs, path, key="v1", size=N)
    assert again.loaded_from_cache and path.stat().st_mtime_ns == mtime
    assert builds == ["v1"], "a cached load never computes the corpus vectors"
    assert np.array_equal(again.nearest([3], None, K), first.nearest([3], None, K))

    # A different key means different content: here the vectors really change.
    shifted = np.ascontiguousarray(vectors[::-1])
    rebuilt = NeighbourIndex.build_or_load(lambda: inputs(shifted, groups[::-1], "v2"), path, key="v2", size=N)
    assert not rebuilt.loaded_from_cache and builds == ["v1", "v2"]
    assert NeighbourIndex.stored_key(path) == "v2"
    assert np.array_equal(NeighbourIndex.load(path).index.reconstruct(0), shifted[0])

    # The same key but another corpus size is stale: rebuilt, not trusted.
    smaller = NeighbourIndex.build_or_load(lambda: inputs(shifted[:10], groups[:10], "v2-small"), path, key="v2", size=10)
    assert not smaller.loaded_from_cache and smaller.size == 10

    uncached = NeighbourIndex.build_or_load(inputs, None, key="v1", size=N)
    assert not uncached.loaded_from_cache


# ------------------------------------------------------------------ errors


def test_error_cases(index: NeighbourIndex, vectors: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"pool of 2001 exceeds the corpus of 2000 items; "
                       r"lower search.pool or use 'all'"):
        index.draw([0], rng, N + 1, K)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.draw([0], rng, POOL, 0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        index.nearest([0], None, 0)
    with pytest.raises(ValueError, match="exceeds the pool of 10"):
        index.draw([0], rng, 10, 11)
    with pytest.raises(ValueError, match="out of range"):
        index.draw([N], rng, POOL, K)
    with pytest.raises(ValueError, match="at least one query"):
        index.draw([], rng, POOL, K)
    with pytest.raises(ValueError, match="distinct"):
        index.nearest([0], np.array([1, 1, 2]), 2)
    with pytest.raises(ValueError, match="duplicate_groups must have shape"):
        NeighbourIndex(vectors, np.zeros(3, dtype=np.int64))


def test_no_candidate_left_raises() -> None:
    images = np.zeros((4, 3), dtype=np.uint8)  # all byte-identical
    small = NeighbourIndex(images.astype(np.float32), duplicate_groups_of(images))
    with pytest.raises(ValueError, match="no candidate left"):
        small.draw([0], np.random.default_rng(0), 4, 2)
    with pytest.raises(ValueError, match="no candidate left"):
        small.draw([1, 2], np.random.default_rng(0), None, 2)


# ------------------------------------------------------------------ IVF / IVF-PQ (corpora past ~1M)

NLIST = 16


@pytest.fixture(scope="module")
def ivf(vectors: np.ndarray, groups: np.ndarray) -> NeighbourIndex:
    return NeighbourIndex(vectors, groups, kind="ivf", nlist=NLIST, nprobe=NLIST)


@pytest.mark.parametrize("queries", [[3], [100, 1500], [7, 8]])
def test_exhaustive_ivf_matches_brute_force(ivf: NeighbourIndex, vectors: np.ndarray, groups: np.ndarray,
                                            queries: list[int]) -> None:
    assert ivf.kind == "ivf"
    pool = np.random.default_rng(queries[0]).choice(N, size=POOL, replace=False)
    pool = np.unique(np.concatenate([pool, np.flatnonzero(np.isin(groups, groups[queries]))]))
    assert_is_knn(ivf.nearest(queries, pool, K), vectors, pool, groups, queries, K)
    assert_is_knn(ivf.nearest(queries, None, K), vectors, np.arange(N), groups, queries, K)


def test_probing_few_cells_ranks_exactly_among_what_it_scans(vectors: np.ndarray, groups: np.ndarray) -> None:
    # nprobe < nlist: candidates are eligible pool members, nearest first by the true distance,
    # but the true k nearest may sit in cells it did not probe.
    few = NeighbourIndex(vectors, groups, kind="ivf", nlist=NLIST, nprobe=4)
    pool = np.random.default_rng(5).choice(N, size=1000, replace=False)
    got = few.nearest([42], pool, K)
    assert 0 < len(got) <= K and len(np.unique(got)) == len(got)
    assert np.isin(got, eligible(pool, groups, [42])).all()
    dist = summed_sq_dist(vectors, got, [42])
    assert (np.diff(dist) >= -dist.max() * RTOL).all()


def test_ivfpq_is_compact_and_its_candidates_are_eligible(vectors: np.ndarray, groups: np.ndarray,
                                                          index: NeighbourIndex, tmp_path: Path) -> None:
    pq = NeighbourIndex(vectors, groups, kind="ivfpq", nlist=NLIST, nprobe=NLIST, pq_m=16)
    assert pq.kind == "ivfpq" and pq.memory_bytes < index.memory_bytes / 4
    pool = np.random.default_rng(6).choice(N, size=POOL, replace=False)
    got = pq.nearest([3], pool, K)
    allowed = eligible(pool, groups, [3])
    assert len(got) == K and np.isin(got, allowed).all() and len(np.unique(got)) == K
    # Approximate: better than chance (K / |allowed| = 5%) at finding the true K nearest.
    true = allowed[np.argsort(summed_sq_dist(vectors, allowed, [3]))[:K]]
    assert len(np.intersect1d(got, true)) >= K // 4
    # Persisted and reloaded: same kind, same probes, same answers.
    pq.save(tmp_path / "pq.faiss", key="k")
    loaded = NeighbourIndex.load(tmp_path / "pq.faiss")
    assert loaded.kind == "ivfpq" and loaded.ivf.nprobe == NLIST
    np.testing.assert_array_equal(loaded.nearest([3], pool, K), got)
    with pytest.raises(ValueError, match="must divide"):
        NeighbourIndex(vectors, groups, kind="ivfpq", nlist=NLIST, pq_m=7)
