"""The training layer's types: settings, results, the objective protocol, and the divergence error.

Kept apart from the trainer so objectives, the packed trainer and CLIP can name them
without importing each other.  The defaults of :class:`TrainSettings` are the
config's (``oesearch.config.TrainConfig``): one place says what a training does
by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from oesearch.config import TF32_COMPILE_REFUSED, TrainConfig, field_default
from oesearch.models import ModelSetup
from oesearch.training.augment import Augment
from oesearch.training.execution import check_precision

__all__ = ["NonFiniteLossError", "Objective", "TrainResult", "TrainSettings"]


class NonFiniteLossError(RuntimeError):
    """Training diverged: the loss became NaN or infinite."""


class Objective(Protocol):
    """What the trainer needs to know about an objective."""

    name: str
    head: bool  # True when phi is followed by a linear layer to one logit

    def loss(self, out: torch.Tensor, is_outlier: torch.Tensor) -> torch.Tensor:
        """Per-sample loss, shape (B,)."""
        ...

    def score(self, out: torch.Tensor) -> torch.Tensor:
        """Per-sample anomaly score, shape (B,)."""
        ...


# Optional hooks, looked up with getattr so HSC and BCE stay plain:
#   prepare(model, train) -> Objective   called once on the fresh model before training (centre c);
#   uses_oe: bool = True                 False: the OE half of every batch never reaches the network;
#   fit_and_score(task, oe_images, settings, seed) -> TrainResult
#                                        the trainer hands over the whole training (CLIP, training/clip.py).


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (paper Appendix G: Adam, step milestones x0.1); the fields of ``train``.

    Built from a config by :func:`oesearch.training.settings.train_settings`; the defaults are
    ``TrainConfig``'s, so a ``TrainSettings()`` trains what the embedded default trains.
    """

    epochs: int = field_default(TrainConfig, "epochs")
    lr: float = field_default(TrainConfig, "lr")
    milestones: tuple[int, ...] = field_default(TrainConfig, "milestones")
    batch_size: int = field_default(TrainConfig, "batch_size")  # per side: B normal + B OE images per step
    weight_decay: float = field_default(TrainConfig, "weight_decay")
    augment: Augment = Augment()  # applied on the device to every batch; off by default
    precision: str = field_default(TrainConfig, "precision")  # fp32 | bf16 (autocast forward) | tf32 (CUDA)
    channels_last: bool = field_default(TrainConfig, "channels_last")  # model and batches in NHWC memory order
    compile: bool = field_default(TrainConfig, "compile")  # torch.compile the model
    model: ModelSetup | None = None  # biases, affine BatchNorm, init; None: the objective's (setup_for)
    dedup: bool = field_default(TrainConfig, "dedup")  # repeated OE rows once, weighted (oesearch.training.dedup)
    cudnn_benchmark: bool = field_default(TrainConfig, "cudnn_benchmark")  # GPU: cuDNN picks its fastest kernels

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.precision == "tf32" and self.compile:
            raise ValueError(TF32_COMPILE_REFUSED)


@dataclass
class TrainResult:
    auc: float
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    step_losses: list[float] = field(default_factory=list)  # the first ``record_steps`` steps' losses
