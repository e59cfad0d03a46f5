"""Objectives (loss and score hooks) and the one trainer they share."""

from oesearch.training.metrics import roc_auc
from oesearch.training.objectives import BCE, HSC, Objective, make_objective
from oesearch.training.trainer import (
    NonFiniteLossError,
    PreparedTask,
    TrainResult,
    TrainSettings,
    train_and_evaluate,
)

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
