"""The evolutionary search of the paper (Appendix H, Algorithm 1), built from DEAP parts.

Per generation: tournament selection (best of 3 in ``best`` mode, worst of 3
in ``worst`` mode: ``selTournament`` on FitnessMax or FitnessMin), mating of
pairs (0,1), (2,3), ... with the mate chance, mutation with the mutation
chance, then evaluation of the individuals whose fitness became invalid.
Mating and mutation replace an index by a random pick among the k nearest
corpus items within a random pool (:class:`~oesearch.search.neighbours.NeighbourIndex`).

The random-search baseline (Appendix D) runs through the same loop with
"variation" replaced by a fresh batch of never-seen random individuals.

Two noise-aware options run through the same loop, journal and checkpoint:
``rescore: survivors`` gives every individual that survives a generation
unchanged more seeds, so a lucky fitness cannot persist; ``strategy: aging`` is
regularized evolution (Real et al., AAAI 2019): each generation adds mutated
children of tournament winners and removes as many of the oldest individuals,
so an image stays only while it is re-discovered.

All randomness comes from two generators seeded by the run seed, a Python
``random.Random`` (coin flips, selection) and a NumPy ``Generator`` (pools);
both are checkpointed each generation, so ``--resume`` continues exactly.
"""

from __future__ import annotations

import math
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from deap import base, tools

from oesearch.config import SearchConfig
from oesearch.search.fitness import is_failed
from oesearch.search.individuals import individual_class
from oesearch.search.neighbours import NeighbourIndex
from oesearch.search.problem import FitnessProblem
from oesearch.seeding import derive_seed

__all__ = ["individual_class", "EvolutionState", "Evolution", "mutate_near", "mate_near", "initial_indices",
           "renew", "forget_rescored", "random_individuals"]

_GLOBAL_RANDOM = threading.RLock()  # a campaign runs its searches in threads of one process


@contextmanager
def borrowed_global_random(rng: random.Random) -> Iterator[None]:
    """Run DEAP code that draws from the ``random`` module on ``rng``'s state instead.

    DEAP's selection operators use the module-level generator; swapping state in
    and out keeps the run seeded and checkpointable without touching anyone
    else's use of ``random``.
    """
    with _GLOBAL_RANDOM:
        saved = random.getstate()
        random.setstate(rng.getstate())
        try:
            yield
        finally:
            rng.setstate(random.getstate())
            random.setstate(saved)


def mutate_near(individual: list[int], index: NeighbourIndex, rng: np.random.Generator,
                pool: int | None, k: int) -> tuple[list[int]]:
    """Replace each index d by a random pick among the k nearest to d in a random pool."""
    for j, d in enumerate(list(individual)):
        individual[j] = index.draw([d], rng, pool, k)
    return (individual,)


def mate_near(a: list[int], b: list[int], index: NeighbourIndex, rng: np.random.Generator,
              pool: int | None, k: int) -> tuple[list[int], list[int]]:
    """Replace both children by picks among the k items nearest to both parents (sum of squared L2)."""
    parents = list(zip(list(a), list(b)))
    for child in (a, b):
        for j, (pa, pb) in enumerate(parents):
            child[j] = index.draw([pa, pb], rng, pool, k)
    return a, b


def initial_indices(run_seed: int, corpus_size: int) -> np.ndarray:
    """A seeded permutation of the corpus; generation g of random search takes its g-th slice.

    Both strategies start from its first slice, so an evolution and a random
    search with one seed share their initial population.
    """
    return np.random.default_rng(derive_seed(run_seed, "individuals")).permutation(corpus_size)


def renew(individual: Any) -> None:
    """Mark a changed individual for evaluation: no fitness, and the base seeds only (``problem.seeds_of``)."""
    del individual.fitness.values
    individual.__dict__.pop("seeds", None)


def forget_rescored(hall_of_fame: tools.HallOfFame, rescored: Sequence[Any]) -> None:
    """Drop hall-of-fame copies of individuals whose fitness was just re-measured.

    A hall of fame keeps the fitness an entry had when it entered; after a rescore
    the lucky old value must not outlive the new one, so the entry is removed and
    ``update`` inserts it again (or not) with its current fitness.
    """
    keys = {tuple(sorted(ind)) for ind in rescored}
    for position in reversed(range(len(hall_of_fame))):
        if tuple(sorted(hall_of_fame[position])) in keys:
            hall_of_fame.remove(position)


