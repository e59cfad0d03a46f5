"""Packed training replays the unpacked trainer candidate by candidate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oesearch.models import ModelSetup
from oesearch.training import PreparedTask, TrainSettings, make_objective, train_and_evaluate
from oesearch.training.packed import PackedLeNet, auto_pack, train_packed
from oesearch.training.trainer import seeded_model

rng = np.random.default_rng(1)


def _images(n: int, side: int, channels: int, bright: bool, extra: int = 60) -> np.ndarray:
    """Noisy images with a bright centre; anomalies also have top and bottom rows ``extra`` brighter."""
    x = rng.integers(0, 60, size=(n, side, side, channels)).astype(np.int64)
    c = side // 2
    x[:, c - 1 : c + 1, c - 1 : c + 1] += 150
    if bright:
        x[:, 0] += extra
        x[:, -1] += extra
    return x.clip(0, 255).astype(np.uint8)


def _task(side: int, channels: int, n: int, extra: int = 60) -> PreparedTask:
    test = np.concatenate([_images(24, side, channels, False), _images(24, side, channels, True, extra)])
    return PreparedTask.from_arrays(_images(n, side, channels, False), test, np.r_[np.zeros(24, bool), np.ones(24, bool)])


def _float64(task: PreparedTask) -> PreparedTask:
    return task.astype(torch.float64)


SMALL = _task(8, 1, 320)
HARD = _task(8, 1, 320, extra=12)  # subtle anomalies: AUCs well below 1, so agreement is informative
# The step-loss comparisons run in float64.  In float32 the grouped convolutions and batched
# matmuls round differently from the separate layers (~1e-7 relative), and Adam's first steps
# amplify any such difference: the *unpacked* CIFAR-sized trainer alone differs by ~4e-2 relative
# within 20 steps between 1 and 2 CPU threads.  Float64 shows the two computations are the same;
# the float32 AUC test below shows it does not matter where it counts.
SMALL64 = _float64(SMALL)
CIFAR_SIZED = _float64(_task(32, 3, 80))
SEEDS = [3, 17, 29, 101]
# One OE image per candidate, different for each: the candidates differ in data and seed.
OES = [_images(1, 8, 1, True) for _ in SEEDS]
OES_RGB = [_images(1, 32, 3, True) for _ in SEEDS]


def _rel(a: list[float], b: list[float]) -> float:
    a_, b_ = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a_ - b_) / np.maximum(np.abs(b_), 1e-12)))


SETUPS = [ModelSetup(bias, affine) for bias in (True, False) for affine in (True, False)]


@pytest.mark.parametrize("setup", SETUPS, ids=str)
@pytest.mark.parametrize("method", ["hsc", "bce"])
def test_packed_network_equals_the_separate_networks(method: str, setup: ModelSetup) -> None:
    head = method == "bce"
    nets = [seeded_model((32, 32, 3), head, s, torch.device("cpu"), setup=setup).train() for s in SEEDS]
    if setup.batchnorm_affine:  # scales and shifts away from their initial 1 and 0, so copying them is tested
        with torch.no_grad():
            for net in nets:
                for bn in (m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
                    bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    packed = PackedLeNet(nets).train()
    xs = [torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(len(SEEDS))]
    out = packed(torch.stack(xs, dim=1).flatten(1, 2))
    for k, (net, x) in enumerate(zip(nets, xs)):
        torch.testing.assert_close(out[:, k], net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("task, oes, method, batch, setup", [
    (SMALL64, OES, "hsc", 16, None), (SMALL64, OES, "bce", 16, None), (CIFAR_SIZED, OES_RGB, "hsc", 4, None),
    (SMALL64, OES, "hsc", 16, ModelSetup(bias=False, batchnorm_affine=False, init="as_written"))],
    ids=["8x8-hsc", "8x8-bce", "32x32x3-hsc", "8x8-hsc-bias-free"])
def test_first_20_step_losses_match_unpacked(k: int, task: PreparedTask, oes: list, method: str, batch: int,
                                             setup: ModelSetup | None) -> None:
    objective = make_objective(method)
    settings = TrainSettings(epochs=1, batch_size=batch, milestones=(), model=setup)  # 320 / 16 = 80 / 4 = 20 steps
    packed = train_packed(task, oes[:k], objective, settings, SEEDS[:k], record_steps=20)
    for i in range(k):
        single = train_and_evaluate(task, oes[i], objective, settings, SEEDS[i], record_steps=20)
        assert len(packed.step_losses[i]) == len(single.step_losses) == 20
        assert _rel(packed.step_losses[i], single.step_losses) < 1e-4, (i, packed.step_losses[i], single.step_losses)
        assert packed.failures[i] is None


@pytest.mark.parametrize("method", ["hsc", "bce"])
def test_final_aucs_match_unpacked(method: str) -> None:
    # The bias-free network: in float32 with biases the packed and unpacked roundings part further over
    # 4 epochs (one candidate's AUC 0.017 apart in a CI run); the float64 step losses above show that the
    # two compute the same function with biases too.
    objective = make_objective(method)
    settings = TrainSettings(epochs=4, batch_size=16, milestones=(3,),
                             model=ModelSetup(bias=False, batchnorm_affine=False, init="as_written"))
    packed = train_packed(HARD, OES, objective, settings, SEEDS)
    singles = [train_and_evaluate(HARD, oe, objective, settings, s).auc for oe, s in zip(OES, SEEDS)]
    assert np.max(np.abs(np.array(packed.aucs) - np.array(singles))) < 0.01, (packed.aucs, singles)
    # The candidates really differ (different seeds and OE), so agreement is not trivial.
    assert len({round(a, 6) for a in singles}) > 1 and max(singles) < 0.99


def test_a_diverging_candidate_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The second candidate's OE tensor is NaN, so its loss is NaN from the first step.
    objective = make_objective("hsc")
    settings = TrainSettings(epochs=2, batch_size=16, milestones=(1,))
    poison = np.full((1, 8, 8, 1), 255, np.uint8)
    oes = [OES[0], poison, OES[2]]
    normalise = SMALL.normalise
    monkeypatch.setattr(SMALL, "normalise", lambda images: normalise(images) * (float("nan") if images is poison else 1.0))
    packed = train_packed(SMALL, oes, objective, settings, SEEDS[:3])
    monkeypatch.undo()
    assert packed.aucs[1] is None and "non-finite" in packed.failures[1]
    for i in (0, 2):
        single = train_and_evaluate(SMALL, oes[i], objective, settings, SEEDS[i])
        assert packed.failures[i] is None
        assert abs(packed.aucs[i] - single.auc) < 0.01


def test_auto_pack() -> None:
    assert auto_pack(torch.device("cpu")) == 1  # compute-bound on CPU: packing saves nothing
    assert auto_pack(torch.device("cpu"), 6) == 6
