"""The LeNet initialisation comes from the seed alone, and nothing resets it.

The reference code (eoe/models/cnn.py) draws Xavier-normal weights and then its
trainer calls reset_parameters() on every module, silently replacing them with
PyTorch's default (SPEC section 8).  ``model.init: as_written`` is the former,
``reference`` (the default) the latter.  These tests pin the as-written
initialisation down by its distribution (tests/test_model_setup.py does the
reference one) and check that the weights a training starts from are exactly
the ones the constructor drew for that seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from oesearch.models import LeNet, ModelSetup, resolve_setup, spec_for_size
from oesearch.training import PreparedTask, TrainSettings, make_objective, train_and_evaluate
from oesearch.training import trainer as trainer_module
from oesearch.training.trainer import seeded_model

CPU = torch.device("cpu")
LEAK_GAIN = math.sqrt(2 / (1 + 0.01**2))  # torch.nn.init.calculate_gain("leaky_relu", 0.01), written out


def _xavier_std(weight: torch.Tensor, gain: float) -> float:
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    return gain * math.sqrt(2 / (fan_in + fan_out))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_initialisation_is_deterministic_from_the_seed(shape: tuple[int, int, int]) -> None:
    before = torch.random.get_rng_state()
    first = _weights(seeded_model(shape, True, seed=5, device=CPU))
    torch.manual_seed(1234)  # the global RNG's state must not matter
    again = _weights(seeded_model(shape, True, seed=5, device=CPU))
    other = _weights(seeded_model(shape, True, seed=6, device=CPU))
    torch.manual_seed(5)
    direct = _weights(LeNet(spec_for_size(shape[0]), shape[2], head=True))
    for key in first:
        assert torch.equal(first[key], again[key]) and torch.equal(first[key], direct[key]), key
    assert not torch.equal(first["conv.0.weight"], other["conv.0.weight"])
    torch.manual_seed(0)
    torch.random.set_rng_state(before)


def test_the_32x32_weights_have_the_xavier_normal_distribution() -> None:
    torch.manual_seed(0)
    net = LeNet(spec_for_size(32), 3, head=True, setup=ModelSetup(init="as_written"))
    layers = [("conv.0.weight", LEAK_GAIN), ("conv.4.weight", LEAK_GAIN), ("conv.8.weight", LEAK_GAIN),
              ("fc.1.weight", LEAK_GAIN), ("fc.4.weight", 1.0)]
    params = dict(net.named_parameters())
    for name, gain in layers:
        w = params[name].detach().double().flatten().numpy()
        expected = _xavier_std(params[name], gain)
        tolerance = 4 * expected / math.sqrt(2 * w.size)  # 4 standard errors of a sample std
        assert abs(w.std() - expected) < tolerance, (name, w.std(), expected)
        assert abs(w.mean()) < 4 * expected / math.sqrt(w.size), name
        # Normal, not PyTorch's default uniform: excess kurtosis 0 (a uniform has -1.2).
        assert abs(stats.kurtosis(w)) < 0.3, (name, stats.kurtosis(w))
        default_std = 1 / math.sqrt(3 * params[name][0].numel())  # kaiming_uniform(a=sqrt(5)), the reset's
        if abs(expected - default_std) > 10 * tolerance:  # conv.0: both formulas give ~0.067; kurtosis tells them apart
            assert abs(w.std() - default_std) > 5 * tolerance, name
    # The BCE/Focal head keeps PyTorch's default, as in the reference: uniform within 1/sqrt(fan_in).
    bound = 1 / math.sqrt(256)
    assert net.head.weight.abs().max() <= bound and net.head.bias.abs().max() <= bound
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}


@pytest.mark.parametrize("method", ["hsc", "bce", "dsad"])
def test_training_starts_from_exactly_the_drawn_weights(method: str, monkeypatch) -> None:
    """Capture the weights at the first training step of the real trainer and compare with the constructor's."""
    rng = np.random.default_rng(0)
    task = PreparedTask.from_arrays(rng.integers(0, 256, (24, 8, 8, 1), dtype=np.uint8),
                                    rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.arange(20) % 2 == 0)
    captured: dict[str, torch.Tensor] = {}
    real = trainer_module.seeded_model

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)

        def first_training_forward(module, _inputs):
            if module.training and not captured:  # DSAD's centre is computed in eval mode first
                captured.update(_weights(module))
        model.register_forward_pre_hook(first_training_forward)
        return model

    monkeypatch.setattr(trainer_module, "seeded_model", spy)
    objective = make_objective(method)
    train_and_evaluate(task, rng.integers(0, 256, (1, 8, 8, 1), dtype=np.uint8), objective,
                       TrainSettings(epochs=1, lr=1e-2, milestones=(1,), batch_size=8), seed=21)
    torch.manual_seed(21)
    drawn = LeNet(spec_for_size(8), 1, head=objective.head, setup=resolve_setup(method))
    assert captured.keys() == drawn.state_dict().keys()
    for key, value in drawn.state_dict().items():
        assert torch.equal(captured[key], value), key
