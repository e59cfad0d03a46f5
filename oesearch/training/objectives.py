"""Objectives as two small hooks on one trainer: a per-sample loss and a score.

Paper notation labels normal samples y=1 and outliers y=0; to keep that
inversion out of the code, hooks take ``is_outlier`` (True for OE samples and
anomalies) and return an *anomaly* score: higher means more anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

__all__ = ["Objective", "HSC", "BCE", "RADIAL_FUNCTIONS", "make_objective"]

# h(z) for HSC (paper Section 3.2 and Appendix E, Table 6).
RADIAL_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pseudo_huber": lambda z: torch.sqrt(z.pow(2).sum(1) + 1) - 1,
    "l1": lambda z: z.abs().sum(1),
    "l2": lambda z: z.norm(dim=1),
    "l2_squared": lambda z: z.pow(2).sum(1),
}


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


def make_objective(method: str, radial: str = "pseudo_huber") -> Objective:
    """The objective called ``method`` ("hsc" or "bce")."""
    if method == "hsc":
        if radial not in RADIAL_FUNCTIONS:
            raise ValueError(f"unknown HSC radial function {radial!r}; choose from {sorted(RADIAL_FUNCTIONS)}")
        return HSC(radial=radial)
    if method == "bce":
        return BCE()
    raise ValueError(f"unknown method {method!r}; choose 'hsc' or 'bce'")
