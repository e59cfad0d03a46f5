"""Objectives as two small hooks on one trainer: a per-sample loss and a score.

Paper notation labels normal samples y=1 and outliers y=0; to keep that
inversion out of the code, hooks take ``is_outlier`` (True for OE samples and
anomalies) and return an *anomaly* score: higher means more anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from oesearch.training.clip import ClipSpec

from oesearch import methods
from oesearch.config import TrainConfig, field_default
from oesearch.training.types import Objective

__all__ = ["Objective", "HSC", "BCE", "Focal", "DSAD", "DSVDD", "RADIAL_FUNCTIONS", "make_objective",
           "initial_centre", "packable"]

# h(z) for HSC (paper Section 3.2 and Appendix E, Table 6).
RADIAL_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pseudo_huber": lambda z: torch.sqrt(z.pow(2).sum(1) + 1) - 1,
    "l1": lambda z: z.abs().sum(1),
    "l2": lambda z: z.norm(dim=1),
    "l2_squared": lambda z: z.pow(2).sum(1),
}


@dataclass(frozen=True)
class HSC:
    """Hypersphere classifier: normal loss h(z), outlier loss -log(1 - exp(-h(z)))."""

    radial: str = "pseudo_huber"
    eps: float = 1e-9  # keeps the log finite when an outlier sits at the centre
    name: str = "hsc"
    head: bool = False

    def _h(self, z: torch.Tensor) -> torch.Tensor:
        return RADIAL_FUNCTIONS[self.radial](z)

    def loss(self, out: torch.Tensor, is_outlier: torch.Tensor) -> torch.Tensor:
        h = self._h(out)
        outlier_loss = -torch.log(-torch.expm1(-h) + self.eps)
        return torch.where(is_outlier, outlier_loss, h)

    def score(self, out: torch.Tensor) -> torch.Tensor:
        return self._h(out)


@dataclass(frozen=True)
class BCE:
    """Binary classifier on a linear head; the score is the outlier probability."""

    name: str = "bce"
    head: bool = True

    def loss(self, out: torch.Tensor, is_outlier: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out, is_outlier.to(out.dtype), reduction="none")

    def score(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


@dataclass(frozen=True)
class Focal:
    """Focal loss (Lin et al. 2017) on the BCE head; the score is the outlier probability.

    FL = -alpha_t (1 - p_t)^gamma log p_t with p_t the probability of the true class and
    alpha_t = alpha for outliers (target 1), 1 - alpha for normal samples.  The paper uses
    gamma = 2 and alpha = 0.5 on its balanced batches (Appendix F); gamma = 0 is BCE times alpha.
    """

    gamma: float = 2.0
    alpha: float = 0.5
    name: str = "focal"
    head: bool = True

    def loss(self, out: torch.Tensor, is_outlier: torch.Tensor) -> torch.Tensor:
        target = is_outlier.to(out.dtype)
        ce = F.binary_cross_entropy_with_logits(out, target, reduction="none")  # -log p_t, stable
        p_t = torch.exp(-ce)
        alpha_t = torch.where(is_outlier, torch.full_like(out, self.alpha), torch.full_like(out, 1 - self.alpha))
        return alpha_t * (1 - p_t).pow(self.gamma) * ce

    def score(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


@torch.no_grad()
def initial_centre(model: torch.nn.Module, train: torch.Tensor, eps: float = 0.1, chunk: int = 2048) -> torch.Tensor:
    """c: the mean output of the untrained ``model`` on ``train``, the very tensors training sees.

    Eval mode as in Ruff et al.'s Deep SVDD code (BatchNorm uses its initial running statistics
    and nothing is updated).  Coordinates within ``eps`` of 0 move to +-eps (0 itself to +eps):
    a centre at 0 is a trivial target a network can reach by shrinking its weights.
    """
    was_training = model.training
    model.eval()
    total = sum(model(train[i : i + chunk]).double().sum(0) for i in range(0, len(train), chunk))
    model.train(was_training)
    c = (total / len(train)).to(train.dtype)
    near = c.abs() < eps
    return torch.where(near & (c < 0), -eps, torch.where(near, eps, c))


@dataclass(frozen=True)
class DSAD:
    """Deep SAD (Ruff et al. 2020), eta = 1: normal loss ||z - c||^2, OE loss 1 / (||z - c||^2 + eps)."""

    centre: torch.Tensor | None = field(default=None, compare=False, repr=False)  # set by prepare()
    eps: float = 1e-6  # Ruff et al.'s value; keeps the OE loss finite at the centre
    name: str = "dsad"
    head: bool = False

    def prepare(self, model: torch.nn.Module, train: torch.Tensor) -> "DSAD":
        return replace(self, centre=initial_centre(model, train))

    def score(self, out: torch.Tensor) -> torch.Tensor:
        if self.centre is None:
            raise RuntimeError(f"{self.name}: the centre is not set; call prepare(model, train) first")
        return (out - self.centre).pow(2).sum(1)

    def loss(self, out: torch.Tensor, is_outlier: torch.Tensor) -> torch.Tensor:
        dist = self.score(out)
        return torch.where(is_outlier, 1 / (dist + self.eps), dist)


@dataclass(frozen=True)
class DSVDD(DSAD):
    """One-class Deep SVDD (Ruff et al. 2018): ||z - c||^2 on normal data only; OE is never used."""

    name: str = "dsvdd"
    uses_oe: bool = methods.method("dsvdd").uses_oe  # False

    def loss(self, out: torch.Tensor, is_outlier: torch.Tensor) -> torch.Tensor:
        # The trainer drops the OE half (uses_oe); should outliers arrive anyway they cost nothing.
        dist = self.score(out)
        return torch.where(is_outlier, torch.zeros_like(dist), dist)


def packable(objective: Objective) -> bool:
    """Whether the packed trainer can train ``objective``: what the method registry says of its name."""
    return methods.packable(objective.name)


def make_objective(method: str, radial: str = field_default(TrainConfig, "hsc_radial"),
                   focal_gamma: float = field_default(TrainConfig, "focal_gamma"),
                   focal_alpha: float = field_default(TrainConfig, "focal_alpha"), clip: "ClipSpec | None" = None, class_name: str | None = None
                   ) -> Objective:
    """The objective called ``method`` (a name of the registry, :data:`oesearch.methods.METHODS`).

    The CLIP methods also need ``clip`` (model, weights, schedule) and the normal class's name for the prompt.
    """
    if methods.method(method).clip:  # also: a clear error for an unknown name
        from oesearch.training.clip import ClipObjective, ClipSpec, prompt_class_name

        if class_name is None:
            raise ValueError(f"method {method!r} needs the normal class's name for its prompt (class_name)")
        return ClipObjective(method, clip if clip is not None else ClipSpec(), prompt_class_name(class_name))
    if method == "hsc":
        if radial not in RADIAL_FUNCTIONS:
            raise ValueError(f"unknown HSC radial function {radial!r}; choose from {sorted(RADIAL_FUNCTIONS)}")
        return HSC(radial=radial)
    if method == "bce":
        return BCE()
    if method == "focal":
        return Focal(gamma=focal_gamma, alpha=focal_alpha)
    if method == "dsad":
        return DSAD()
    if method == "dsvdd":
        return DSVDD()
    raise ValueError(f"method {method!r} has no objective here; add it to make_objective")
