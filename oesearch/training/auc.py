"""Detection metrics."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["roc_auc"]


def roc_auc(anomalous: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve with anomalies as the positive class (scikit-learn).

    A tie between a normal and an anomalous score counts one half, as in the
    Mann-Whitney statistic.
    """
    anomalous = np.asarray(anomalous, dtype=bool)
    scores = np.asarray(scores, dtype=float)
    if anomalous.shape != scores.shape:
        raise ValueError(f"{anomalous.shape[0]} labels but {scores.shape[0]} scores")
    if anomalous.all() or not anomalous.any():
        raise ValueError("an AUC needs both normal and anomalous samples")
    if not np.isfinite(scores).all():
        raise ValueError("anomaly scores contain NaN or infinity")
    return float(roc_auc_score(anomalous, scores))
