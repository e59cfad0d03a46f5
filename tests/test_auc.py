"""roc_auc against the Mann-Whitney pair count worked out by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from oesearch.training.auc import roc_auc

# Normals score 0.1, 0.4, 0.35; anomalies score 0.8, 0.4, 0.9.
# Pairs (anomaly a, normal n), 3 x 3 = 9, counting 1 for a > n and 1/2 for a tie:
#   a=0.8:  > 0.1, > 0.4, > 0.35              -> 3
#   a=0.4:  > 0.1, tie 0.4, > 0.35            -> 2.5
#   a=0.9:  > 0.1, > 0.4, > 0.35              -> 3
# AUC = (3 + 2.5 + 3) / 9 = 8.5 / 9 = 17/18.
SCORES = np.array([0.1, 0.8, 0.4, 0.35, 0.4, 0.9])
LABELS = np.array([False, True, False, False, True, True])


def pair_count_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The Mann-Whitney statistic by brute force (independent of scikit-learn)."""
    pos = scores[labels]
    neg = scores[~labels]
    total = sum(1.0 if a > n else 0.5 if a == n else 0.0 for a, n in itertools.product(pos, neg))
    return total / (len(pos) * len(neg))


def test_hand_worked_example_with_tie() -> None:
    assert roc_auc(LABELS, SCORES) == pytest.approx(17 / 18, abs=1e-12)


def test_inverted_scores_give_one_minus_auc() -> None:
    # Negating scores swaps > and <; ties stay ties: 1 - 17/18 = 1/18.
    assert roc_auc(LABELS, -SCORES) == pytest.approx(1 / 18, abs=1e-12)


def test_perfect_and_reversed_and_all_tied() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.0, 1.0, 2.0, 3.0])) == 1.0
    assert roc_auc(labels, np.array([3.0, 2.0, 1.0, 0.0])) == 0.0
    assert roc_auc(labels, np.full(4, 7.0)) == 0.5  # every pair ties


def test_matches_pair_count_on_random_data_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.random(40) < 0.3
        labels[:2] = [True, False]
        scores = rng.integers(0, 6, size=40).astype(float)  # few distinct values: many ties
        assert roc_auc(labels, scores) == pytest.approx(pair_count_auc(labels, scores), abs=1e-12)


def test_accepts_int_labels_and_lists() -> None:
    assert roc_auc([0, 1, 0, 0, 1, 1], SCORES.tolist()) == pytest.approx(17 / 18)


def test_errors() -> None:
    with pytest.raises(ValueError, match="both normal and anomalous"):
        roc_auc(np.zeros(4, dtype=bool), np.arange(4.0))
    with pytest.raises(ValueError, match="both normal and anomalous"):
        roc_auc(np.ones(4, dtype=bool), np.arange(4.0))
    with pytest.raises(ValueError, match="NaN or infinity"):
        roc_auc(LABELS, np.array([0.1, np.nan, 0.4, 0.35, 0.4, 0.9]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        roc_auc(LABELS, np.array([0.1, np.inf, 0.4, 0.35, 0.4, 0.9]))
    with pytest.raises(ValueError, match="5 labels but 6 scores"):
        roc_auc(LABELS[:5], SCORES)
