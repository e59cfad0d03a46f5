"""How much of a search's fitness is the OE image and how much is training-seed noise.

A fitness is the mean test AUC of ``search.repetitions`` trainings of the detector with one outlier-exposure
image, each with its own seed. Whether a search can rank images at all depends on how much of a single
training's AUC variance is due to the image (signal) rather than the seed (noise). This module estimates that
split from an images x seeds matrix of AUCs with a one-way random-effects ANOVA, turns it into the reliability
of a k-seed mean (Spearman-Brown), and compares one candidate against a panel of other images on shared seeds.

Everything here is pure numpy/scipy and a pure function of its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["RELIABLE", "PanelComparison", "Signal", "beats_share", "compare_to_panel", "mean_ci", "seeds_for",
           "spearman_brown", "variance_components"]

#: The reliability below which a search mostly ranks seed luck (and :meth:`Signal.advice` warns).
RELIABLE = 0.5

_MODES = ("best", "worst")


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'best' (higher AUC is better) or 'worst' (lower is better), not {mode!r}")


def _rounded(value: float) -> float | None:
    """``value`` rounded to 4 decimals, or None for NaN (so that it writes as JSON null)."""
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


@dataclass(frozen=True)
class Signal:
    """The variance split of single-training AUCs into image (signal) and seed (noise).

    Attributes:
        icc: intra-class correlation ICC(1): the share of a single training's AUC variance explained by the image.
        seed_sd: standard deviation of the AUC between seeds for one image (the noise).
        image_sd: standard deviation of the true (infinitely-many-seed) AUC between images (the signal).
        reliability: the reliability of a ``repetitions``-seed mean fitness (Spearman-Brown of ``icc``).
        images: number of images (matrix rows) the estimate used.
        seeds: number of seeds per image (matrix columns) the estimate used.
        repetitions: the number of seeds a search fitness averages, which ``reliability`` refers to.
    """

    icc: float
    seed_sd: float
    image_sd: float
    reliability: float
    images: int
    seeds: int
    repetitions: int

    def as_dict(self) -> dict:
        """The estimate as JSON-ready values: floats rounded to 4 decimals, NaN as None.

        Keys: ``icc``, ``seed_sd``, ``image_sd``, ``reliability``, ``images``, ``seeds``.
        """
        return {
            "icc": _rounded(self.icc),
            "seed_sd": _rounded(self.seed_sd),
            "image_sd": _rounded(self.image_sd),
            "reliability": _rounded(self.reliability),
            "images": int(self.images),
            "seeds": int(self.seeds),
        }

    def advice(self) -> str | None:
        """A warning for the user when the search fitness is unreliable, else None.

        None when ``reliability >= RELIABLE`` (or when nothing was estimated, NaN). Otherwise one plain sentence
        saying what the reliability means and what would raise it: more seeds per fitness (how many reach
        :data:`RELIABLE`, from :func:`seeds_for`) or another training schedule or class.
        """
        if math.isnan(self.reliability) or self.reliability >= RELIABLE:
            return None
        icc = max(0.0, float(self.icc))
        head = (f"A {self.repetitions}-seed fitness has reliability {self.reliability:.2f} (ICC {icc:.2f}: the "
                f"image explains {icc * 100:.0f}% of a training's AUC variance, the seed the rest), so the search "
                f"mostly ranks seed luck.")
        needed = seeds_for(icc)
        if needed is None:
            return (f"{head} No number of seeds helps, since the image explains none of the variance; try another "
                    f"training schedule or class (check with `oesearch signal`).")
        return (f"{head} More seeds raise it (search.repetitions={needed} reaches {RELIABLE:g}), and so may another "
                f"training schedule or class (check with `oesearch signal`).")


def spearman_brown(icc: float, k: int) -> float:
    """The reliability of the mean of ``k`` trainings whose single-training reliability is ``icc``.

    ``k * icc / (1 + (k - 1) * icc)``: the expected correlation between two independent ``k``-seed means of
    the same images.
    """
    icc = float(icc)
    denominator = 1.0 + (k - 1) * icc
    if denominator == 0.0:
        return math.nan
    return k * icc / denominator


def seeds_for(icc: float, target: float = RELIABLE) -> int | None:
    """The smallest number of seeds ``k`` with ``spearman_brown(icc, k) >= target``.

    None when ``icc <= 0`` (or NaN): no number of seeds helps then. ``target`` must lie in (0, 1].
    """
    icc, target = float(icc), float(target)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target reliability must lie in (0, 1], not {target}")
    if math.isnan(icc) or icc <= 0.0:
        return None
    if icc >= 1.0:
        return 1
    if target >= 1.0:
        return None  # only a noise-free training reaches a reliability of 1
    # Solve k * icc / (1 + (k-1) icc) >= t  <=>  k >= t (1 - icc) / (icc (1 - t)); guard the rounding both ways.
    k = max(1, math.ceil(target * (1.0 - icc) / (icc * (1.0 - target)) - 1e-9))
    while k > 1 and spearman_brown(icc, k - 1) >= target - 1e-12:
        k -= 1
    while spearman_brown(icc, k) < target - 1e-12:
        k += 1
    return k


def variance_components(matrix: np.ndarray, repetitions: int) -> Signal:
    """Split single-training AUC variance into image and seed parts (one-way random-effects ANOVA).

    Args:
        matrix: images x seeds test AUCs, one training each; NaN marks a failed training. Rows (images) with
            any NaN are dropped.
        repetitions: the number of seeds a search fitness averages; ``reliability`` is for that many.

    With ``n`` images and ``k`` seeds: ``MSB = k * var(row means, ddof=1)``, ``MSW = mean of the rows'
    variances (ddof=1)``; the image variance is ``max(0, (MSB - MSW) / k)``, the seed variance ``MSW``, and
    ``ICC = image / (image + seed)`` (0 when both are 0).

    Raises:
        ValueError: when the matrix is not 2-D, or fewer than 2 complete rows or 2 columns remain.
    """
    values = np.asarray(matrix, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"variance_components needs a 2-D images x seeds matrix, got shape {values.shape}")
    complete = values[~np.isnan(values).any(axis=1)]
    n, k = complete.shape
    if n < 2 or k < 2:
        raise ValueError(f"variance_components needs at least 2 images (rows without a failed training) and 2 "
                         f"seeds (columns); got {n} complete of {values.shape[0]} rows and {k} columns")
    msb = k * float(np.var(complete.mean(axis=1), ddof=1))
    msw = float(np.mean(np.var(complete, axis=1, ddof=1)))
    image_var = max(0.0, (msb - msw) / k)
    seed_var = msw
    total = image_var + seed_var
    icc = image_var / total if total > 0 else 0.0
    return Signal(icc=icc, seed_sd=math.sqrt(seed_var), image_sd=math.sqrt(image_var),
                  reliability=spearman_brown(icc, repetitions), images=n, seeds=k, repetitions=repetitions)


def mean_ci(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """The mean of ``values`` and its two-sided Student-t confidence interval at ``level``.

    Returns ``(mean, lo, hi)``. The bounds are NaN with fewer than 2 values (the mean is NaN with none); a
    sample with zero standard deviation gives ``lo == hi == mean``. NaN values are not dropped: they
    propagate, so filter failed trainings first.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), not {level}")
    x = np.asarray(values, dtype=float).ravel()
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(x))
    if n < 2:
        return mean, math.nan, math.nan
    sd = float(np.std(x, ddof=1))
    if sd == 0.0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def beats_share(value: float, others: Sequence[float] | np.ndarray, mode: str) -> float:
    """The share of ``others`` that ``value`` beats in the run's direction, ties counting half.

    ``mode="worst"``: lower is better (more extreme); ``mode="best"``: higher is. 1.0 means ``value`` is more
    extreme than all of ``others``, 0.0 less than all. NaN entries of ``others`` are ignored; NaN when
    ``value`` is NaN or no others remain.
    """
    _check_mode(mode)
    rest = np.asarray(others, dtype=float).ravel()
    rest = rest[~np.isnan(rest)]
    value = float(value)
    if math.isnan(value) or rest.size == 0:
        return math.nan
    wins = np.sum(rest > value) if mode == "worst" else np.sum(rest < value)
    ties = np.sum(rest == value)
    return float((wins + 0.5 * ties) / rest.size)


