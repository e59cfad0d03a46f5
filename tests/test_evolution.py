"""The DEAP search loop on a toy problem, without Ray.

The algorithm side (:class:`Evolution`) is real, and so are :class:`FitnessProblem`,
:class:`FitnessCache` and a FAISS :class:`NeighbourIndex`.  Only the trainings are
replaced by a small deterministic toy problem: the "AUC" of corpus item i with seed s
is a fixed increasing function of i plus a little seed-dependent jitter, computed
here.  On a 1-D corpus (item i sits at coordinate i / N) neighbours are the items
with nearby indices, so the landscape is smooth and monotone, like the standard
test functions of evolutionary-computation libraries.
"""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
from deap import tools

from oesearch.config import SearchConfig
from oesearch.search.evolution import Evolution, EvolutionState, individual_class
from oesearch.search.fitness import FitnessCache, Job
from oesearch.search.neighbours import NeighbourIndex
from oesearch.search.problem import FitnessProblem

N = 400
SEEDS = (101, 202)


def toy_auc(indices: tuple[int, ...], seed: int) -> float:
    """Increasing in the mean index, in [0.05, 0.96]; the jitter depends on index and seed."""
    base = 0.05 + 0.9 * (sum(indices) / len(indices)) / N
    jitter = 0.01 * (((sum(indices) * 7919 + seed * 104729) % 97) / 97)
    return base + jitter


@pytest.fixture(scope="module")
def index() -> NeighbourIndex:
    vectors = (np.arange(N, dtype=np.float32) / N).reshape(N, 1)
    return NeighbourIndex(vectors, np.arange(N))


@dataclass
class Recorder:
    """What a run did: jobs received, journal rows, population per generation, pickled states."""

    fail: Callable[[tuple[int, ...]], bool] = lambda indices: False
    jobs: list[Job] = field(default_factory=list)
    calls: list[list[Job]] = field(default_factory=list)
    journal: list[dict[str, Any]] = field(default_factory=list)
    populations: dict[int, list[tuple[tuple[int, ...], float]]] = field(default_factory=dict)
    snapshots: dict[int, bytes] = field(default_factory=dict)
    journal_at: dict[int, int] = field(default_factory=dict)

    def run_jobs(self, jobs: list[Job], on_row: Callable[[dict[str, Any]], None]) -> None:
        self.calls.append(list(jobs))
        for job in jobs:
            self.jobs.append(job)
            if self.fail(job.indices):
                on_row(job.row(status="failed", auc=None, error="toy failure"))
            else:
                on_row(job.row(status="ok", auc=toy_auc(job.indices, job.seed)))

    def checkpoint(self, state: EvolutionState) -> None:
        self.populations[state.generation] = [(tuple(ind), ind.fitness.values[0]) for ind in state.population]
        self.snapshots[state.generation] = pickle.dumps(state)
        self.journal_at[state.generation] = len(self.journal)


class WatchedProblem(FitnessProblem):
    """The real FitnessProblem, noting which slots were invalid and the valid ones' fitness on entry."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.invalid_slots: dict[int, set[int]] = {}
        self.valid_before: dict[int, dict[int, float]] = {}

    def evaluate(self, population, generation):
        self.invalid_slots[generation] = {s for s, ind in enumerate(population) if not ind.fitness.valid}
        self.valid_before[generation] = {s: ind.fitness.values[0] for s, ind in enumerate(population)
                                         if ind.fitness.valid}
        counts = super().evaluate(population, generation)
        for slot, value in self.valid_before[generation].items():
            assert population[slot].fitness.values[0] == value
        return counts


def config(**overrides: Any) -> SearchConfig:
    base = dict(population=16, generations=6, pool=100, k_nearest=5, repetitions=2, hall_of_fame=3, mode="best")
    base.update(overrides)
    return SearchConfig(**base)


def make_run(index: NeighbourIndex, cfg: SearchConfig, run_seed: int, recorder: Recorder,
             cache: FitnessCache | None = None) -> tuple[Evolution, WatchedProblem]:
    problem = WatchedProblem(
        normal_class=0,
        corpus_size=N,
        mode=cfg.mode,
        search_seeds=SEEDS,
        run_jobs=recorder.run_jobs,
        journal=recorder.journal.append,
        cache=cache if cache is not None else FitnessCache(),
        progress=False,
        seed_of=seed_of,
        rescore_seeds=cfg.rescore_seeds,
    )
    evolution = Evolution(problem, cfg, index, run_seed, checkpoint=recorder.checkpoint, log=lambda line: None)
    return evolution, problem


def seed_of(r: int) -> int:
    """The r-th seed of the toy search's sequence: SEEDS, then the seeds rescores add."""
    return SEEDS[r] if r < len(SEEDS) else 1000 + r


