"""The problem side of the search: what an individual's fitness is and how it is computed.

:class:`FitnessProblem` turns individuals into jobs (one per seed), skips jobs
whose key is already cached, dispatches the rest, journals every finished row
durably, and assigns fitness values.  The algorithm side
(:mod:`oesearch.search.evolution`) never sees Ray, seeds or the journal.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from oesearch.search.fitness import FitnessCache, Job, job_key

__all__ = ["FitnessProblem", "EvaluationCounts"]


class EvaluationCounts(dict):
    """{"new": jobs trained now, "cached": jobs answered by the cache, "failed": failed rows}."""


class FitnessProblem:
    """Fitness of corpus-index individuals for one normal class, on a dispatcher.

    An individual's fitness is its mean test AUC over its seeds: the first
    ``len(search_seeds)`` of the search's seed sequence, or more once it has been
    rescored (``individual.seeds``, set by :meth:`rescore`).  ``seed_of(r)`` is the
    r-th seed of that sequence, so every individual's seeds are a prefix of it and
    the cache answers any seed an image was ever trained with.
    """

    def __init__(
        self,
        normal_class: int,
        corpus_size: int,
        mode: str,
        search_seeds: Sequence[int],
        run_jobs: Callable[[list[Job], Callable[[dict[str, Any]], None]], None],
        journal: Callable[[dict[str, Any]], None],
        cache: FitnessCache,
        progress: bool = True,
        seed_of: Callable[[int], int] | None = None,
        rescore_seeds: int = 0,
        task: str | None = None,
    ) -> None:
        self.normal_class = normal_class
        self.corpus_size = corpus_size
        self.mode = mode
        self.search_seeds = tuple(search_seeds)
        self._seed_of = seed_of
        self.rescore_seeds = rescore_seeds
        self.task = task  # the worker task its jobs name (a campaign's workers hold several)
        self._run_jobs = run_jobs
        self._journal = journal
        self.cache = cache
        self.progress = progress

    def seeds_of(self, individual: Any) -> tuple[int, ...]:
        """The training seeds behind ``individual``'s fitness."""
        count = getattr(individual, "seeds", len(self.search_seeds))
        if count <= len(self.search_seeds):
            return self.search_seeds[:count]
        if self._seed_of is None:
            raise ValueError("this problem has no seed sequence to rescore with (seed_of)")
        return self.search_seeds + tuple(self._seed_of(r) for r in range(len(self.search_seeds), count))

    def _evaluate(self, slots: Sequence[tuple[int, Sequence[int], Sequence[int]]], purpose: str,
                  generation: int | None, label: str) -> tuple[list[float], EvaluationCounts]:
        """Train what the cache lacks for (slot, indices, seeds) triples; return their fitness values."""
        jobs, queued = [], set()
        cached = 0
        for slot, indices, seeds in slots:
            for seed in seeds:
                job = Job(self.normal_class, tuple(int(i) for i in indices), int(seed), purpose, generation, slot,
                          self.task)
                if job.key in self.cache:
                    cached += 1
                elif job.key not in queued:  # a duplicate within this batch trains once
                    queued.add(job.key)
                    jobs.append(job)
        failed = 0
        with tqdm(total=len(jobs), desc=label, leave=False, disable=not self.progress or not jobs) as bar:

            def on_row(row: dict[str, Any]) -> None:
                nonlocal failed
                self._journal(row)
                self.cache.add(row)
                failed += row["status"] != "ok"
                bar.update(1)

            self._run_jobs(jobs, on_row)
        values = [self.cache.fitness(self.normal_class, indices, seeds, self.mode) for _, indices, seeds in slots]
        return values, EvaluationCounts(new=len(jobs), cached=cached, failed=failed)

    def evaluate(self, population: Sequence[list[int]], generation: int) -> EvaluationCounts:
        """Set the fitness of every individual whose fitness is invalid."""
        invalid = [(slot, ind, self.seeds_of(ind)) for slot, ind in enumerate(population) if not ind.fitness.valid]
        values, counts = self._evaluate(invalid, "search", generation, f"gen {generation}")
        for (_, ind, _), value in zip(invalid, values):
            ind.fitness.values = (value,)
        return counts

    def rescore(self, survivors: Sequence[list[int]], generation: int) -> EvaluationCounts:
        """Give each survivor ``rescore_seeds`` more seeds; its fitness becomes the mean over all of them."""
        for ind in survivors:
            ind.seeds = len(self.seeds_of(ind)) + self.rescore_seeds
        slots = [(slot, ind, self.seeds_of(ind)) for slot, ind in enumerate(survivors)]
        values, counts = self._evaluate(slots, "search", generation, f"gen {generation} rescore")
        for ind, value in zip(survivors, values):
            ind.fitness.values = (value,)
        return counts

    def scores(self, individuals: Sequence[Sequence[int]], seeds: Sequence[int], purpose: str,
               label: str | None = None) -> list[list[float | None]]:
        """Per individual, the test AUC of each seed (None where that training failed), training what is missing."""
        self._evaluate([(slot, ind, seeds) for slot, ind in enumerate(individuals)], purpose, None, label or purpose)
        return self.cached_aucs(individuals, seeds)

    def cached_aucs(self, individuals: Sequence[Sequence[int]], seeds: Sequence[int]) -> list[list[float | None]]:
        """Per individual, the journaled test AUC of each seed; None where it failed or was never trained."""
        keys = [[job_key(self.normal_class, indices, s) for s in seeds] for indices in individuals]
        return [[self.cache.get(k)["auc"] if k in self.cache and self.cache.get(k)["status"] == "ok" else None
                 for k in row] for row in keys]