@dataclass(frozen=True)
class PanelComparison:
    """One candidate image against a panel of other images trained on the same seeds.

    Attributes:
        percentile: share of the panel images the candidate's mean AUC beats in the run's direction (ties half).
        difference: mean over seeds of the paired difference candidate AUC - panel mean AUC on that seed.
        ci95: Student-t confidence interval of ``difference`` (at the requested level; NaN with < 2 seeds).
        distinguishable: the interval excludes 0 and lies on the run's side (below 0 for worst, above for best).
        seeds: number of shared seeds.
        images: number of panel images used (rows without a failed training).
    """

    percentile: float
    difference: float
    ci95: tuple[float, float]
    distinguishable: bool
    seeds: int
    images: int


def compare_to_panel(candidate: np.ndarray, panel: np.ndarray, mode: str, level: float = 0.95) -> PanelComparison:
    """Whether a candidate is more extreme than typical images, beyond seed noise.

    Args:
        candidate: the candidate's AUCs on ``k`` seeds (1-D).
        panel: images x ``k`` AUCs of other images on the SAME ``k`` seeds, column by column; rows with any
            NaN are dropped.
        mode: ``"best"`` (higher AUC is the goal) or ``"worst"`` (lower).
        level: confidence level of the interval.

    The percentile ranks the candidate's mean among the panel rows' means; the paired difference per seed
    ``d_s = candidate_s - mean(panel[:, s])`` removes the seed's shared effect, and its t interval decides
    whether the candidate is distinguishable from the panel.

    Raises:
        ValueError: on mismatched shapes or when no complete panel row remains.
    """
    _check_mode(mode)
    cand = np.asarray(candidate, dtype=float)
    rows = np.asarray(panel, dtype=float)
    if cand.ndim != 1:
        raise ValueError(f"candidate must be 1-D (one AUC per seed), got shape {cand.shape}")
    if rows.ndim != 2 or rows.shape[1] != cand.size:
        raise ValueError(f"panel must be images x {cand.size} seeds (the candidate's seeds), got shape {rows.shape}")
    rows = rows[~np.isnan(rows).any(axis=1)]
    if rows.shape[0] == 0:
        raise ValueError("compare_to_panel needs at least one panel image without a failed training")
    k = cand.size
    percentile = beats_share(float(np.mean(cand)) if k else math.nan, rows.mean(axis=1), mode)
    d = cand - rows.mean(axis=0)
    difference, lo, hi = mean_ci(d, level)
    if mode == "worst":
        distinguishable = bool(hi < 0.0)  # False for NaN
    else:
        distinguishable = bool(lo > 0.0)
    return PanelComparison(percentile=percentile, difference=difference, ci95=(lo, hi),
                           distinguishable=distinguishable, seeds=k, images=int(rows.shape[0]))