def expected_fitness(indices: tuple[int, ...], seeds: int = len(SEEDS)) -> float:
    return sum(toy_auc(indices, seed_of(r)) for r in range(seeds)) / seeds


# ---------------------------------------------------------------- tournament direction


def rank_distribution(n: int, tournsize: int, best: bool) -> np.ndarray:
    """P(selected has rank r from the bottom), r = 1..n, for draws with replacement."""
    r = np.arange(1, n + 1)
    p_best = (r / n) ** tournsize - ((r - 1) / n) ** tournsize
    return p_best if best else p_best[::-1]


@pytest.mark.parametrize("mode", ["best", "worst"])
@pytest.mark.parametrize("via", ["deap", "evolution_toolbox"])
def test_tournament_selects_best_or_worst_of_three(mode: str, via: str, index: NeighbourIndex) -> None:
    n, draws = 8, 12_000
    cls = individual_class(mode)
    # Fitness values in shuffled order so list position says nothing about rank.
    values = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4]
    population = []
    for i, v in enumerate(values):
        ind = cls([i])
        ind.fitness.values = (v,)
        population.append(ind)
    rank_from_bottom = {i: int(r) + 1 for i, r in zip(range(n), np.argsort(np.argsort(values)))}

    if via == "deap":
        select = lambda: tools.selTournament(population, draws, tournsize=3)  # noqa: E731
    else:
        evolution, _ = make_run(index, config(mode=mode), 0, Recorder())
        toolbox = evolution._toolbox(tools.History(), np.random.default_rng(0))
        select = lambda: toolbox.select(population, draws)  # noqa: E731
    state = random.getstate()
    random.seed(12345)
    try:
        chosen = select()
    finally:
        random.setstate(state)

    counts = np.bincount([rank_from_bottom[ind[0]] for ind in chosen], minlength=n + 1)[1:]
    empirical = counts / draws
    theory = rank_distribution(n, 3, best=(mode == "best"))
    # By hand for n = 8, best of 3: P(top) = 1 - (7/8)^3 = 169/512 ~ 0.330, P(bottom) = 1/512.
    assert theory[-1 if mode == "best" else 0] == pytest.approx(169 / 512)
    # Binomial standard error at 12,000 draws is at most 0.0046; allow about 4 of them.
    np.testing.assert_allclose(empirical, theory, atol=0.018)


# ---------------------------------------------------------------- evaluation bookkeeping


