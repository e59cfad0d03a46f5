"""The 224px WideResNet (ResNet-18 + CBAM, paper Appendix G.1) and initialisation that stays put."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from oesearch.models import LeNet, ModelSetup, WideResNet, build_model, spec_for_size
from oesearch.training.objectives import DSVDD
from oesearch.training.trainer import seeded_model

CPU = torch.device("cpu")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cbam_by_hand(c: int) -> int:
    # Channel gate MLP c -> c/16 -> c with biases; spatial gate 7x7 conv 2 -> 1 (no bias) + affine BN(1).
    return (c * (c // 16) + c // 16) + ((c // 16) * c + c) + 2 * 7 * 7 + 2


@pytest.fixture(scope="module")
def wrn() -> WideResNet:
    return build_model((224, 224, 3), head=False)


def test_build_model_picks_the_wideresnet_for_224(wrn: WideResNet) -> None:
    assert isinstance(wrn, WideResNet)
    assert isinstance(build_model((32, 32, 3), head=False), LeNet)
    with torch.no_grad():
        assert wrn.eval()(torch.randn(2, 3, 224, 224)).shape == (2, 256)
        gray = build_model((224, 224, 1), head=True).eval()
        assert gray(torch.randn(2, 1, 224, 224)).shape == (2,)


def test_parameter_count_against_torchvision_resnet18_plus_cbam(wrn: WideResNet) -> None:
    # Independent count: torchvision's ResNet-18 without its 1000-way fc, our 512 -> 256 layer,
    # and two CBAM modules per stage.
    body = _count(torchvision.models.resnet18(weights=None)) - (512 * 1000 + 1000)
    cbam = sum(2 * _cbam_by_hand(c) for c in (64, 128, 256, 512))
    assert _count(wrn) == body + (512 * 256 + 256) + cbam == 11_397_720
    assert _count(build_model((224, 224, 3), head=True)) == _count(wrn) + 256 + 1


def test_as_written_initialisation_is_what_the_code_says() -> None:
    wrn = WideResNet(3, setup=ModelSetup(init="as_written"))
    convs = {name: m for name, m in wrn.named_modules() if isinstance(m, torch.nn.Conv2d)}
    # Kaiming normal, fan_out: std sqrt(2 / (out * k * k)); PyTorch's default would be 1/sqrt(3 fan_in).
    for name in ("blocks.7.conv2", "blocks.6.downsample.0", "blocks.4.conv1"):
        w = convs[name].weight
        expected = math.sqrt(2 / (w.shape[0] * w.shape[2] * w.shape[3]))
        assert w.std().item() == pytest.approx(expected, rel=0.05), name
        assert w.mean().abs().item() < 0.1 * expected
    fc = wrn.fc.weight  # Kaiming normal, fan_in 512
    assert fc.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    for name, module in wrn.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert torch.all(module.bias == 0), name
            assert torch.all(module.weight == (0 if name.endswith("1.bn") else 1)), name  # spatial gate BN: 0
    assert torch.all(wrn.fc.bias == 0)


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3), (224, 224, 3)])
def test_nothing_resets_the_initialisation(shape: tuple[int, int, int]) -> None:
    # The trainer's path (seeded_model: build, move, cast) gives exactly the weights the
    # constructor drew, and the pre-training hook (DSVDD's centre) changes none of them.
    torch.manual_seed(11)
    h, _, c = shape
    direct = WideResNet(c) if h == 224 else LeNet(spec_for_size(h), c)
    model = seeded_model(shape, False, seed=11, device=CPU)
    reference = direct.state_dict()
    assert model.state_dict().keys() == reference.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    DSVDD().prepare(model, torch.randn(3, c, h, h))
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key
