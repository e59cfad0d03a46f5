"""The training seeds of a search, all derived from ``run.seed``.

Every individual trains on the same ``search.repetitions`` seeds (so a fitness is
comparable and a duplicate never retrains); rescores take the seeds after them;
validation draws its own fresh ones.
"""

from __future__ import annotations

from oesearch.config import Config
from oesearch.seeding import derive_seed

__all__ = ["repetition_seed", "search_seeds", "validation_seeds"]


def repetition_seed(run_seed: int, r: int) -> int:
    """The r-th training seed of the search: the first ``repetitions`` make a fitness, rescores take the next."""
    return derive_seed(run_seed, "repetition", r)


def search_seeds(config: Config) -> list[int]:
    return [repetition_seed(config.run.seed, r) for r in range(config.search.repetitions)]


def validation_seeds(config: Config) -> list[int]:
    """Fresh seeds for the finalists and the random panel: the race's at most, or the fixed scheme's."""
    v = config.search.validation
    count = v.max_seeds if v.scheme == "race" else v.seeds
    return [derive_seed(config.run.seed, "validation", r) for r in range(count)]
