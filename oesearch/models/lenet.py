"""The LeNet family used for low-resolution data (paper Appendix G.1).

Every convolution is followed by BatchNorm, leaky ReLU and 2x2 max-pooling;
the first fully connected layer by BatchNorm and leaky ReLU; the last layer
is linear.  Leaky ReLU has the reference code's slope, 0.01 (``F.leaky_relu``'s
default).

A :class:`~oesearch.models.setup.ModelSetup` says the rest:

- ``bias``: a bias on every convolution and linear layer of phi (the reference
  scripts' ``bias=True``); off for Deep SVDD/SAD, whose hypersphere would collapse;
- ``batchnorm_affine``: BatchNorm's trainable scale and shift (the reference ties
  them to ``bias``);
- ``init``: ``reference`` leaves PyTorch's default initialisation, which is what the
  reference trains (its trainer calls ``reset_parameters()`` on every module);
  ``as_written`` is what the reference's model code (``eoe/models/cnn.py``) writes:
  Xavier-normal weights with the leaky-ReLU gain ``sqrt(2 / (1 + 0.01^2))`` for every
  convolution and the first fully connected layer, gain 1 for the last linear layer,
  biases left at PyTorch's default.

The BCE/Focal head is ``nn.Linear(features, 1)`` with a bias and PyTorch's default
initialisation under every setup, as the reference's ``self.linear``.  The
initialisation is drawn once in ``__init__`` and nothing resets it later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from oesearch.models.setup import REFERENCE, ModelSetup

__all__ = ["LeNetSpec", "LeNet", "LENET_SPECS", "spec_for_size"]

_BN_EPS = 1e-4
_LEAK = 0.01  # the reference code's F.leaky_relu default


@dataclass(frozen=True)
class LeNetSpec:
    """Widths of one LeNet variant."""

    input_size: int
    kernel: int
    conv_channels: tuple[int, ...]
    hidden: int
    features: int


# Keyed by input side length.  32 and 28 are the paper's CIFAR and F/MNIST nets.
LENET_SPECS: dict[int, LeNetSpec] = {
    32: LeNetSpec(32, 5, (32, 64, 128), 512, 256),
    28: LeNetSpec(28, 5, (16, 32), 64, 32),
    8: LeNetSpec(8, 3, (16, 32), 64, 32),
}


def spec_for_size(size: int) -> LeNetSpec:
    """The LeNet variant for square inputs of side ``size``."""
    try:
        return LENET_SPECS[size]
    except KeyError:
        raise ValueError(
            f"no LeNet variant for {size}x{size} inputs; supported sizes are "
            f"{sorted(LENET_SPECS)} (resize the data, e.g. data.normal.resize)"
        ) from None


class LeNet(nn.Module):
    """phi: images (B, C, H, W) -> features (B, spec.features).

    With ``head=True`` a linear layer to one logit follows phi (BCE, Focal).
    ``setup`` sets biases, BatchNorm's affine parameters and the initialisation (module docstring).
    """

    def __init__(self, spec: LeNetSpec, channels: int, head: bool = False, setup: ModelSetup = REFERENCE) -> None:
        super().__init__()
        self.setup = setup
        bias, affine = setup.bias, setup.batchnorm_affine
        layers: list[nn.Module] = []
        cin, side = channels, spec.input_size
        for cout in spec.conv_channels:
            layers += [
                nn.Conv2d(cin, cout, spec.kernel, padding=spec.kernel // 2, bias=bias),
                nn.BatchNorm2d(cout, eps=_BN_EPS, affine=affine),
                nn.LeakyReLU(_LEAK),
                nn.MaxPool2d(2),
            ]
            cin, side = cout, side // 2
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, spec.hidden, bias=bias),
            nn.BatchNorm1d(spec.hidden, eps=_BN_EPS, affine=affine),
            nn.LeakyReLU(_LEAK),
            nn.Linear(spec.hidden, spec.features, bias=bias),
        )
        self.head = nn.Linear(spec.features, 1) if head else None
        # init "reference": the constructors above already drew PyTorch's default, which is exactly
        # what the reference's reset_parameters() would draw again.
        if setup.init == "as_written":
            self.initialise()

    @torch.no_grad()
    def initialise(self) -> None:
        """The reference's model-code initialisation (``as_written``), drawn from the global torch RNG."""
        hidden_gain = nn.init.calculate_gain("leaky_relu", _LEAK)
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not self.head]
        for layer in layers[:-1]:  # the convolutions and the first fully connected layer feed a leaky ReLU
            nn.init.xavier_normal_(layer.weight, gain=hidden_gain)
        nn.init.xavier_normal_(layers[-1].weight, gain=1.0)  # the last linear layer: phi's output
        # Biases and self.head keep PyTorch's default (as in the reference's model code), set by their constructors.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.conv(x))
        return z if self.head is None else self.head(z).squeeze(1)
