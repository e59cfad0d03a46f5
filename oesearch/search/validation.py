"""Validation of the final candidates on fresh seeds: a race, or the paper's fixed scheme.

The search ends with a hall of fame of candidates whose search fitness is a mean over few seeds, so part of
their rank is seed luck. Validation retrains each on fresh seeds. :func:`fixed` is the paper-faithful scheme
(every finalist on every validation seed). :func:`race` spends the same budget adaptively, like SMAC's
intensification or irace's post-selection race: all finalists start on a few seeds, and after each round the
ones a one-sided paired t-test (Bonferroni-corrected over the planned looks and comparisons) puts behind the
leader are dropped, so the remaining trainings go to the candidates that are still in contention.

The race is a pure function of the AUCs the ``score`` callback returns: a callback that answers the same
seeds with the same AUCs after a crash and resume (e.g. from a journal) makes the resumed race repeat the same
decisions. Only numpy/scipy; no Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from oesearch.search import statistics

__all__ = ["Finalist", "Score", "fixed", "race", "ranked"]

#: ``score(finalists, new_seeds)`` -> per finalist, the AUC of each new seed (NaN for a failed training).
Score = Callable[[list["Finalist"], list[int]], list[list[float]]]


@dataclass
class Finalist:
    """One final candidate and its validation AUCs.

    Attributes:
        indices: the candidate's OE image indices (its identity).
        search_fitness: its fitness in the search.
        aucs: validation AUCs in seed order (NaN = failed training).
        dropped_at: the number of validation seeds it had when the race eliminated it; None if it survived.
    """

    indices: tuple[int, ...]
    search_fitness: float
    aucs: list[float] = field(default_factory=list)
    dropped_at: int | None = None

    @property
    def mean(self) -> float:
        """Mean validation AUC over the successful trainings (NaN if there is none)."""
        values = np.asarray(self.aucs, dtype=float)
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else math.nan

    @property
    def seeds(self) -> int:
        """Number of validation seeds scored so far (failed ones included)."""
        return len(self.aucs)


def _check_mode(mode: str) -> None:
    if mode not in ("best", "worst"):
        raise ValueError(f"mode must be 'best' (higher AUC is better) or 'worst' (lower is better), not {mode!r}")


def ranked(finalists: list[Finalist], mode: str) -> list[Finalist]:
    """Finalists ranked: survivors first by mean in the run's direction, then the dropped by mean.

    ``mode="best"`` puts the highest mean first, ``"worst"`` the lowest. A NaN mean (no successful
    training) comes last in its group. The sort is stable: ties keep input order.
    """
    _check_mode(mode)
    sign = -1.0 if mode == "best" else 1.0

    def key(f: Finalist) -> tuple[bool, bool, float]:
        m = f.mean
        return f.dropped_at is not None, math.isnan(m), 0.0 if math.isnan(m) else sign * m

    return sorted(finalists, key=key)


def _collect(score: Score, group: list[Finalist], new: list[int]) -> None:
    """Score ``group`` on ``new`` seeds and append the AUCs, checking the callback's answer's shape."""
    answer = score(list(group), list(new))
    if len(answer) != len(group):
        raise ValueError(f"score returned {len(answer)} rows for {len(group)} finalists")
    for f, row in zip(group, answer):
        row = [float(a) for a in row]
        if len(row) != len(new):
            raise ValueError(f"score returned {len(row)} AUCs for {len(new)} seeds (finalist {f.indices})")
        f.aucs.extend(row)


def fixed(finalists: list[Finalist], seeds: Sequence[int], score: Score, mode: str) -> list[Finalist]:
    """The paper-faithful validation: every finalist trained once on each of ``seeds``, in one call.

    The input order (the hall of fame order) is kept; nobody is dropped.
    """
    _check_mode(mode)
    if finalists and len(seeds):
        _collect(score, list(finalists), list(seeds))
    return list(finalists)


def _behind(f: Finalist, leader: Finalist, mode: str, alpha: float) -> bool:
    """Whether a one-sided paired t-test on the shared seeds says ``f`` is behind ``leader`` at ``alpha``.

    The differences are oriented so that positive means "``f`` is behind" (lower AUC for best, higher for
    worst). The one-sided test at ``alpha`` rejects exactly when the lower bound of the two-sided
    ``1 - 2 alpha`` Student-t interval of the mean difference is above 0, which :func:`statistics.mean_ci`
    gives. With fewer than 2 shared seeds nothing is decided; differences with zero variance give a
    zero-width interval, so they decide by their sign: behind iff they are positive.
    """
    n = min(f.seeds, leader.seeds)
    if n < 2:
        return False
    a = np.asarray(f.aucs[:n], dtype=float)
    b = np.asarray(leader.aucs[:n], dtype=float)
    d = b - a if mode == "best" else a - b
    if np.isnan(d).any():
        return False
    _, lo, _ = statistics.mean_ci(d, 1.0 - 2.0 * alpha)
    return bool(lo > 0.0)


def race(finalists: list[Finalist], seeds: Sequence[int], score: Score, mode: str, first: int, step: int,
         level: float = 0.95, keep: int = 1, log: Callable[[str], None] = print) -> list[Finalist]:
    """Race the finalists on fresh validation seeds, dropping those significantly behind the leader.

    Args:
        finalists: the candidates, in hall of fame order, with no validation AUCs yet. Their ``aucs`` and
            ``dropped_at`` are filled in place.
        seeds: the full ordered list of fresh validation seeds; ``len(seeds)`` is the most any finalist gets.
        score: ``score(finalists, new_seeds)`` returns, per finalist, the AUC of each new seed (NaN for a
            failed training). It must answer the same seeds with the same AUCs when called again (resume).
        mode: ``"best"`` (highest mean leads) or ``"worst"`` (lowest mean leads).
        first: seeds every finalist gets in round 1.
        step: seeds the survivors get in each later round.
        level: the family-wise confidence; each test runs at ``(1 - level) / L`` with ``L`` = planned rounds x
            (finalists - 1) (Bonferroni over looks and comparisons).
        keep: stop once at most this many survivors remain.
        log: receives one short line per round.

    After each round, a survivor with a failed training is dropped at once, and a survivor that a one-sided
    paired t-test on the shared seeds puts behind the leader (the survivor with the most extreme mean) is
    dropped; ``dropped_at`` records its seed count. The race stops when at most ``keep`` survivors remain,
    when every adjacent pair of survivors (sorted by mean) is separated by the same test, or when the
    survivors have all ``seeds``.

    Returns:
        All finalists, ranked by :func:`ranked`.

    Raises:
        ValueError: on a bad mode, ``first``/``step``/``keep`` < 1, ``level`` outside [0.5, 1), no seeds, or
            finalists that already carry validation AUCs.
    """
    _check_mode(mode)
    if first < 1 or step < 1 or keep < 1:
        raise ValueError(f"race needs first >= 1, step >= 1 and keep >= 1 (got first={first}, step={step}, "
                         f"keep={keep})")
    if not 0.5 <= level < 1.0:
        raise ValueError(f"level must lie in [0.5, 1), not {level}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("race needs at least one validation seed")
    if any(f.aucs or f.dropped_at is not None for f in finalists):
        raise ValueError("race needs finalists without validation AUCs (it scores them itself; on resume, "
                         "pass fresh finalists and let the score callback answer from its record)")
    finalists = list(finalists)
    if not finalists:
        return []

    max_seeds = len(seeds)
    first = min(first, max_seeds)
    looks = 1 + math.ceil((max_seeds - first) / step)
    alpha = (1.0 - level) / (looks * max(1, len(finalists) - 1))

    survivors = list(finalists)
    have = 0
    round_no = 0
    while survivors and have < max_seeds:
        round_no += 1
        new = seeds[have:have + (first if round_no == 1 else step)]
        _collect(score, survivors, new)
        have += len(new)

        dropped: list[str] = []
        failed = [f for f in survivors if np.isnan(np.asarray(f.aucs, dtype=float)).any()]
        for f in failed:
            f.dropped_at = f.seeds
            dropped.append(f"{f.indices} (failed)")
        survivors = [f for f in survivors if f.dropped_at is None]
        if survivors:
            leader = ranked(survivors, mode)[0]
            behind = [f for f in survivors if f is not leader and _behind(f, leader, mode, alpha)]
            for f in behind:
                f.dropped_at = f.seeds
                dropped.append(str(f.indices))
            survivors = [f for f in survivors if f.dropped_at is None]
        plural = "" if len(survivors) == 1 else "s"
        log(f"race round {round_no}: {have} seeds, {len(survivors)} survivor{plural}, dropped "
            f"{', '.join(dropped) if dropped else 'none'}")

        if len(survivors) <= keep:
            break
        order = ranked(survivors, mode)
        if all(_behind(b, a, mode, alpha) for a, b in zip(order, order[1:])):
            break
    return ranked(finalists, mode)
