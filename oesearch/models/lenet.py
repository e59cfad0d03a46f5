"""The LeNet family used for low-resolution data (paper Appendix G.1).

Every convolution is followed by BatchNorm, leaky ReLU and 2x2 max-pooling;
the first fully connected layer by BatchNorm and leaky ReLU; the last layer
is linear.  Layers carry no bias and BatchNorm no affine parameters, the
Deep SVDD convention that HSC and DSVDD inherit: a bias would let the network
map everything onto a constant and collapse the hypersphere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LeNetSpec", "LeNet", "LENET_SPECS", "spec_for_size"]

_BN_EPS = 1e-4
_LEAK = 0.1


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
    PyTorch's default initialisation is used and nothing resets it later.
    """

    def __init__(self, spec: LeNetSpec, channels: int, head: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = channels, spec.input_size
        for cout in spec.conv_channels:
            layers += [
                nn.Conv2d(cin, cout, spec.kernel, padding=spec.kernel // 2, bias=False),
                nn.BatchNorm2d(cout, eps=_BN_EPS, affine=False),
                nn.LeakyReLU(_LEAK),
                nn.MaxPool2d(2),
            ]
            cin, side = cout, side // 2
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * side * side, spec.hidden, bias=False),
            nn.BatchNorm1d(spec.hidden, eps=_BN_EPS, affine=False),
            nn.LeakyReLU(_LEAK),
            nn.Linear(spec.hidden, spec.features, bias=False),
        )
        self.head = nn.Linear(spec.features, 1) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.conv(x))
        return z if self.head is None else self.head(z).squeeze(1)