def random_individuals(run_seed: int, corpus_size: int, count: int, oe_size: int = 1) -> list[list[int]]:
    """The first ``count`` individuals of the seeded permutation: generation 0, then the images after it."""
    chunk = initial_indices(run_seed, corpus_size)[: count * oe_size]
    return [[int(i) for i in chunk[j : j + oe_size]] for j in range(0, len(chunk), oe_size)]


def same_indices(a: Sequence[int], b: Sequence[int]) -> bool:
    """Hall-of-fame similarity: one entry per set of corpus indices."""
    return sorted(a) == sorted(b)


def _fitness_key(ind: Any) -> float:
    value = ind.fitness.values[0]
    return math.nan if is_failed(value) else value


def _finite(fn: Callable[[np.ndarray], Any]) -> Callable[[Sequence[float]], float]:
    def compute(values: Sequence[float]) -> float:
        finite = np.asarray(values, dtype=float)
        finite = finite[np.isfinite(finite)]
        return float(fn(finite)) if finite.size else math.nan

    return compute


def make_statistics() -> tools.Statistics:
    """Fitness statistics over the population; failed individuals are left out."""
    stats = tools.Statistics(_fitness_key)
    for name, fn in (("min", np.min), ("mean", np.mean), ("max", np.max), ("std", np.std)):
        stats.register(name, _finite(fn))
    return stats


@dataclass
class EvolutionState:
    """Everything needed to continue a search after generation ``generation``."""

    generation: int
    population: list
    hall_of_fame: tools.HallOfFame
    logbook: tools.Logbook
    history: tools.History
    py_rng: Any  # random.Random state
    np_rng: dict  # numpy bit-generator state
    elapsed: float = 0.0  # seconds spent in finished generations, across resumes
    # History ids of each generation's population: the analysis needs whole populations
    # (diversity, genealogy by generation), which neither the journal nor the logbook keeps.
    populations: list = field(default_factory=list)


