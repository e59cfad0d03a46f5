"""CLIP zero-shot and BCE-CL as training methods of the one trainer (paper Section 3.3, Appendix G.2).

:class:`ClipObjective` is an objective like HSC or BCE (its loss is BCE on the
Eq. 4 logit, its score that logit's sigmoid) with one more hook,
``fit_and_score``, through which :func:`~oesearch.training.trainer.train_and_evaluate`
hands it the whole training: CLIP brings its own network, inputs (RGB at its
image size, its mean and std) and optimiser (SGD with Nesterov momentum), so it
shares the task, the seed, the frequency filter, the augmentation, the
precision and the result with the other methods, not the LeNet loop.

- ``clip_zero_shot``: no training; the test set is scored by the pre-trained
  model.  OE images and the seed are ignored (a baseline, like DSVDD).
- ``bce_cl``: a copy of the pre-trained model is fine-tuned on balanced batches
  of normal and OE images (:func:`~oesearch.models.clip.fine_tune_bce_cl`).

The open_clip model is loaded once per process (:func:`cached_clip`) and never
changed: fine-tuning works on a deep copy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from oesearch.config import ClipConfig, field_default
from oesearch.methods import CLIP_METHODS, method
from oesearch.training.augment import frequency_filter
from oesearch.training.auc import roc_auc
from oesearch.training.execution import forward_mode
from oesearch.training.trainer import PreparedTask, anomaly_scores, to_pixels
from oesearch.training.types import NonFiniteLossError, TrainResult, TrainSettings

__all__ = ["ClipSpec", "ClipObjective", "cached_clip", "check_clip", "prompt_class_name"]


SCORE_CHUNK = 256  # test images per forward pass at CLIP's resolution (ViT-L/14 at 224px: a few GiB)


@dataclass(frozen=True)
class ClipSpec:
    """The open_clip model and the BCE-CL schedule (``train.clip``); Appendix G.2's values by default."""

    # train.clip's fields and defaults (oesearch.config.ClipConfig says what each does)
    model: str = field_default(ClipConfig, "model")
    weights: str | None = field_default(ClipConfig, "weights")
    epochs: int = field_default(ClipConfig, "epochs")
    lr: float = field_default(ClipConfig, "lr")
    milestones: tuple[int, ...] = field_default(ClipConfig, "milestones")
    batch_size: int = field_default(ClipConfig, "batch_size")
    momentum: float = field_default(ClipConfig, "momentum")


_MODELS: dict[tuple[str, str, str], tuple[nn.Module, Any]] = {}


def cached_clip(name: str, weights: str | Path | None, device: torch.device | str) -> tuple[nn.Module, Any]:
    """open_clip model ``name`` from the local file ``weights`` on ``device``, and its tokenizer, loaded once per process.

    The cached model is shared: callers that train must copy it.
    """
    from oesearch.models.clip import check_clip_weights, load_clip

    path = check_clip_weights(name, weights)
    key = (name, str(path.resolve()), str(torch.device(device)))
    if key not in _MODELS:
        model, tokenizer = load_clip(name, path, device)
        _MODELS[key] = (model.eval(), tokenizer)
    return _MODELS[key]


def check_clip(name: str, weights: str | Path | None) -> None:
    """Fail early, in the driver: open_clip missing, an unknown architecture, or no weights file (FileNotFoundError)."""
    from oesearch.models.clip import _open_clip, check_clip_weights

    check_clip_weights(name, weights)
    known = _open_clip().list_models()
    if name not in known:
        close = [m for m in known if name.lower().split("-")[0] in m.lower()][:12]
        raise ValueError(f"train.clip.model {name!r} is not an open_clip architecture; e.g. {close or known[:12]} "
                         "(open_clip.list_models() lists them all)")


def prompt_class_name(class_name: str) -> str:
    """A dataset's class name as words for the prompt: ``aquatic_mammals`` -> ``aquatic mammals``."""
    return class_name.replace("_", " ").strip()


@dataclass(frozen=True)
class ClipObjective:
    """``clip_zero_shot`` or ``bce_cl`` for one normal class; the trainer delegates to :meth:`fit_and_score`."""

    name: str
    spec: ClipSpec
    normal_class: str  # the class name in the prompt "a photo of a {normal_class}"
    head: bool = True  # one logit, as BCE

    def __post_init__(self) -> None:
        if self.name not in CLIP_METHODS:
            raise ValueError(f"unknown CLIP method {self.name!r}; choose from {list(CLIP_METHODS)}")

    @property
    def uses_oe(self) -> bool:
        return method(self.name).uses_oe

    def loss(self, out: torch.Tensor, is_outlier: torch.Tensor) -> torch.Tensor:
        """BCE on the Eq. 4 logit: minimises the score of normal images, maximises that of OE."""
        return F.binary_cross_entropy_with_logits(out, is_outlier.to(out.dtype), reduction="none")

    def score(self, out: torch.Tensor) -> torch.Tensor:
        """Eq. 4: the softmax share of "a photo of something" at scale 100."""
        return torch.sigmoid(out)

    def fit_and_score(self, task: PreparedTask, oe_images: np.ndarray, settings: TrainSettings, seed: int
                      ) -> TrainResult:
        """Zero-shot: score the test set; BCE-CL: fine-tune a copy of the model first (batches from ``seed``)."""
        from oesearch.models.clip import ClipDetector, clip_transform, fine_tune_bce_cl

        device = task.device
        clip, tokenizer = cached_clip(self.spec.model, self.spec.weights, device)
        to_clip = clip_transform(clip, device)
        filt = task.filter

        def pixels(px: torch.Tensor) -> torch.Tensor:  # uint8 -> [0, 1], filtered at the data's own size
            x = px.float().div_(255.0)
            return frequency_filter(x, *filt) if filt else x

        forward = forward_mode(settings.precision, device)
        losses: list[float] = []
        if self.name == "bce_cl":
            detector = ClipDetector(copy.deepcopy(clip), tokenizer, self.normal_class)
            augment = settings.augment

            def transform(px: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
                x = pixels(px)
                return to_clip(augment(x, gen) if augment.active else x)

            s = self.spec
            try:
                losses = fine_tune_bce_cl(detector, task.train, to_pixels(oe_images, device), seed, s.epochs, s.lr,
                                          s.milestones, s.batch_size, s.momentum, transform, forward)
            except FloatingPointError as err:
                raise NonFiniteLossError(str(err)) from None
        else:
            detector = ClipDetector(clip, tokenizer, self.normal_class)
        with forward:
            scores = anomaly_scores(detector, self, task.test, chunk=SCORE_CHUNK, load=lambda px: to_clip(pixels(px)))
        if not np.all(np.isfinite(scores)):
            raise NonFiniteLossError("the CLIP detector produced non-finite anomaly scores")
        return TrainResult(auc=roc_auc(task.test_anomalous, scores), epoch_losses=losses)
