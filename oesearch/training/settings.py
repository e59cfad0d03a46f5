"""The config bridge: what the ``train`` and ``model`` sections mean for a worker's trainings.

:func:`worker_spec` is the one translation from config sections to the training
layer's settings; the search, the benchmark, ``evaluate`` and ``signal`` all use
it.  The defaults stay in :mod:`oesearch.config`.
"""

from __future__ import annotations

from dataclasses import dataclass

from oesearch.config import Config, ModelConfig, TrainConfig, field_default
from oesearch.methods import method
from oesearch.models import resolve_setup
from oesearch.training.augment import Augment
from oesearch.training.clip import ClipSpec
from oesearch.training.objectives import make_objective
from oesearch.training.types import Objective, TrainSettings

__all__ = ["WorkerSpec", "train_settings", "worker_spec"]


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs besides the data: how to train and score."""

    method: str
    hsc_radial: str
    settings: TrainSettings
    filter: tuple[str, int] | None = None  # frequency filter on every image, e.g. ("lpf", 14)
    focal_gamma: float = field_default(TrainConfig, "focal_gamma")
    focal_alpha: float = field_default(TrainConfig, "focal_alpha")
    clip: ClipSpec | None = None  # the CLIP methods' model, weights and BCE-CL schedule (train.clip)

    def objective(self, class_name: str | None = None) -> Objective:
        """The objective to train with; ``class_name`` is what the CLIP methods prompt with."""
        return make_objective(self.method, self.hsc_radial, self.focal_gamma, self.focal_alpha, clip=self.clip,
                              class_name=class_name)


def train_settings(train: TrainConfig, model: ModelConfig) -> TrainSettings:
    """The optimisation settings of ``train``, with the network setup ``model`` resolves to for its method."""
    return TrainSettings(epochs=train.epochs, lr=train.lr, milestones=tuple(train.milestones),
                         batch_size=train.batch_size, weight_decay=train.weight_decay,
                         augment=Augment(**train.augment.model_dump()), precision=train.precision,
                         channels_last=train.channels_last, compile=train.compile, dedup=train.dedup,
                         cudnn_benchmark=train.cudnn_benchmark,
                         model=resolve_setup(train.method, **model.model_dump()))


def worker_spec(config: Config) -> WorkerSpec:
    """How workers train and score, from the ``train`` and ``model`` sections."""
    t = config.train
    f = t.filter
    filt = None if f.kind == "none" or f.magnitude == 0 else (f.kind, f.magnitude)
    clip = ClipSpec(**t.clip.model_dump()) if method(t.method).clip else None
    return WorkerSpec(t.method, t.hsc_radial, train_settings(t, config.model), filt, t.focal_gamma, t.focal_alpha,
                      clip)
