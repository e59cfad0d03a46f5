"""model.bias / model.batchnorm_affine / model.init build the networks they claim.

Each LeNet setup is checked against a module written out here by hand after the
reference code's ``CNN32`` / ``CNN28`` (liznerski/eoe, ``eoe/models/cnn.py``):
the same parameter shapes in the same order, the same count, and, with the
weights copied over, the same function.  The initialisations are checked by
their distributions: PyTorch's default (what the reference trains after its
``weight_reset``) is uniform within 1/sqrt(fan_in); Xavier-normal (what its
model code writes) is normal with std gain * sqrt(2 / (fan_in + fan_out)).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from scipy import stats
from torch import nn

from oesearch.config import ConfigError, load_config
from oesearch.models import LeNet, ModelSetup, WideResNet, build_model, resolve_setup, spec_for_size
from oesearch.training.settings import worker_spec

SETUPS = [ModelSetup(bias, affine, init)
          for bias, affine, init in itertools.product((True, False), (True, False), ("reference", "as_written"))]
LEAK_GAIN = math.sqrt(2 / (1 + 0.01**2))


class HandLeNet(nn.Module):
    """The reference's CNN32/CNN28 pattern, written out: conv -> BN -> leaky ReLU -> pool, then fc1 -> BN -> fc2."""

    def __init__(self, channels: int, widths: tuple[int, ...], kernel: int, side: int, hidden: int, rep: int,
                 bias: bool, affine: bool, clf: bool) -> None:
        super().__init__()
        self.convs, self.bn2ds = nn.ModuleList(), nn.ModuleList()
        cin = channels
        for cout in widths:  # registered in the reference's order: conv1, bn2d1, conv2, bn2d2, ...
            self.convs.append(nn.Conv2d(cin, cout, kernel, bias=bias, padding=kernel // 2))
            self.bn2ds.append(nn.BatchNorm2d(cout, eps=1e-4, affine=affine))
            cin, side = cout, side // 2
        self.fc1 = nn.Linear(cin * side * side, hidden, bias=bias)
        self.bn1d1 = nn.BatchNorm1d(hidden, eps=1e-4, affine=affine)
        self.fc2 = nn.Linear(hidden, rep, bias=bias)
        self.linear = nn.Linear(rep, 1) if clf else None

    def parameters_in_reference_order(self) -> list[torch.Tensor]:
        ordered = []
        for conv, bn in zip(self.convs, self.bn2ds):
            ordered += list(conv.parameters()) + list(bn.parameters())
        for module in (self.fc1, self.bn1d1, self.fc2, self.linear):
            ordered += list(module.parameters()) if module is not None else []
        return ordered

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in zip(self.convs, self.bn2ds):
            x = F.max_pool2d(F.leaky_relu(bn(conv(x))), 2)
        x = self.fc2(F.leaky_relu(self.bn1d1(self.fc1(x.flatten(1)))))
        return x if self.linear is None else self.linear(x).squeeze(1)


# (H, W, C) -> the hand-built widths: CNN32 and CNN28 of the reference, and our 8x8 variant of the same pattern.
HAND = {
    (32, 32, 3): dict(channels=3, widths=(32, 64, 128), kernel=5, side=32, hidden=512, rep=256),
    (28, 28, 1): dict(channels=1, widths=(16, 32), kernel=5, side=28, hidden=64, rep=32),
    (8, 8, 1): dict(channels=1, widths=(16, 32), kernel=3, side=8, hidden=64, rep=32),
}


def _by_hand_count(widths, channels, kernel, side, hidden, rep, bias, affine, clf) -> int:
    total, cin = 0, channels
    for cout in widths:
        total += cin * cout * kernel * kernel + bias * cout + affine * 2 * cout
        cin, side = cout, side // 2
    total += cin * side * side * hidden + bias * hidden + affine * 2 * hidden + hidden * rep + bias * rep
    return total + clf * (rep + 1)


@pytest.mark.parametrize("setup", SETUPS, ids=str)
@pytest.mark.parametrize("shape", list(HAND))
@pytest.mark.parametrize("head", [False, True])
def test_lenet_is_the_hand_built_reference_network(shape, setup: ModelSetup, head: bool) -> None:
    torch.manual_seed(0)
    ours = build_model(shape, head=head, setup=setup)
    hand = HandLeNet(**HAND[shape], bias=setup.bias, affine=setup.batchnorm_affine, clf=head)
    mine, theirs = list(ours.parameters()), hand.parameters_in_reference_order()
    assert [p.shape for p in mine] == [p.shape for p in theirs]
    count = sum(p.numel() for p in mine)
    assert count == sum(p.numel() for p in hand.parameters()) == _by_hand_count(
        **HAND[shape], bias=setup.bias, affine=setup.batchnorm_affine, clf=head)
    # The same function: copy our weights into the hand-built module and compare outputs in both modes.
    with torch.no_grad():
        for a, b in zip(theirs, mine):
            a.copy_(b)
    x = torch.randn(6, shape[2], shape[0], shape[1])
    for train in (True, False):
        ours.train(train), hand.train(train)
        with torch.no_grad():
            assert torch.allclose(ours(x), hand(x), atol=1e-5, rtol=1e-5)
    layers = [m for m in ours.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not ours.head]
    assert all((m.bias is not None) == setup.bias for m in layers)
    assert all(m.affine == setup.batchnorm_affine for m in ours.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def _fan_in(w: torch.Tensor) -> int:
    return w[0].numel()


def _assert_pytorch_default(w: torch.Tensor, name: str) -> None:
    """kaiming_uniform(a=sqrt(5)): uniform on [-1/sqrt(fan_in), 1/sqrt(fan_in)], std bound/sqrt(3)."""
    bound = 1 / math.sqrt(_fan_in(w))
    v = w.detach().double().flatten().numpy()
    assert abs(v).max() <= bound + 1e-7, name
    se = bound / math.sqrt(3) / math.sqrt(2 * v.size)
    assert abs(v.std() - bound / math.sqrt(3)) < 5 * se + 1e-3 * bound, (name, v.std(), bound / math.sqrt(3))
    if v.size > 2000:  # a uniform's excess kurtosis is -1.2, a normal's 0
        assert abs(stats.kurtosis(v) + 1.2) < 0.2, (name, stats.kurtosis(v))


def _assert_xavier(w: torch.Tensor, gain: float, name: str) -> None:
    receptive = w[0, 0].numel() if w.dim() > 2 else 1
    expected = gain * math.sqrt(2 / (w.shape[1] * receptive + w.shape[0] * receptive))
    v = w.detach().double().flatten().numpy()
    assert abs(v.std() - expected) < 4 * expected / math.sqrt(2 * v.size), (name, v.std(), expected)
    if v.size > 2000:
        assert abs(stats.kurtosis(v)) < 0.3, (name, stats.kurtosis(v))


@pytest.mark.parametrize("init", ["reference", "as_written"])
def test_lenet_initialisation_statistics(init: str) -> None:
    torch.manual_seed(3)
    net = LeNet(spec_for_size(32), 3, head=True, setup=ModelSetup(True, True, init))
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not net.head]
    for i, w in enumerate(weights):
        if init == "reference":
            _assert_pytorch_default(w, f"layer {i}")
        else:
            _assert_xavier(w, LEAK_GAIN if i < len(weights) - 1 else 1.0, f"layer {i}")
    # Biases and the head keep PyTorch's default under both: uniform within 1/sqrt(fan_in).
    for m in [*(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))]:
        assert m.bias.abs().max() <= 1 / math.sqrt(_fan_in(m.weight)) + 1e-7
    _assert_pytorch_default(net.head.weight, "head")
    for bn in (m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def _torchvision_body(affine: bool) -> int:
    # Independent count: torchvision's ResNet-18 without its 1000-way fc, less its BatchNorms' scales and
    # shifts when they are not affine.
    resnet = torchvision.models.resnet18(weights=None)
    bn = sum(m.num_features for m in resnet.modules() if isinstance(m, nn.BatchNorm2d))
    return sum(p.numel() for p in resnet.parameters()) - (512 * 1000 + 1000) - (0 if affine else 2 * bn)


def _cbam_by_hand(c: int, affine: bool) -> int:
    # Channel gate MLP c -> c/16 -> c with biases; spatial gate 7x7 conv 2 -> 1 (no bias) + BN(1).
    return (c * (c // 16) + c // 16) + ((c // 16) * c + c) + 2 * 7 * 7 + 2 * affine


@pytest.mark.parametrize("bias,affine", list(itertools.product((True, False), (True, False))))
def test_wideresnet_parameter_count_for_each_setup(bias: bool, affine: bool) -> None:
    net = WideResNet(3, setup=ModelSetup(bias, affine, "reference"))
    cbam = sum(2 * _cbam_by_hand(c, affine) for c in (64, 128, 256, 512))
    count = sum(p.numel() for p in net.parameters())
    assert count == _torchvision_body(affine) + 512 * 256 + 256 * bias + cbam
    assert all(m.affine == affine for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert (net.fc.bias is not None) == bias


def test_wideresnet_reference_initialisation_is_pytorch_default() -> None:
    torch.manual_seed(4)
    net = WideResNet(3, head=True, setup=ModelSetup(True, True, "reference"))
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    for name in ("stem.0", "blocks.7.conv2", "blocks.6.downsample.0", "blocks.4.conv1"):
        _assert_pytorch_default(convs[name].weight, name)
    _assert_pytorch_default(net.fc.weight, "fc")
    assert net.fc.bias.abs().max() <= 1 / math.sqrt(512) and net.fc.bias.abs().max() > 0
    # reset_parameters() sets every BatchNorm to weight 1, bias 0: the spatial gates' too (as written: 0).
    for name, bn in net.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0), name


def test_auto_is_the_reference_except_for_the_deep_svdd_family() -> None:
    for method in ("hsc", "bce", "focal"):
        assert resolve_setup(method) == ModelSetup(True, True, "reference")
    for method in ("dsad", "dsvdd"):
        assert resolve_setup(method) == ModelSetup(False, False, "reference")
    assert resolve_setup("dsvdd", bias=True, init="as_written") == ModelSetup(True, False, "as_written")
    config = load_config(None, ["model.bias=false", "model.init=as_written"])
    assert worker_spec(config).settings.model == ModelSetup(False, True, "as_written")
    assert worker_spec(load_config(None, ["train.method=dsad"])).settings.model == ModelSetup(False, False, "reference")
    with pytest.raises(ConfigError, match="model.init"):
        load_config(None, ["model.init=xavier_uniform"])
    with pytest.raises(ConfigError, match="unknown key 'model.biases'"):
        load_config(None, ["model.biases=true"])
