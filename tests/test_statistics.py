"""oesearch.search.statistics against hand-worked numbers and independent scipy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from oesearch.search.statistics import (RELIABLE, PanelComparison, Signal, beats_share, compare_to_panel, mean_ci,
                                        seeds_for, spearman_brown, variance_components)

# 3 images x 2 seeds, worked by hand:
#   row means 2, 5, 9; grand mean 16/3; squared deviations 100/9, 1/9, 121/9 -> sum 222/9
#   var(row means, ddof=1) = 111/9 = 37/3;  MSB = k * 37/3 = 74/3
#   within-row variances (ddof=1): (1-3)^2/2 = 2, (4-6)^2/2 = 2, (7-11)^2/2 = 8 -> MSW = 12/3 = 4
#   image variance = (74/3 - 4) / 2 = 31/3;  seed variance = 4
#   ICC = (31/3) / (31/3 + 4) = 31/43
#   Spearman-Brown for 3 seeds: 3*(31/43) / (1 + 2*(31/43)) = 93/105 = 31/35
HAND = np.array([[1.0, 3.0], [4.0, 6.0], [7.0, 11.0]])


def test_variance_components_hand_worked():
    s = variance_components(HAND, repetitions=3)
    assert s.icc == pytest.approx(31 / 43)
    assert s.seed_sd == pytest.approx(2.0)
    assert s.image_sd == pytest.approx(math.sqrt(31 / 3))
    assert s.reliability == pytest.approx(31 / 35)
    assert (s.images, s.seeds, s.repetitions) == (3, 2, 3)


def test_variance_components_matches_f_ratio_icc():
    rng = np.random.default_rng(0)
    n, k = 20, 5
    matrix = 0.7 + rng.normal(0, 0.03, size=(n, 1)) + rng.normal(0, 0.02, size=(n, k))
    # Independent: scipy's one-way ANOVA with each image as a group gives F = MSB / MSW, and ICC(1) = (F-1)/(F+k-1).
    f = stats.f_oneway(*matrix).statistic
    assert variance_components(matrix, repetitions=2).icc == pytest.approx((f - 1) / (f + k - 1))


def test_variance_components_no_image_effect_clips_to_zero():
    # Identical row means, all variance within rows: MSB = 0 < MSW -> image variance 0, ICC 0.
    s = variance_components(np.array([[1.0, 3.0], [3.0, 1.0], [2.0, 2.0]]), repetitions=4)
    assert s.icc == 0.0 and s.image_sd == 0.0 and s.reliability == 0.0
    assert s.seed_sd == pytest.approx(math.sqrt(4 / 3))  # within variances 2, 2, 0


def test_variance_components_constant_matrix():
    s = variance_components(np.full((3, 3), 0.5), repetitions=2)
    assert (s.icc, s.seed_sd, s.image_sd, s.reliability) == (0.0, 0.0, 0.0, 0.0)


def test_variance_components_drops_nan_rows():
    with_nan = np.vstack([HAND[:1], [[np.nan, 0.2]], HAND[1:], [[0.9, np.nan]]])
    s = variance_components(with_nan, repetitions=3)
    assert s.icc == pytest.approx(31 / 43)
    assert s.images == 3 and s.seeds == 2


@pytest.mark.parametrize("matrix", [np.array([[0.5, 0.6]]), np.array([[0.5], [0.6], [0.7]]),
                                    np.array([[0.5, 0.6], [np.nan, 0.7]]), np.array([0.5, 0.6, 0.7])])
def test_variance_components_needs_two_rows_and_columns(matrix):
    with pytest.raises(ValueError, match="at least 2 images|2-D"):
        variance_components(matrix, repetitions=2)


def test_spearman_brown_and_seeds_for():
    assert spearman_brown(0.1, 2) == pytest.approx(0.2 / 1.1)
    assert spearman_brown(0.5, 1) == pytest.approx(0.5)
    assert spearman_brown(0.0, 10) == 0.0
    # k*0.1/(1+0.1(k-1)) >= 0.5  <=>  0.05 k >= 0.45  <=>  k >= 9
    assert seeds_for(0.1) == 9
    # k*0.2/(1+0.2(k-1)) >= 0.5  <=>  0.1 k >= 0.4  <=>  k >= 4
    assert seeds_for(0.2) == 4
    assert seeds_for(0.21) == 4  # 3*0.21/1.42 = 0.444 < 0.5 <= 4*0.21/1.63 = 0.515
    # k*0.25/(1+0.25(k-1)) >= 0.8  <=>  0.05 k >= 0.6  <=>  k >= 12
    assert seeds_for(0.25, target=0.8) == 12
    assert seeds_for(0.6) == 1 and seeds_for(1.0) == 1
    assert seeds_for(0.0) is None and seeds_for(-0.1) is None and seeds_for(float("nan")) is None


def _signal(icc: float, repetitions: int) -> Signal:
    return Signal(icc=icc, seed_sd=0.02, image_sd=0.01, reliability=spearman_brown(icc, repetitions), images=30,
                  seeds=4, repetitions=repetitions)


def test_advice_below_reliable_names_the_seeds():
    advice = _signal(0.1, 2).advice()
    assert advice is not None
    assert "2-seed fitness" in advice
    assert "reliability 0.18" in advice  # 0.2 / 1.1
    assert "ICC 0.10" in advice and "10%" in advice
    assert "search.repetitions=9 reaches 0.5" in advice
    assert "oesearch signal" in advice


def test_advice_none_when_reliable_and_zero_icc_says_seeds_do_not_help():
    assert _signal(0.5, 2).advice() is None  # reliability 2/3
    assert _signal(1 / 3, 2).reliability == pytest.approx(RELIABLE)
    assert _signal(1 / 3, 2).advice() is None  # exactly 0.5 is reliable
    advice = _signal(0.0, 3).advice()
    assert advice is not None and "no number of seeds helps" in advice.lower()
    assert "search.repetitions=" not in advice


def test_signal_as_dict():
    s = Signal(icc=0.123456, seed_sd=0.0212345, image_sd=float("nan"), reliability=0.5, images=12, seeds=3,
               repetitions=2)
    assert s.as_dict() == {"icc": 0.1235, "seed_sd": 0.0212, "image_sd": None, "reliability": 0.5, "images": 12,
                           "seeds": 3}


def test_mean_ci_against_scipy():
    x = np.array([0.61, 0.65, 0.58, 0.70, 0.66])
    for level in (0.95, 0.8):
        lo, hi = stats.t.interval(level, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        mean, got_lo, got_hi = mean_ci(x, level)
        assert mean == pytest.approx(0.64)
        assert (got_lo, got_hi) == (pytest.approx(lo), pytest.approx(hi))


def test_mean_ci_degenerate():
    mean, lo, hi = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in mean_ci([]))
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_beats_share_with_ties():
    others = [0.1, 0.2, 0.3, 0.4]
    # worst (lower better): 0.2 beats 0.3 and 0.4, ties 0.2 -> (2 + 0.5) / 4
    assert beats_share(0.2, others, "worst") == 0.625
    # best (higher better): 0.2 beats 0.1, ties 0.2 -> (1 + 0.5) / 4
    assert beats_share(0.2, others, "best") == 0.375
    assert beats_share(0.05, others, "worst") == 1.0 and beats_share(0.05, others, "best") == 0.0
    assert beats_share(0.5, others, "best") == 1.0
    assert beats_share(0.3, [0.3, 0.3], "best") == 0.5
    with pytest.raises(ValueError):
        beats_share(0.3, others, "middle")


PANEL = np.array([[0.70, 0.74, 0.69, 0.72],
                  [0.66, 0.71, 0.65, 0.69],
                  [np.nan, 0.70, 0.70, 0.70],  # a failed training: the row is dropped
                  [0.68, 0.70, 0.66, 0.71]])


def test_compare_to_panel_paired_difference_against_scipy():
    cand = np.array([0.60, 0.66, 0.59, 0.62])
    used = PANEL[[0, 1, 3]]
    seed_means = used.mean(axis=0)  # 0.68, 0.7166.., 0.6666.., 0.7066..
    ref = stats.ttest_rel(cand, seed_means)
    lo, hi = ref.confidence_interval(0.95)
    c = compare_to_panel(cand, PANEL, "worst")
    assert isinstance(c, PanelComparison)
    # by hand: d = (0.60-0.68, 0.66-0.71667, 0.59-0.66667, 0.62-0.70667) -> mean = 2.47/4 - 2.77/4 = -0.075
    assert c.difference == pytest.approx(-0.075)
    assert c.ci95 == (pytest.approx(lo), pytest.approx(hi))
    assert hi < 0
    assert c.distinguishable is True
    assert (c.seeds, c.images) == (4, 3)
    # candidate mean 0.6175 is below every panel row mean (0.7125, 0.6775, 0.6875)
    assert c.percentile == 1.0
    best = compare_to_panel(cand, PANEL, "best")
    assert best.percentile == 0.0 and best.distinguishable is False
    assert best.difference == pytest.approx(-0.075) and best.ci95 == c.ci95


def test_compare_to_panel_best_direction_and_levels():
    cand = np.array([0.80, 0.79, 0.83, 0.81])
    used = PANEL[[0, 1, 3]]
    ref = stats.ttest_rel(cand, used.mean(axis=0))
    c = compare_to_panel(cand, PANEL, "best", level=0.9)
    assert c.ci95 == tuple(pytest.approx(v) for v in ref.confidence_interval(0.9))
    assert c.distinguishable is True and c.percentile == 1.0
    assert compare_to_panel(cand, PANEL, "worst").distinguishable is False


def test_compare_to_panel_not_distinguishable_when_ci_spans_zero_or_one_seed():
    panel = np.array([[0.70, 0.72, 0.69], [0.68, 0.70, 0.71]])
    cand = panel.mean(axis=0) + np.array([0.01, -0.01, 0.005])  # d = 0.01, -0.01, 0.005: the CI spans 0
    for mode in ("best", "worst"):
        c = compare_to_panel(cand, panel, mode)
        assert c.ci95[0] < 0 < c.ci95[1] and not c.distinguishable
    one = compare_to_panel(np.array([0.5]), np.array([[0.7], [0.72]]), "worst")
    assert math.isnan(one.ci95[0]) and math.isnan(one.ci95[1]) and not one.distinguishable
    assert one.difference == pytest.approx(-0.21) and one.seeds == 1


def test_compare_to_panel_shape_errors():
    with pytest.raises(ValueError):
        compare_to_panel(np.array([0.5, 0.6]), np.array([[0.5, 0.6, 0.7]]), "best")
    with pytest.raises(ValueError):
        compare_to_panel(np.array([0.5, 0.6]), np.array([[np.nan, 0.6]]), "best")
