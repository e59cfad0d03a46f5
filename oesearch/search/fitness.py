"""Fitness jobs, journal rows and the cache that keeps duplicates from being retrained.

One *job* is one training: an individual's corpus indices with one seed.  An
individual's fitness is the mean test AUC over its jobs (one per repetition
seed).  Jobs are plain data (ints, tuples, strings) so they cross process
boundaries without DEAP's creator classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional

__all__ = ["Job", "JobKey", "job_key", "FitnessCache", "failed_fitness", "is_failed"]

JobKey = tuple[int, tuple[int, ...], int]  # (normal class, sorted corpus indices, seed)


def job_key(normal_class: int, indices: Iterable[int], seed: int) -> JobKey:
    """The cache key of one training: the order of an individual's indices does not matter.

    Within a run everything else a result depends on is fixed by its config (``--resume``
    refuses another): ``train`` (``dedup`` included) and ``run.pack``.  Batches are drawn
    on the CPU on every device, so a row's ``device`` (journaled with it) changes only
    float rounding, as ``run.pack`` > 1, ``train.dedup`` and a worker's thread count do
    (on the reference network Adam amplifies it to a few 1e-3 of AUC: docs/method.md).
    """
    return (int(normal_class), tuple(sorted(int(i) for i in indices)), int(seed))


@dataclass(frozen=True)
class Job:
    """One training of one individual with one seed, and where it came from."""

    normal_class: int
    indices: tuple[int, ...]
    seed: int
    purpose: str  # "search" or "validate"
    generation: Optional[int]
    individual: int  # slot in the population, or rank in the hall of fame
    task: Optional[str] = None  # in a campaign: which of its workers' tasks trains it (not part of the row)

    @property
    def key(self) -> JobKey:
        return job_key(self.normal_class, self.indices, self.seed)

    @property
    def name(self) -> str:
        """Readable label for the Ray dashboard, e.g. ``fitness[g12 i37 idx=123 s1]``."""
        where = f"g{self.generation}" if self.generation is not None else "val"
        idx = ",".join(map(str, self.indices))
        return f"fitness[{where} i{self.individual} idx={idx} s{self.seed}]"

    def failed_row(self) -> dict[str, Any]:
        """The row of this job when it failed without an answer (the dispatcher adds the reason)."""
        return self.row(auc=None, status="failed", reason=None, seconds=None, worker=None, node=None, device=None)

    def row(self, **result: Any) -> dict[str, Any]:
        """A journal row: this job's identity plus ``result`` fields."""
        return {
            "purpose": self.purpose,
            "generation": self.generation,
            "individual": self.individual,
            "indices": list(self.indices),
            "seed": self.seed,
            "normal_class": self.normal_class,
            **result,
        }


def row_key(row: dict[str, Any]) -> JobKey:
    return job_key(row["normal_class"], row["indices"], row["seed"])


def failed_fitness(mode: str) -> float:
    """A fitness that can never win: -inf when maximising, +inf when minimising."""
    return -math.inf if mode == "best" else math.inf


def is_failed(value: float) -> bool:
    return math.isinf(value) or math.isnan(value)


class FitnessCache:
    """Finished journal rows by job key; a key present here is never trained again."""

    def __init__(self, rows: Iterable[dict[str, Any]] = ()) -> None:
        self._rows: dict[JobKey, dict[str, Any]] = {}
        for row in rows:
            self.add(row)

    def __contains__(self, key: JobKey) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: dict[str, Any]) -> None:
        self._rows.setdefault(row_key(row), row)

    def get(self, key: JobKey) -> dict[str, Any]:
        return self._rows[key]

    def fitness(self, normal_class: int, indices: Iterable[int], seeds: Iterable[int], mode: str) -> float:
        """Mean AUC over ``seeds``, or :func:`failed_fitness` when any training failed."""
        aucs = []
        for seed in seeds:
            row = self._rows[job_key(normal_class, indices, seed)]
            if row["status"] != "ok":
                return failed_fitness(mode)
            aucs.append(row["auc"])
        return sum(aucs) / len(aucs)