@pytest.mark.parametrize("mode", ["best", "worst"])
def test_only_invalid_individuals_are_trained_and_never_twice(mode: str, index: NeighbourIndex) -> None:
    cfg = config(mode=mode, mutation_chance=0.55, mate_chance=0.3)
    rec = Recorder()
    evolution, problem = make_run(index, cfg, 3, rec)
    state = evolution.run()
    assert state.generation == cfg.generations

    keys = [job.key for job in rec.jobs]
    assert len(keys) == len(set(keys)), "a job key was trained twice"
    # Generation 0 evaluates the whole initial population: 16 distinct individuals x 2 seeds.
    assert problem.invalid_slots[0] == set(range(cfg.population))
    assert len(rec.calls[0]) == cfg.population * len(SEEDS)
    # Every job belongs to an individual that was invalid in its generation.
    for job in rec.jobs:
        assert job.individual in problem.invalid_slots[job.generation]
        assert job.purpose == "search" and job.seed in SEEDS and job.normal_class == 0
    # Later generations leave selected-but-unchanged individuals alone.
    assert any(len(problem.valid_before[g]) > 0 for g in range(1, cfg.generations + 1))

    # Total trainings = distinct (indices, seed) keys among all individuals ever in a population.
    seen = {(tuple(sorted(ind)), s) for pop in rec.populations.values() for ind, _ in pop for s in SEEDS}
    assert len(rec.jobs) == len(seen)
    assert {(k[1], k[2]) for k in keys} == seen
    # The logbook's counts agree with what run_jobs received.
    assert sum(state.logbook.select("new")) == len(rec.jobs)
    assert len(rec.journal) == len(rec.jobs)
    # Each individual's fitness is the toy value, averaged over the two seeds.
    for pop in rec.populations.values():
        for ind, value in pop:
            assert value == pytest.approx(expected_fitness(ind), abs=1e-12)


def test_duplicates_within_one_generation_train_once(index: NeighbourIndex) -> None:
    rec = Recorder()
    cfg = config()
    _, problem = make_run(index, cfg, 0, rec)
    cls = individual_class("best")
    population = [cls([5]), cls([5]), cls([9]), cls([5])]
    counts = problem.evaluate(population, 0)
    assert counts == {"new": 4, "cached": 0, "failed": 0}  # {5, 9} x 2 seeds
    assert all(ind.fitness.values[0] == pytest.approx(expected_fitness((5,))) for ind in population if ind == [5])
    again = [cls([9]), cls([11])]
    counts = problem.evaluate(again, 1)
    assert counts == {"new": 2, "cached": 2, "failed": 0}
    assert len(rec.jobs) == 6


# ---------------------------------------------------------------- search direction


@pytest.mark.parametrize("run_seed", [0, 1])
def test_best_mode_climbs_and_worst_mode_descends(run_seed: int, index: NeighbourIndex) -> None:
    for mode in ("best", "worst"):
        rec = Recorder()
        cfg = config(mode=mode, generations=8)
        evolution, _ = make_run(index, cfg, run_seed, rec)
        state = evolution.run()
        initial = [v for _, v in rec.populations[0]]
        final = [v for _, v in rec.populations[cfg.generations]]
        hof = [ind.fitness.values[0] for ind in state.hall_of_fame]
        assert len(hof) == cfg.hall_of_fame
        if mode == "best":
            assert hof[0] > np.mean(initial)
            assert hof[0] > max(initial)  # found something better than the random start
            assert np.mean(final) > np.mean(initial)
            assert hof == sorted(hof, reverse=True)
        else:
            assert hof[0] < np.mean(initial)
            assert hof[0] < min(initial)
            assert np.mean(final) < np.mean(initial)
            assert hof == sorted(hof)
        # The hall of fame holds distinct index sets, each with its toy fitness.
        assert len({tuple(sorted(ind)) for ind in state.hall_of_fame}) == cfg.hall_of_fame
        for ind in state.hall_of_fame:
            assert ind.fitness.values[0] == pytest.approx(expected_fitness(tuple(ind)), abs=1e-12)


def test_failed_trainings_never_win(index: NeighbourIndex) -> None:
    # Items above 300 "fail": in best mode they would otherwise be the winners.
    for mode, bad in (("best", -math.inf), ("worst", math.inf)):
        rec = Recorder(fail=lambda indices: max(indices) >= 300)
        cfg = config(mode=mode, generations=3)
        evolution, _ = make_run(index, cfg, 0, rec)
        state = evolution.run()
        assert any(v == bad for pop in rec.populations.values() for _, v in pop)
        assert all(max(ind) < 300 for ind in state.hall_of_fame)
        assert sum(state.logbook.select("failed")) == sum(row["status"] == "failed" for row in rec.journal) > 0
        # Statistics leave failed individuals out: the logged max/min are finite.
        assert all(math.isfinite(v) for v in state.logbook.select("max"))


