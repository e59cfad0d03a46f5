"""The ResNet-18-style "WideResNet" for 224x224 inputs (paper Appendix G.1).

The paper uses "exactly the same WideResNet as Hendrycks et al. (2019b)": a
ResNet-18 (BasicBlocks, 2-2-2-2, 64-128-256-512 channels) whose blocks carry
CBAM attention (Woo et al. 2018: a channel gate, then a 7x7 spatial gate),
global 7x7 average pooling and a linear layer to 256 features.  Convolutions
carry no bias (each feeds a BatchNorm), as in that network.

A :class:`~oesearch.models.setup.ModelSetup` says the rest:

- ``bias``: the bias of the feature layer (the reference's ``fc`` has one); the
  channel gates' MLP and the BCE/Focal head always carry theirs, as there;
- ``batchnorm_affine``: every BatchNorm's scale and shift, the spatial gates'
  included (the reference's are all affine);
- ``init``: ``reference`` leaves PyTorch's default, which is what the reference
  trains (its ``weight_reset`` calls ``reset_parameters()`` on every module, so
  BatchNorm weights are 1, spatial gates included, and biases PyTorch's default);
  ``as_written`` is what the reference's model code writes: every convolution
  Kaiming-normal (fan_out; it leaves its 1x1 shortcut convolutions at PyTorch's
  default, a naming accident we do not copy), the channel gates' MLP weights
  PyTorch's default, the feature layer (and head) Kaiming-normal, BatchNorm
  weights 1 except the spatial gates' 0 (each gate starts as a uniform x0.5),
  every bias 0.

The initialisation is drawn once in ``__init__`` and nothing resets it later.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import init

from oesearch.models.setup import REFERENCE, ModelSetup

__all__ = ["WideResNet", "CBAM"]


class _ChannelGate(nn.Module):
    """x * sigmoid(MLP(avgpool x) + MLP(maxpool x)), one weight per channel."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(),
                                 nn.Linear(channels // reduction, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        return x * torch.sigmoid(att)[:, :, None, None]


class _SpatialGate(nn.Module):
    """x * sigmoid(BN(conv7x7([max over channels, mean over channels]))), one weight per pixel."""

    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Sequential):
    """Convolutional block attention: channel gate, then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16, affine: bool = True) -> None:
        super().__init__(_ChannelGate(channels, reduction), _SpatialGate(affine))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, affine: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, affine=affine)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, affine=affine)
        self.cbam = CBAM(cout, affine=affine)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout, affine=affine))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.cbam(self.bn2(self.conv2(out)))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class WideResNet(nn.Module):
    """phi: (B, C, 224, 224) -> (B, features); with ``head=True`` one logit (BCE, Focal)."""

    def __init__(self, channels: int = 3, features: int = 256, head: bool = False,
                 setup: ModelSetup = REFERENCE) -> None:
        super().__init__()
        self.setup = setup
        affine = setup.batchnorm_affine
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64, affine=affine),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(cin, cout, stride, affine), _BasicBlock(cout, cout, 1, affine)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(512, features, bias=setup.bias)
        self.head = nn.Linear(features, 1) if head else None
        # init "reference": the constructors above already drew PyTorch's default, which is exactly
        # what the reference's reset_parameters() would draw again.
        if setup.init == "as_written":
            self._initialise()

    @torch.no_grad()
    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d) and module.affine:
                init.zeros_(module.bias)
                init.ones_(module.weight)
        for gate in self.modules():
            if isinstance(gate, _SpatialGate) and gate.bn.affine:
                init.zeros_(gate.bn.weight)
        for linear in (self.fc, self.head):
            if linear is not None:
                init.kaiming_normal_(linear.weight)
                if linear.bias is not None:
                    init.zeros_(linear.bias)
        for block in self.modules():  # the channel gates' MLP biases
            if isinstance(block, _ChannelGate):
                init.zeros_(block.mlp[0].bias)
                init.zeros_(block.mlp[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        z = self.fc(torch.flatten(nn.functional.avg_pool2d(x, 7), 1))
        return z if self.head is None else self.head(z).squeeze(1)
