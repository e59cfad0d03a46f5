"""The pruned exact search gives exactly the unpruned answer, checked against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oesearch.search.bounds import ProjectedBound, level_dims
from oesearch.search.neighbours import NeighbourIndex


def natural_like(n: int, d: int, seed: int) -> np.ndarray:
    """Low-rank structure plus noise, like natural images: most energy in few components."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)) @ rng.normal(size=(12, d)) * 0.08 + rng.normal(size=(n, d)) * 0.02 + 0.5
    return np.clip(x, 0, 1).astype(np.float32)


def uniform(n: int, d: int, seed: int) -> np.ndarray:
    """No structure: the bound prunes nothing and the search must still be exact."""
    return np.random.default_rng(seed).random((n, d), dtype=np.float32)


def brute_force(vectors: np.ndarray, queries: list[int], pool: np.ndarray, k: int) -> list[int]:
    centre = vectors[queries].astype(np.float64).mean(axis=0)
    pool = pool[~np.isin(pool, queries)]
    distances = ((vectors[pool].astype(np.float64) - centre) ** 2).sum(axis=1)
    return pool[np.argsort(distances, kind="stable")[:k]].tolist()


@pytest.mark.parametrize("make", [natural_like, uniform])
def test_pruned_search_equals_brute_force_and_the_unpruned_index(make) -> None:
    vectors = make(3000, 192, seed=1)
    groups = np.arange(len(vectors))
    pruned = NeighbourIndex(vectors, groups, bound_dims=16)
    plain = NeighbourIndex(vectors, groups)
    rng = np.random.default_rng(2)
    for trial in range(60):
        queries = rng.choice(len(vectors), size=1 + trial % 2, replace=False).tolist()  # mutation and mating
        pool = rng.choice(len(vectors), size=800, replace=False)
        got = pruned.nearest(queries, pool, 25).tolist()
        assert got == plain.nearest(queries, pool, 25).tolist()
        assert got == brute_force(vectors, queries, pool, 25)


def test_draws_are_the_same_with_and_without_the_bound() -> None:
    vectors = natural_like(2000, 192, seed=3)
    groups = np.arange(len(vectors))
    pruned, plain = NeighbourIndex(vectors, groups, bound_dims=8), NeighbourIndex(vectors, groups)
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    assert [pruned.draw([i], a, 500, 10) for i in range(100)] == [plain.draw([i], b, 500, 10) for i in range(100)]


def test_every_level_bound_never_exceeds_a_true_distance() -> None:
    vectors = natural_like(1500, 96, seed=5)
    bound = ProjectedBound.fit(vectors, 15)
    assert bound.levels == level_dims(15) == (1, 3, 15)
    rng = np.random.default_rng(6)
    ids = np.arange(len(vectors))
    tight = []
    for query in rng.integers(len(vectors), size=20):
        centre = vectors[query]
        true = ((vectors.astype(np.float64) - centre) ** 2).sum(axis=1)
        slack = 1e-5 * max(bound.scale, float(np.square(centre - bound.mean).sum()))
        for level, code in zip(bound.codes, bound._encode_query(centre)):
            lower = bound._bounds(level, code, ids, slack)
            assert np.all(lower <= true)
        tight.append(np.median(lower[true > 0] / true[true > 0]))
    assert np.median(tight) > 0.5, "on low-rank data the finest bound is tight enough to prune"


def test_level_bounds_tighten_with_more_components() -> None:
    vectors = natural_like(1000, 96, seed=8)
    bound = ProjectedBound.fit(vectors, 31)
    centre = vectors[0]
    per_level = [bound._bounds(level, code, np.arange(1, 1000), 0.0)
                 for level, code in zip(bound.codes, bound._encode_query(centre))]
    for coarse, fine in zip(per_level, per_level[1:]):
        assert np.all(coarse <= fine * (1 + 1e-4) + 1e-6)


@pytest.mark.parametrize("make", [natural_like, uniform])
def test_cuts_and_widened_levels_stay_exact(make, monkeypatch: pytest.MonkeyPatch) -> None:
    """k small against the pool: every level cuts; on uniform data the cuts are too loose and widen."""
    vectors = make(4000, 64, seed=9)
    groups = np.arange(len(vectors))
    pruned = NeighbourIndex(vectors, groups, bound_dims=16)
    calls = []
    original = ProjectedBound._bounds
    monkeypatch.setattr(ProjectedBound, "_bounds", lambda self, *a: calls.append(1) or original(self, *a))
    rng = np.random.default_rng(10)
    for trial in range(20):
        queries = rng.choice(len(vectors), size=1 + trial % 2, replace=False).tolist()
        pool = rng.choice(len(vectors), size=3900, replace=False)
        assert pruned.nearest(queries, pool, 5).tolist() == brute_force(vectors, queries, pool, 5)
    levels = len(pruned.bound.levels)
    if make is uniform:
        assert len(calls) > 20 * levels, "loose bounds must widen some level and search again"


def test_the_bound_survives_save_and_load(tmp_path: Path) -> None:
    vectors = natural_like(1000, 64, seed=7)
    built = NeighbourIndex(vectors, np.arange(len(vectors)), bound_dims=10)
    built.save(tmp_path / "ix.faiss", key="k")
    loaded = NeighbourIndex.load(tmp_path / "ix.faiss")
    assert loaded.bound is not None and loaded.bound.dims == 10
    pool = np.arange(0, 1000, 2)
    assert loaded.nearest([3], pool, 20).tolist() == built.nearest([3], pool, 20).tolist()
    again = NeighbourIndex.build_or_load(lambda: (vectors, np.arange(1000)), tmp_path / "ix.faiss", "k", 1000)
    assert again.bound is None and not again.loaded_from_cache, "a cache with another bound setting is rebuilt"