def test_scores_train_only_what_the_cache_lacks(index: NeighbourIndex) -> None:
    rec = Recorder()
    evolution, problem = make_run(index, config(generations=1), 0, rec)
    state = evolution.run()
    best = [list(ind) for ind in state.hall_of_fame]
    n_before = len(rec.jobs)
    scores = problem.scores(best, (7, 8), "validate")
    assert len(rec.jobs) - n_before == len(best) * 2
    assert {job.seed for job in rec.jobs[n_before:]} == {7, 8}
    assert scores == [[toy_auc(tuple(ind), 7), toy_auc(tuple(ind), 8)] for ind in best]
    assert problem.scores(best, (8, SEEDS[0]), "validate") == [[toy_auc(tuple(i), 8), toy_auc(tuple(i), SEEDS[0])]
                                                               for i in best]
    assert len(rec.jobs) - n_before == len(best) * 2  # every one of those was cached


# ---------------------------------------------------------------- reproducibility and resume


def _trace(rec: Recorder, state: EvolutionState) -> tuple:
    logbook = [{k: v for k, v in entry.items() if k != "seconds"} for entry in state.logbook]
    return rec.populations, [job.key for job in rec.jobs], logbook


def test_same_seed_same_run_other_seed_differs(index: NeighbourIndex) -> None:
    runs = []
    for run_seed in (5, 5, 6):
        rec = Recorder()
        evolution, _ = make_run(index, config(), run_seed, rec)
        runs.append(_trace(rec, evolution.run()))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]
    assert runs[0][1] != runs[2][1]
    # The module-level random generator is left as it was (the loop borrows its own state).
    random.seed(99)
    expected = random.random()
    random.seed(99)
    evolution, _ = make_run(index, config(generations=2), 5, Recorder())
    evolution.run()
    assert random.random() == expected


@pytest.mark.parametrize("options", [{}, {"rescore": "survivors"}, {"strategy": "aging"}],
                         ids=["paper", "rescore", "aging"])
def test_resume_from_pickled_checkpoint_matches_uninterrupted_run(index: NeighbourIndex, options: dict) -> None:
    cfg = config(mate_chance=0.3, **options)
    full = Recorder()
    evolution, _ = make_run(index, cfg, 11, full)
    final = evolution.run()

    # Resume from the state saved after generation 1, with the journal written up to then.
    state = pickle.loads(full.snapshots[1])
    assert state.generation == 1
    rows = full.journal[: full.journal_at[1]]
    resumed_rec = Recorder()
    resumed_evolution, _ = make_run(index, cfg, 11, resumed_rec, cache=FitnessCache(rows))
    resumed = resumed_evolution.run(state)

    assert resumed.generation == final.generation == cfg.generations
    assert [(list(i), i.fitness.values) for i in resumed.hall_of_fame] == \
           [(list(i), i.fitness.values) for i in final.hall_of_fame]
    assert [list(i) for i in resumed.population] == [list(i) for i in final.population]
    jobs_after_gen1 = [job for job in full.jobs if job.generation > 1]
    assert resumed_rec.jobs == jobs_after_gen1
    assert len(jobs_after_gen1) > 0
    for g in range(2, cfg.generations + 1):
        assert resumed_rec.populations[g] == full.populations[g]
    strip = lambda book: [{k: v for k, v in e.items() if k != "seconds"} for e in book]  # noqa: E731
    assert strip(resumed.logbook) == strip(final.logbook)
    seeds = lambda population: [getattr(i, "seeds", None) for i in population]  # noqa: E731
    assert seeds(resumed.population) == seeds(final.population)


# ---------------------------------------------------------------- random search


