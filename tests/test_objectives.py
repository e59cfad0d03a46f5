"""HSC and BCE losses and scores against values worked out by hand.

Paper notation (Liznerski et al., Section 3.2): HSC's normal loss is h(z), its
outlier loss -log(1 - exp(-h(z))), its score h(z); the default h is the
pseudo-Huber function sqrt(||z||^2 + 1) - 1.  BCE's score is sigmoid(logit),
the outlier probability.
"""

from __future__ import annotations

import math

import pytest
import torch

from oesearch.training.objectives import BCE, HSC, make_objective

# Row 0 has ||z||_2 = 5 (a 3-4-5 triangle), ||z||_1 = 7, ||z||^2 = 25; row 1 is the centre.
Z = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
NORMAL = torch.tensor([False, False])
OUTLIER = torch.tensor([True, True])

# h(z) per radial function, by hand, for the two rows of Z.
H_BY_HAND = {
    "pseudo_huber": [math.sqrt(25 + 1) - 1, math.sqrt(0 + 1) - 1],
    "l1": [7.0, 0.0],
    "l2": [5.0, 0.0],
    "l2_squared": [25.0, 0.0],
}


def outlier_loss_by_hand(h: float) -> float:
    return -math.log(1 - math.exp(-h))


@pytest.mark.parametrize("radial", sorted(H_BY_HAND))
def test_hsc_score_and_normal_loss_are_h(radial: str) -> None:
    objective = make_objective("hsc", radial)
    expected = torch.tensor(H_BY_HAND[radial], dtype=torch.float64)
    torch.testing.assert_close(objective.score(Z), expected)
    torch.testing.assert_close(objective.loss(Z, NORMAL), expected)


def test_hsc_default_is_pseudo_huber() -> None:
    assert make_objective("hsc").score(Z)[0].item() == pytest.approx(math.sqrt(26) - 1, rel=1e-12)
    assert HSC().score(Z)[0].item() == pytest.approx(math.sqrt(26) - 1, rel=1e-12)


@pytest.mark.parametrize("radial", sorted(H_BY_HAND))
def test_hsc_outlier_loss_by_hand(radial: str) -> None:
    objective = make_objective("hsc", radial)
    h = H_BY_HAND[radial][0]
    loss = objective.loss(Z[:1], OUTLIER[:1]).item()
    # The eps guard (1e-9) inside the log changes the value by at most ~1e-9 / (1 - e^-h).
    assert loss == pytest.approx(outlier_loss_by_hand(h), rel=1e-6, abs=1e-8)


def test_hsc_outlier_loss_at_moderate_radius() -> None:
    # ||z|| = 1 -> pseudo-Huber h = sqrt(2) - 1 ~ 0.414: a clearly non-negligible loss.
    z = torch.tensor([[0.6, 0.8]], dtype=torch.float64)
    h = math.sqrt(2) - 1
    expected = -math.log(1 - math.exp(-h))
    assert expected > 1.0  # sanity of the hand value: an outlier near the centre costs a lot
    assert HSC().loss(z, torch.tensor([True])).item() == pytest.approx(expected, rel=1e-6)


def test_hsc_mixed_batch_picks_loss_per_sample() -> None:
    out = HSC().loss(Z, torch.tensor([False, True]))
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(math.sqrt(26) - 1, rel=1e-12)  # normal: h
    # Outlier at the centre: h = 0, 1 - exp(0) = 0, so the loss is -log(eps), large but finite.
    assert out[1].item() == pytest.approx(-math.log(HSC().eps), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hsc_eps_keeps_outlier_loss_finite_at_centre(dtype: torch.dtype) -> None:
    z = torch.zeros(3, 4, dtype=dtype, requires_grad=True)
    loss = HSC().loss(z, torch.tensor([True, True, True]))
    assert torch.isfinite(loss).all()
    # Without a guard the value would be -log(0) = inf; with it, it is -log(eps) ~ 20.7.
    assert loss[0].item() == pytest.approx(-math.log(1e-9), rel=1e-3)
    loss.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_hsc_outlier_loss_decreases_with_distance() -> None:
    radii = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    z = torch.stack([radii, torch.zeros_like(radii)], dim=1)
    out = HSC().loss(z, torch.ones(5, dtype=torch.bool))
    assert (out[1:] < out[:-1]).all()
    normal = HSC().loss(z, torch.zeros(5, dtype=torch.bool))
    assert (normal[1:] > normal[:-1]).all()


def test_hsc_larger_norm_is_more_anomalous() -> None:
    z = torch.tensor([[0.1, 0.0], [1.0, 1.0], [-3.0, 0.0], [10.0, -10.0]])
    for radial in H_BY_HAND:
        scores = make_objective("hsc", radial).score(z)
        assert (scores[1:] > scores[:-1]).all(), radial


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("logit", [-3.0, -0.5, 0.0, 0.7, 4.0])
def test_bce_loss_by_hand(logit: float) -> None:
    out = torch.tensor([logit, logit], dtype=torch.float64)
    loss = BCE().loss(out, torch.tensor([True, False]))
    # Outlier target 1: -log(sigmoid(x)); normal target 0: -log(1 - sigmoid(x)).
    assert loss[0].item() == pytest.approx(-math.log(sigmoid(logit)), rel=1e-9)
    assert loss[1].item() == pytest.approx(-math.log(1 - sigmoid(logit)), rel=1e-9)


def test_bce_at_zero_logit_is_log_two() -> None:
    loss = BCE().loss(torch.zeros(2), torch.tensor([True, False]))
    torch.testing.assert_close(loss, torch.full((2,), math.log(2)))


def test_bce_score_is_outlier_probability_increasing_in_logit() -> None:
    logits = torch.tensor([-2.0, 0.0, 1.5], dtype=torch.float64)
    scores = BCE().score(logits)
    expected = torch.tensor([sigmoid(-2.0), 0.5, sigmoid(1.5)], dtype=torch.float64)
    torch.testing.assert_close(scores, expected)
    assert (scores[1:] > scores[:-1]).all()


def test_bce_loss_stays_finite_for_extreme_logits() -> None:
    loss = BCE().loss(torch.tensor([-200.0, 200.0]), torch.tensor([True, False]))
    # -log(sigmoid(-200)) = 200 + log(1 + e^-200) ~ 200, computed without overflow.
    torch.testing.assert_close(loss, torch.tensor([200.0, 200.0]))


def test_make_objective_heads() -> None:
    assert make_objective("hsc").head is False
    assert make_objective("bce").head is True
    assert make_objective("hsc", "l1") == HSC(radial="l1")
    assert make_objective("bce") == BCE()


def test_make_objective_errors() -> None:
    with pytest.raises(ValueError, match="unknown method 'ocsvm'.*'focal', 'dsad', 'dsvdd'"):
        make_objective("ocsvm")
    with pytest.raises(ValueError, match="unknown HSC radial function 'l3'") as err:
        make_objective("hsc", "l3")
    for name in H_BY_HAND:
        assert name in str(err.value)
