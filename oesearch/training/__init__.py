"""Objectives (loss and score hooks) and the one trainer they share."""

from oesearch.training.auc import roc_auc
from oesearch.training.objectives import BCE, HSC, make_objective
from oesearch.training.trainer import PreparedTask, train_and_evaluate
from oesearch.training.types import NonFiniteLossError, Objective, TrainResult, TrainSettings

__all__ = [
    "BCE",
    "HSC",
    "Objective",
    "make_objective",
    "roc_auc",
    "NonFiniteLossError",
    "PreparedTask",
    "TrainResult",
    "TrainSettings",
    "train_and_evaluate",
]
