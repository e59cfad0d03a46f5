"""The execution switches (train.precision, channels_last, compile) on CPU, in both trainers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oesearch.config import ConfigError, config_from_dict
from oesearch.models import ModelSetup
from oesearch.training import TrainSettings, make_objective, train_and_evaluate
from oesearch.training.packed import train_packed
from test_packed import HARD, OES, OES_RGB, SEEDS, SMALL, _task

RGB = _task(32, 3, 80, extra=12)


def _rel(a: list[float], b: list[float]) -> float:
    return float(np.max(np.abs(np.asarray(a) - b) / np.abs(b)))


def test_bf16_trains_to_nearly_the_fp32_aucs() -> None:
    # Measured on this task: BCE per-seed |dAUC| <= 0.015, HSC <= 0.038 per seed and 0.011 on the
    # mean (HSC AUCs here sit near chance on 48 test images, where single trainings are chaotic).
    for method, per_seed in (("bce", 0.05), ("hsc", None)):
        objective = make_objective(method)
        runs = {}
        for precision in ("fp32", "bf16"):
            settings = TrainSettings(epochs=4, batch_size=16, milestones=(3,), precision=precision)
            runs[precision] = [train_and_evaluate(HARD, oe, objective, settings, s, record_steps=5)
                               for oe, s in zip(OES, SEEDS)]
        fp32, bf16 = (np.array([r.auc for r in runs[p]]) for p in ("fp32", "bf16"))
        assert np.all(np.isfinite(bf16))
        # bf16 really ran: its losses differ from fp32's, but only by bf16 rounding (~1e-2).
        assert 0 < _rel(runs["bf16"][0].step_losses[:1], runs["fp32"][0].step_losses[:1]) < 0.05
        if per_seed is not None:
            assert np.max(np.abs(fp32 - bf16)) < per_seed, (method, fp32, bf16)
        assert abs(fp32.mean() - bf16.mean()) < 0.05, (method, fp32, bf16)


def test_packed_bf16_matches_unpacked_bf16() -> None:
    objective = make_objective("bce")
    settings = TrainSettings(epochs=4, batch_size=16, milestones=(3,), precision="bf16")
    packed = train_packed(HARD, OES, objective, settings, SEEDS)
    singles = [train_and_evaluate(HARD, oe, objective, settings, s).auc for oe, s in zip(OES, SEEDS)]
    assert packed.failures == [None] * len(SEEDS)
    assert np.max(np.abs(np.array(packed.aucs) - singles)) < 0.05, (packed.aucs, singles)


def test_tf32_is_fp32_on_cpu() -> None:
    objective = make_objective("hsc")
    a = train_and_evaluate(SMALL, OES[0], objective, TrainSettings(epochs=1, batch_size=16, milestones=()), 3, 10)
    b = train_and_evaluate(SMALL, OES[0], objective, TrainSettings(epochs=1, batch_size=16, milestones=(),
                                                                   precision="tf32"), 3, 10)
    assert a.step_losses == b.step_losses and a.auc == b.auc


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_channels_last_gives_the_contiguous_losses(packed: bool) -> None:
    objective = make_objective("hsc")
    plain = TrainSettings(epochs=1, batch_size=4, milestones=())
    nhwc = TrainSettings(epochs=1, batch_size=4, milestones=(), channels_last=True)
    if packed:
        a = train_packed(RGB, OES_RGB[:2], objective, plain, SEEDS[:2], record_steps=10)
        b = train_packed(RGB, OES_RGB[:2], objective, nhwc, SEEDS[:2], record_steps=10)
        pairs = list(zip(a.step_losses, b.step_losses))
    else:
        a = train_and_evaluate(RGB, OES_RGB[0], objective, plain, SEEDS[0], record_steps=10)
        b = train_and_evaluate(RGB, OES_RGB[0], objective, nhwc, SEEDS[0], record_steps=10)
        pairs = [(a.step_losses, b.step_losses)]
    for x, y in pairs:
        assert len(x) == 10 and _rel(y, x) < 1e-4


def test_compile_gives_the_eager_losses() -> None:
    # Cold inductor compilation of the tiny 8x8 net takes about a minute on the 2-core VM
    # (seconds once cached); the compiled graph is reused by later trainings of the same shape.
    # The bias-free network: with biases the two roundings part faster (measured 5e-4 by step 20; a bias in
    # front of BatchNorm has a gradient that is zero up to rounding, which Adam's normalisation amplifies).
    # What compile does to the graph does not depend on the setup.
    objective = make_objective("hsc")
    bias_free = ModelSetup(bias=False, batchnorm_affine=False)
    eager = train_and_evaluate(SMALL, OES[0], objective,
                               TrainSettings(epochs=1, batch_size=16, milestones=(), model=bias_free), 3, 20)
    compiled = train_and_evaluate(SMALL, OES[0], objective,
                                  TrainSettings(epochs=1, batch_size=16, milestones=(), compile=True, model=bias_free),
                                  3, 20)
    assert _rel(compiled.step_losses, eager.step_losses) < 1e-4  # measured 4e-6
    assert abs(compiled.auc - eager.auc) < 0.01


def test_execution_keys_are_validated() -> None:
    config = config_from_dict({"train": {"precision": "bf16", "channels_last": True, "compile": True}})
    assert (config.train.precision, config.train.channels_last, config.train.compile) == ("bf16", True, True)
    with pytest.raises(ConfigError, match="precision"):
        config_from_dict({"train": {"precision": "fp16"}})
    with pytest.raises(ValueError, match="unknown precision"):
        TrainSettings(precision="fp8")
