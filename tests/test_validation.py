"""The racing validation on a synthetic objective with known true means.

Each candidate's validation AUC on seed ``s`` is its true mean plus Gaussian seed noise (SD 0.02) drawn from a
generator seeded by (indices, seed), so a training's result is a fixed function of (candidate, seed), as a
deterministic retraining would be.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from oesearch.search.validation import Finalist, fixed, race, ranked

NOISE_SD = 0.02
SEEDS = list(range(1000, 1015))  # 15 fresh validation seeds


class Objective:
    """Known true means per candidate; records every training it is asked for."""

    def __init__(self, true_means: dict[tuple[int, ...], float], fail: set[tuple[tuple[int, ...], int]] = frozenset()):
        self.true_means = true_means
        self.fail = fail
        self.calls: list[tuple[list[tuple[int, ...]], list[int]]] = []

    def auc(self, indices: tuple[int, ...], seed: int) -> float:
        if (indices, seed) in self.fail:
            return math.nan
        rng = np.random.default_rng([*indices, seed])
        return self.true_means[indices] + NOISE_SD * float(rng.standard_normal())

    def __call__(self, finalists: list[Finalist], new_seeds: list[int]) -> list[list[float]]:
        self.calls.append(([f.indices for f in finalists], list(new_seeds)))
        return [[self.auc(f.indices, s) for s in new_seeds] for f in finalists]

    @property
    def trainings(self) -> int:
        return sum(len(who) * len(seeds) for who, seeds in self.calls)


def finalists(means: dict[tuple[int, ...], float]) -> list[Finalist]:
    return [Finalist(indices=i, search_fitness=m) for i, m in means.items()]


# mode -> true means: two equal leaders and one candidate 0.1 behind in the run's direction
CASES = {
    "best": {(3, 1): 0.80, (7, 2): 0.80, (5, 9): 0.70},
    "worst": {(3, 1): 0.30, (7, 2): 0.30, (5, 9): 0.40},
}


@pytest.mark.parametrize("mode", ["best", "worst"])
def test_race_drops_the_inferior_and_keeps_the_equal(mode):
    means = CASES[mode]
    objective = Objective(means)
    lines: list[str] = []
    result = race(finalists(means), SEEDS, objective, mode, first=3, step=2, log=lines.append)

    by_indices = {f.indices: f for f in result}
    inferior = by_indices[(5, 9)]
    assert inferior.dropped_at is not None and inferior.dropped_at < len(SEEDS)
    assert inferior.seeds == inferior.dropped_at
    for leader in ((3, 1), (7, 2)):
        assert by_indices[leader].dropped_at is None
        assert by_indices[leader].seeds == len(SEEDS)
        assert by_indices[leader].mean == pytest.approx(means[leader], abs=4 * NOISE_SD / math.sqrt(len(SEEDS)))
    # survivors first (best mean first in the run's direction), the dropped last
    assert result[-1].indices == (5, 9)
    top, second = result[0].mean, result[1].mean
    assert (top >= second) if mode == "best" else (top <= second)

    # round 1 is everyone on seeds[:3]; later rounds only the survivors on the next 2 seeds, in order
    assert objective.calls[0] == ([(3, 1), (7, 2), (5, 9)], SEEDS[:3])
    offered = [s for _, seeds in objective.calls for s in seeds]
    assert offered == SEEDS
    done = 0
    for who, seeds in objective.calls:  # after its drop, the inferior is never trained again
        assert ((5, 9) in who) == (done < inferior.dropped_at)
        done += len(seeds)
    assert objective.trainings == sum(f.seeds for f in result)
    assert objective.trainings < len(means) * len(SEEDS)
    assert len(lines) == len(objective.calls) and lines[0].startswith("race round 1: 3 seeds, ")
    assert any("(5, 9)" in line for line in lines)


def test_race_is_a_pure_function_of_the_aucs():
    """Racing again with the same (deterministic) trainings repeats every decision: the resume property."""
    means = CASES["best"]
    first = race(finalists(means), SEEDS, Objective(means), "best", first=3, step=2, log=lambda _: None)
    again = race(finalists(means), SEEDS, Objective(means), "best", first=3, step=2, log=lambda _: None)
    assert [(f.indices, f.aucs, f.dropped_at) for f in first] == [(f.indices, f.aucs, f.dropped_at) for f in again]


def test_race_resumed_after_a_crash_repeats_the_decisions():
    means = CASES["worst"]
    uninterrupted = race(finalists(means), SEEDS, Objective(means), "worst", first=3, step=2, log=lambda _: None)

    record: dict[tuple[tuple[int, ...], int], float] = {}  # a journal of finished trainings
    objective = Objective(means)

    def journaled(group: list[Finalist], new_seeds: list[int]) -> list[list[float]]:
        rows = objective(group, new_seeds)
        for f, row in zip(group, rows):
            for s, a in zip(new_seeds, row):
                record[f.indices, s] = a
        if len(objective.calls) == 2:
            raise RuntimeError("worker crashed")
        return rows

    with pytest.raises(RuntimeError):
        race(finalists(means), SEEDS, journaled, "worst", first=3, step=2, log=lambda _: None)

    def resumed(group: list[Finalist], new_seeds: list[int]) -> list[list[float]]:
        return [[record[f.indices, s] if (f.indices, s) in record else objective.auc(f.indices, s)
                 for s in new_seeds] for f in group]

    again = race(finalists(means), SEEDS, resumed, "worst", first=3, step=2, log=lambda _: None)
    assert [(f.indices, f.aucs, f.dropped_at) for f in again] == \
        [(f.indices, f.aucs, f.dropped_at) for f in uninterrupted]


def test_race_drops_a_failed_training_at_once():
    means = CASES["best"]
    objective = Objective(means, fail={((7, 2), SEEDS[1])})
    result = race(finalists(means), SEEDS, objective, "best", first=3, step=2, log=lambda _: None)
    failed = next(f for f in result if f.indices == (7, 2))
    assert failed.dropped_at == 3 and failed.seeds == 3
    assert all((7, 2) not in who for who, _ in objective.calls[1:])
    assert math.isfinite(failed.mean)  # the mean of its two successful trainings


def test_race_stops_at_keep():
    # A clear winner: once the other two are dropped, one survivor <= keep ends the race before max seeds.
    means = {(1,): 0.9, (2,): 0.7, (3,): 0.6}
    objective = Objective(means)
    result = race(finalists(means), SEEDS, objective, "best", first=3, step=2, log=lambda _: None)
    assert [f.indices for f in result] == [(1,), (2,), (3,)]
    assert result[0].dropped_at is None and result[0].seeds < len(SEEDS)
    assert all(f.dropped_at == f.seeds for f in result[1:])


def test_race_with_a_single_finalist_and_bad_arguments():
    means = {(4,): 0.8}
    objective = Objective(means)
    only = race(finalists(means), SEEDS, objective, "best", first=3, step=2, log=lambda _: None)
    assert only[0].seeds == 3 and len(objective.calls) == 1  # one survivor <= keep after round 1
    with pytest.raises(ValueError):
        race(finalists(means), SEEDS, objective, "middle", first=3, step=2)
    with pytest.raises(ValueError):
        race(finalists(means), SEEDS, objective, "best", first=0, step=2)
    with pytest.raises(ValueError):
        race(finalists(means), [], objective, "best", first=3, step=2)
    used = Finalist(indices=(4,), search_fitness=0.8, aucs=[0.7])
    with pytest.raises(ValueError):
        race([used], SEEDS, objective, "best", first=3, step=2)


def test_fixed_scores_everyone_on_all_seeds_in_order():
    means = CASES["worst"]
    objective = Objective(means)
    result = fixed(finalists(means), SEEDS[:5], objective, "worst")
    assert [f.indices for f in result] == list(means)  # hall of fame order kept
    assert objective.trainings == len(means) * 5
    for f in result:
        assert f.dropped_at is None
        assert f.aucs == [objective.auc(f.indices, s) for s in SEEDS[:5]]


def test_ranked_order_and_ties():
    # exactly representable values, so the three survivors tie exactly at 0.5
    fs = [Finalist((1,), 0.0, [0.25, 0.75]), Finalist((2,), 0.0, [0.875], dropped_at=1),
          Finalist((3,), 0.0, [0.5]), Finalist((4,), 0.0, [0.375, 0.625]), Finalist((5,), 0.0, [0.125], dropped_at=1),
          Finalist((6,), 0.0, [math.nan], dropped_at=1)]
    # means: 0.5, 0.875*, 0.5, 0.5, 0.125*, nan*  (* dropped)
    assert [f.indices[0] for f in ranked(fs, "best")] == [1, 3, 4, 2, 5, 6]
    assert [f.indices[0] for f in ranked(fs, "worst")] == [1, 3, 4, 5, 2, 6]
    assert math.isnan(fs[5].mean) and fs[0].seeds == 2
