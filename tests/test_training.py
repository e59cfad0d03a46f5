"""LeNet variants, data preparation and the shared trainer, on tiny synthetic tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oesearch.models import ModelSetup, build_model
from oesearch.models.lenet import LeNet, spec_for_size
from oesearch.training.augment import Augment
from oesearch.training import (
    NonFiniteLossError,
    PreparedTask,
    TrainSettings,
    make_objective,
    train_and_evaluate,
)

# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    "shape, features",
    [((8, 8, 1), 32), ((28, 28, 1), 32), ((32, 32, 3), 256)],
)
def test_lenet_output_shapes(shape: tuple[int, int, int], features: int) -> None:
    h, w, c = shape
    x = torch.randn(4, c, h, w)
    phi = build_model(shape, head=False)
    assert phi(x).shape == (4, features)
    with_head = build_model(shape, head=True)
    assert with_head(x).shape == (4,)


def test_lenet_paper_widths() -> None:
    # Paper Appendix G.1: CIFAR 32-64-128 convs, FC 512, linear 256; F/MNIST 16-32, FC 64, 32.
    cifar = build_model((32, 32, 3), head=False)
    convs = [m for m in cifar.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in cifar.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_channels for m in convs] == [32, 64, 128]
    assert all(m.kernel_size == (5, 5) for m in convs)
    # 32 -> 16 -> 8 -> 4 after three 2x2 pools: 128 * 4 * 4 inputs to the FC layer.
    assert [(m.in_features, m.out_features) for m in linears] == [(128 * 4 * 4, 512), (512, 256)]
    mnist = build_model((28, 28, 1), head=False)
    convs = [m for m in mnist.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in mnist.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_channels for m in convs] == [16, 32]
    assert [(m.in_features, m.out_features) for m in linears] == [(32 * 7 * 7, 64), (64, 32)]


def test_unsupported_sizes() -> None:
    with pytest.raises(ValueError, match=r"no LeNet variant for 16x16 inputs; supported sizes are \[8, 28, 32\]"):
        build_model((16, 16, 1), head=False)
    with pytest.raises(ValueError, match="square"):
        build_model((8, 16, 1), head=False)
    with pytest.raises(ValueError, match="no LeNet variant"):
        spec_for_size(224)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_bias_free_setup_has_no_bias_except_the_head(shape: tuple[int, int, int]) -> None:
    bias_free = ModelSetup(bias=False, batchnorm_affine=False)
    phi = build_model(shape, head=False, setup=bias_free)
    for module in phi.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            assert module.bias is None
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert module.weight is None and module.bias is None  # affine=False
    names = [name for name, _ in build_model(shape, head=True, setup=bias_free).named_parameters()]
    assert [n for n in names if n.endswith("bias")] == ["head.bias"]
    assert all(n.endswith("weight") for n in names if n != "head.bias")


def test_lenet_without_bias_maps_the_zero_image_to_zero() -> None:
    # No bias anywhere: in eval mode with fresh BN statistics (running mean 0, var 1) every
    # layer maps 0 to 0, so the zero image lands exactly on z = 0.
    phi = LeNet(spec_for_size(8), 1, setup=ModelSetup(bias=False, batchnorm_affine=False)).eval()
    assert torch.count_nonzero(phi(torch.zeros(2, 1, 8, 8))) == 0


# ---------------------------------------------------------------- a tiny task

rng = np.random.default_rng(0)


def _normal(n: int) -> np.ndarray:
    """Dark noisy 8x8 images with a bright 2x2 centre."""
    x = rng.integers(0, 60, size=(n, 8, 8, 1))
    x[:, 3:5, 3:5] += 150
    return x.astype(np.uint8)


def _anomalous(n: int) -> np.ndarray:
    """Like normal ones, plus brighter top and bottom borders."""
    x = _normal(n).astype(np.int64)
    x[:, 0, :] += 40
    x[:, -1, :] += 40
    return x.clip(0, 255).astype(np.uint8)


TRAIN = _normal(64)
TEST = np.concatenate([_normal(32), _anomalous(32)])
TEST_ANOMALOUS = np.r_[np.zeros(32, bool), np.ones(32, bool)]
OE = _anomalous(1)
SETTINGS = TrainSettings(epochs=3, batch_size=16, milestones=(2,))


@pytest.fixture(scope="module")
def task() -> PreparedTask:
    return PreparedTask.from_arrays(TRAIN, TEST, TEST_ANOMALOUS)


def test_prepared_task_normalises_with_train_statistics() -> None:
    rgb_rng = np.random.default_rng(5)
    train = rgb_rng.integers(0, 256, size=(40, 8, 8, 3)).astype(np.uint8)
    train[..., 1] //= 4  # channels with different statistics
    train[..., 2] = 200 + train[..., 2] // 8
    test = rgb_rng.integers(0, 256, size=(10, 8, 8, 3)).astype(np.uint8)
    prepared = PreparedTask.from_arrays(train, test, np.arange(10) % 2 == 0)

    x = train.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2), ddof=1)
    assert prepared.train.shape == (40, 3, 8, 8)
    np.testing.assert_allclose(prepared.mean.flatten().numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(prepared.std.flatten().numpy(), std, rtol=1e-4)
    normalised = prepared.prepare(prepared.train).numpy()
    np.testing.assert_allclose(normalised.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(axis=(0, 2, 3), ddof=1), 1.0, rtol=1e-4)
    # Test images use the *train* statistics, pixel by pixel.
    expected_test = ((test.astype(np.float64) / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(prepared.prepare(prepared.test).numpy(), expected_test, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(prepared.normalise(test[:3]).numpy(), expected_test[:3], rtol=1e-4, atol=1e-4)
    assert prepared.image_shape == (8, 8, 3)
    assert prepared.test_anomalous.dtype == bool


def test_prepared_task_constant_channel_is_centred_but_not_scaled() -> None:
    train = np.full((10, 8, 8, 1), 77, dtype=np.uint8)
    test = np.stack([np.full((8, 8, 1), 77), np.full((8, 8, 1), 255)]).astype(np.uint8)
    prepared = PreparedTask.from_arrays(train, test, np.array([False, True]))
    normal = prepared.prepare(prepared.train)
    assert torch.isfinite(normal).all()
    np.testing.assert_allclose(normal.numpy(), 0.0, atol=1e-6)
    # std 0 is replaced by 1: a test pixel of 255 becomes (255 - 77) / 255, not a huge number.
    test_x = prepared.prepare(prepared.test)
    np.testing.assert_allclose(test_x[1].numpy(), (255 - 77) / 255, rtol=1e-5)
    np.testing.assert_allclose(test_x[0].numpy(), 0.0, atol=1e-6)


def test_prepared_task_keeps_uint8_pixels_and_normalises_batches_like_numpy() -> None:
    rgb_rng = np.random.default_rng(6)
    train = rgb_rng.integers(0, 256, size=(50, 8, 8, 3)).astype(np.uint8)
    test = rgb_rng.integers(0, 256, size=(12, 8, 8, 3)).astype(np.uint8)
    prepared = PreparedTask.from_arrays(train, test, np.arange(12) % 2 == 0)
    # The device copies are the pixels themselves: uint8, a quarter of float32's bytes.
    assert prepared.train.dtype == prepared.test.dtype == torch.uint8
    np.testing.assert_array_equal(prepared.train.numpy(), train.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(prepared.test.numpy(), test.transpose(0, 3, 1, 2))
    assert prepared.train.untyped_storage().nbytes() == train.nbytes
    # A gathered batch, normalised on its own, equals (x / 255 - mean) / std over the whole set in NumPy.
    x = train.astype(np.float64) / 255.0
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2), ddof=1)
    rows = np.array([7, 0, 49, 23, 23])
    reference = ((x[rows] - mean) / std).transpose(0, 3, 1, 2)
    batch = prepared.prepare(prepared.train[torch.from_numpy(rows)])
    assert batch.dtype == torch.float32 and batch.shape == (5, 3, 8, 8)
    np.testing.assert_allclose(batch.numpy(), reference, rtol=1e-5, atol=1e-5)
    # ... and equals, bit for bit, normalising the whole set up front (the old representation).
    whole = (torch.from_numpy(train).permute(0, 3, 1, 2).float() / 255.0 - prepared.mean) / prepared.std
    assert torch.equal(batch, whole[torch.from_numpy(rows)])
    # In float64 the same batch is the float64 computation.
    batch64 = prepared.astype(torch.float64).prepare(prepared.train[torch.from_numpy(rows)])
    assert batch64.dtype == torch.float64
    np.testing.assert_allclose(batch64.numpy(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["hsc", "bce"])
def test_same_seed_same_result_different_seed_different(task: PreparedTask, method: str) -> None:
    objective = make_objective(method)
    a = train_and_evaluate(task, OE, objective, SETTINGS, seed=11)
    b = train_and_evaluate(task, OE, objective, SETTINGS, seed=11)
    c = train_and_evaluate(task, OE, objective, SETTINGS, seed=12)
    assert a.auc == b.auc
    assert a.epoch_losses == b.epoch_losses
    assert len(a.epoch_losses) == SETTINGS.epochs
    assert all(math.isfinite(v) for v in a.epoch_losses)
    assert a.epoch_losses != c.epoch_losses
    assert 0.0 <= a.auc <= 1.0


def test_training_reduces_the_loss(task: PreparedTask) -> None:
    for method in ("hsc", "bce"):
        losses = train_and_evaluate(task, OE, make_objective(method), SETTINGS, seed=3).epoch_losses
        assert losses[-1] < losses[0], (method, losses)
    # BCE starts near log 2 (a fresh head outputs logits near 0 on a balanced batch).
    first = train_and_evaluate(task, OE, make_objective("bce"), TrainSettings(epochs=1, batch_size=64, lr=1e-12,
                                                                              milestones=()), seed=3)
    assert 0.3 < first.epoch_losses[0] < 1.5


def test_training_leaves_global_rng_untouched(task: PreparedTask) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_and_evaluate(task, OE, make_objective("hsc"), TrainSettings(epochs=1, batch_size=16, milestones=()), seed=0)
    torch.testing.assert_close(torch.rand(3), expected)


def test_huge_learning_rate_diverges_and_raises(task: PreparedTask) -> None:
    lr = 1e20
    # First show, independently of the trainer, that this rate really diverges: the same
    # network and a few plain Adam steps of the same BCE loss give a non-finite loss.
    torch.manual_seed(0)
    model = build_model((8, 8, 1), head=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = torch.cat([task.prepare(task.train[:16]), task.normalise(np.repeat(OE, 16, axis=0))])
    y = torch.cat([torch.zeros(16), torch.ones(16)])
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not all(math.isfinite(v) for v in losses), losses

    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|-?inf) in epoch 1/3"):
        train_and_evaluate(task, OE, make_objective("bce"), TrainSettings(epochs=3, batch_size=16, lr=lr,
                                                                          milestones=()), seed=0)
    # HSC at this rate also ends non-finite (loss or scores); either way it is reported.
    with pytest.raises(NonFiniteLossError):
        train_and_evaluate(task, OE, make_objective("hsc"), TrainSettings(epochs=3, batch_size=16, lr=lr,
                                                                          milestones=()), seed=0)
    # The same settings at a sane rate train without error (the error is the rate's doing).
    ok = train_and_evaluate(task, OE, make_objective("bce"), TrainSettings(epochs=3, batch_size=16, milestones=()),
                            seed=0)
    assert all(math.isfinite(v) for v in ok.epoch_losses)


def test_several_oe_images_are_accepted(task: PreparedTask) -> None:
    result = train_and_evaluate(task, _anomalous(3), make_objective("hsc"), SETTINGS, seed=0)
    assert len(result.epoch_losses) == 3 and 0.0 <= result.auc <= 1.0


@pytest.mark.parametrize("method", ["hsc", "bce"])
def test_a_large_oe_set_prepared_per_batch_trains_bit_identically(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A corpus-sized OE stays uint8 on the device and is filtered and normalised per batch: the same training."""
    import oesearch.training.trainer as trainer

    filtered = PreparedTask.from_arrays(TRAIN, TEST, TEST_ANOMALOUS, filter=("hpf", 2))
    settings = TrainSettings(epochs=2, batch_size=16, milestones=(1,), augment=Augment(crop=1, flip=True, noise=0.05))
    oe = _anomalous(40)
    runs = {}
    for limit in (10**12, 0):  # everything up front, then everything per batch
        monkeypatch.setattr(trainer, "OE_UPFRONT_BYTES", limit)
        runs[limit] = train_and_evaluate(filtered, oe, make_objective(method), settings, seed=3, record_steps=8)
    upfront, per_batch = runs[10**12], runs[0]
    assert per_batch.step_losses == upfront.step_losses and per_batch.epoch_losses == upfront.epoch_losses
    assert per_batch.auc == upfront.auc