class Evolution:
    """Algorithm 1 with checkpoints; ``run`` returns the final state."""

    def __init__(self, problem: FitnessProblem, config: SearchConfig, index: NeighbourIndex, run_seed: int,
                 checkpoint: Callable[[EvolutionState], None],
                 log: Callable[[str], None] = print) -> None:
        self.problem = problem
        self.cfg = config
        self.index = index
        self.run_seed = run_seed
        self.checkpoint = checkpoint
        self.log = log
        self.Individual = individual_class(config.mode)
        self.permutation = initial_indices(run_seed, problem.corpus_size)
        self.pool = None if config.pool == "all" else config.pool
        self.stats = make_statistics()

    # --- setup ---------------------------------------------------------------------
    def _toolbox(self, history: tools.History, np_rng: np.random.Generator) -> base.Toolbox:
        tb = base.Toolbox()
        tb.register("select", tools.selTournament, tournsize=self.cfg.tournament_size)
        tb.register("mate", mate_near, index=self.index, rng=np_rng, pool=self.pool, k=self.cfg.k_nearest)
        tb.register("mutate", mutate_near, index=self.index, rng=np_rng, pool=self.pool, k=self.cfg.k_nearest)
        tb.decorate("mate", history.decorator)
        tb.decorate("mutate", history.decorator)
        return tb

    def _random_batch(self, generation: int) -> list:
        size = self.cfg.population * self.cfg.oe_size
        chunk = self.permutation[generation * size : (generation + 1) * size]
        return [self.Individual(int(i) for i in chunk[j : j + self.cfg.oe_size]) for j in range(0, size, self.cfg.oe_size)]

    def _fresh_state(self) -> EvolutionState:
        hof = tools.HallOfFame(self.cfg.hall_of_fame, similar=same_indices)
        logbook = tools.Logbook()
        logbook.header = ["gen", "new", "cached", "failed", "min", "mean", "max", "std", "unique", "hof", "seconds"]
        return EvolutionState(
            generation=-1,
            population=[],
            hall_of_fame=hof,
            logbook=logbook,
            history=tools.History(),
            py_rng=random.Random(derive_seed(self.run_seed, "evolution")).getstate(),
            np_rng=np.random.default_rng(derive_seed(self.run_seed, "neighbours")).bit_generator.state,
        )

    # --- the loop --------------------------------------------------------------------
    def run(self, state: EvolutionState | None = None) -> EvolutionState:
        """Run (or continue) the search through the last generation."""
        state = state or self._fresh_state()
        py_rng = random.Random()
        py_rng.setstate(state.py_rng)
        np_rng = np.random.default_rng()
        np_rng.bit_generator.state = state.np_rng
        toolbox = self._toolbox(state.history, np_rng)

        for gen in range(state.generation + 1, self.cfg.generations + 1):
            start = time.perf_counter()
            if gen == 0 or self.cfg.strategy == "random":
                offspring = self._random_batch(gen)
                state.history.update(offspring)
            elif self.cfg.strategy == "aging":
                children = self._aging_children(state.population, toolbox, py_rng)
                offspring = state.population[len(children):] + children  # the oldest leave
            else:
                offspring = self._vary(state.population, toolbox, py_rng)
            rescoring = self.cfg.rescore == "survivors" and gen > 0
            survivors = [ind for ind in offspring if ind.fitness.valid] if rescoring else []
            counts = self.problem.evaluate(offspring, gen)
            if rescoring:
                more = self.problem.rescore(survivors, gen)
                counts = {k: counts[k] + more[k] for k in ("new", "cached", "failed")}
                forget_rescored(state.hall_of_fame, survivors)
            state.population = offspring
            known = getattr(state, "populations", [])[:gen]  # absent from checkpoints written before it was kept
            state.populations = known + [None] * (gen - len(known)) + [[ind.history_index for ind in offspring]]
            state.hall_of_fame.update(offspring)
            seconds = time.perf_counter() - start
            self._record(state, gen, counts, seconds)
            state.generation = gen
            state.py_rng = py_rng.getstate()
            state.np_rng = np_rng.bit_generator.state
            state.elapsed += seconds
            self.checkpoint(state)
        return state

    def _vary(self, population: list, toolbox: base.Toolbox, py_rng: random.Random) -> list:
        """Select, then mate pairs and mutate (Algorithm 1), invalidating what changed."""
        with borrowed_global_random(py_rng):
            chosen = toolbox.select(population, len(population))
        offspring = [toolbox.clone(ind) for ind in chosen]
        for i in range(0, len(offspring) - 1, 2):
            if py_rng.random() < self.cfg.mate_chance:
                toolbox.mate(offspring[i], offspring[i + 1])
                renew(offspring[i])
                renew(offspring[i + 1])
        for ind in offspring:
            if py_rng.random() < self.cfg.mutation_chance:
                toolbox.mutate(ind)
                renew(ind)
        return offspring

    def _aging_children(self, population: list, toolbox: base.Toolbox, py_rng: random.Random) -> list:
        """Regularized evolution's step: each child is a mutated copy of a tournament winner."""
        with borrowed_global_random(py_rng):
            parents = toolbox.select(population, self.cfg.children_per_generation)
        children = [toolbox.clone(ind) for ind in parents]
        for child in children:
            toolbox.mutate(child)
            renew(child)
        return children

    def _record(self, state: EvolutionState, gen: int, counts: dict, seconds: float) -> None:
        best = state.hall_of_fame[0].fitness.values[0] if len(state.hall_of_fame) else math.nan
        entry = {
            "gen": gen,
            **{k: counts[k] for k in ("new", "cached", "failed")},
            **self.stats.compile(state.population),
            "unique": len({tuple(sorted(ind)) for ind in state.population}),
            "hof": best,
            "seconds": round(seconds, 3),
        }
        state.logbook.record(**entry)
        self.log(
            f"gen {gen:>3}/{self.cfg.generations} | trained {counts['new']:>3} cached {counts['cached']:>3}"
            f" failed {counts['failed']} | fitness min {entry['min']:.4f} mean {entry['mean']:.4f}"
            f" max {entry['max']:.4f} | unique {entry['unique']:>3} | hall of fame {best:.4f} | {seconds:.1f}s"
        )