def test_random_strategy_evaluates_distinct_individuals_once(index: NeighbourIndex) -> None:
    cfg = config(strategy="random", population=12, generations=4)
    rec = Recorder()
    evolution, _ = make_run(index, cfg, 2, rec)
    state = evolution.run()
    individuals = [ind for g in range(cfg.generations + 1) for ind, _ in rec.populations[g]]
    assert len(individuals) == cfg.population * (cfg.generations + 1) == 60
    assert len(set(individuals)) == 60  # never-seen individuals every generation
    assert all(len(ind) == 1 and 0 <= ind[0] < N for ind in individuals)
    assert len(rec.jobs) == 60 * len(SEEDS)
    assert len({job.key for job in rec.jobs}) == len(rec.jobs)
    assert state.logbook.select("cached") == [0] * (cfg.generations + 1)
    # The hall of fame is the best of everything drawn.
    best = sorted((expected_fitness(ind) for ind in individuals), reverse=True)[: cfg.hall_of_fame]
    assert [ind.fitness.values[0] for ind in state.hall_of_fame] == pytest.approx(best, abs=1e-12)

    # Random search and evolution with one seed start from the same initial population.
    evo_rec = Recorder()
    evo, _ = make_run(index, config(population=12, generations=0), 2, evo_rec)
    evo.run()
    assert evo_rec.populations[0] == rec.populations[0]


def test_oe_size_two_individuals(index: NeighbourIndex) -> None:
    cfg = config(oe_size=2, population=8, generations=3)
    rec = Recorder()
    evolution, _ = make_run(index, cfg, 0, rec)
    state = evolution.run()
    assert all(len(ind) == 2 for pop in rec.populations.values() for ind, _ in pop)
    assert all(len(job.indices) == 2 for job in rec.jobs)
    assert len({job.key for job in rec.jobs}) == len(rec.jobs)
    for ind in state.hall_of_fame:
        assert ind.fitness.values[0] == pytest.approx(expected_fitness(tuple(ind)), abs=1e-12)


# ---------------------------------------------------------------- noise-aware options


@pytest.mark.parametrize("mode", ["best", "worst"])
def test_rescore_gives_survivors_more_seeds_and_the_mean_over_all(index: NeighbourIndex, mode: str) -> None:
    cfg = config(rescore="survivors", rescore_seeds=2, generations=4, mode=mode)
    rec = Recorder()
    evolution, problem = make_run(index, cfg, 3, rec)
    state = evolution.run()
    survived = 0
    for ind in state.population:
        count = getattr(ind, "seeds", len(SEEDS))
        assert (count - len(SEEDS)) % 2 == 0 and count <= len(SEEDS) + 2 * cfg.generations
        survived += count > len(SEEDS)
        # The fitness is the mean over all its seeds, worked out here from the toy AUC.
        assert ind.fitness.values[0] == pytest.approx(expected_fitness(tuple(ind), count), abs=1e-12)
    assert survived > 0
    # Every rescore job is a search job of that generation with a seed beyond the base ones, trained once.
    extra = [job for job in rec.jobs if job.seed not in SEEDS]
    assert extra and all(job.purpose == "search" and job.generation >= 1 for job in extra)
    assert len({job.key for job in rec.jobs}) == len(rec.jobs)
    # The hall of fame holds each entry's current fitness, not a lucky earlier one.
    for ind in state.hall_of_fame:
        assert ind.fitness.values[0] == pytest.approx(
            expected_fitness(tuple(ind), getattr(ind, "seeds", len(SEEDS))), abs=1e-12)


def test_aging_replaces_the_oldest_with_mutated_children(index: NeighbourIndex) -> None:
    cfg = config(strategy="aging", population=10, aging_batch=4, generations=5, mode="best")
    rec = Recorder()
    evolution, _ = make_run(index, cfg, 4, rec)
    state = evolution.run()
    for g in range(1, cfg.generations + 1):
        before, after = rec.populations[g - 1], rec.populations[g]
        assert len(after) == cfg.population
        assert after[: cfg.population - 4] == before[4:]  # the four oldest left, the rest kept their place
    # Children are never cached duplicates of a fitness: each has its own toy fitness.
    for pop in rec.populations.values():
        for ind, value in pop:
            assert value == pytest.approx(expected_fitness(ind), abs=1e-12)
    assert state.hall_of_fame[0].fitness.values[0] >= max(v for _, v in rec.populations[0])
    assert len({job.key for job in rec.jobs}) == len(rec.jobs)
