"""On-device augmentation and frequency filters against their reference definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from oesearch.training import PreparedTask, TrainSettings, make_objective, train_and_evaluate
from oesearch.training.augment import (
    Augment,
    crop_at,
    crop_offsets,
    filter_mask,
    frequency_filter,
    jitter_with,
    random_flip,
)
from oesearch.training.packed import train_packed

X = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_crop_matches_torchvision_pad_then_crop() -> None:
    offsets = crop_offsets(len(X), 4, torch.Generator().manual_seed(1), X.device)
    assert offsets.min() >= 0 and offsets.max() <= 8 and len(set(map(tuple, offsets.tolist()))) > 1
    ours = crop_at(X, 4, offsets)
    for img, got, (top, left) in zip(X, ours, offsets.tolist()):
        expected = TF.crop(TF.pad(img, [4, 4, 4, 4], fill=0), top, left, 32, 32)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_flip_matches_torchvision_for_the_flipped_ones() -> None:
    gen = torch.Generator().manual_seed(2)
    decisions = torch.rand(len(X), generator=torch.Generator().manual_seed(2)) < 0.5
    assert 0 < decisions.sum() < len(X)  # both cases occur
    ours = random_flip(X, gen)
    for img, got, flipped in zip(X, ours, decisions.tolist()):
        torch.testing.assert_close(got, TF.horizontal_flip(img) if flipped else img, rtol=0, atol=0)


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_matches_torchvision_brightness_then_contrast(channels: int) -> None:
    x = X[:, :channels]
    b = torch.tensor([0.6, 0.9, 1.0, 1.2, 1.4, 0.8])
    c = torch.tensor([0.7, 1.3, 1.0, 0.5, 1.1, 1.5])
    ours = jitter_with(x, b, c)
    for img, got, bf, cf in zip(x, ours, b.tolist(), c.tolist()):
        expected = TF.adjust_contrast(TF.adjust_brightness(img, bf), cf)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_augment_draws_everything_from_its_generator() -> None:
    aug = Augment(crop=4, flip=True, brightness=0.4, contrast=0.4, noise=0.05)
    a = aug(X, torch.Generator().manual_seed(9))
    b = aug(X, torch.Generator().manual_seed(9))
    c = aug(X, torch.Generator().manual_seed(10))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c) and a.shape == X.shape
    assert not Augment().active and aug.active


def test_noise_has_the_asked_std() -> None:
    aug = Augment(noise=0.1)
    x = torch.zeros(64, 3, 32, 32)
    noise = aug(x, torch.Generator().manual_seed(0))
    assert abs(noise.std().item() - 0.1) < 0.002 and abs(noise.mean().item()) < 0.002


def _numpy_filter(images: np.ndarray, kind: str, m: int) -> np.ndarray:
    """Appendix C spelled out in NumPy, loop by loop: FFT per channel, shift, zero, inverse, real part."""
    out = np.empty_like(images, dtype=np.float64)
    h, w = images.shape[-2:]
    for idx in np.ndindex(images.shape[:-2]):
        spec = np.fft.fftshift(np.fft.fft2(images[idx]))
        if kind == "lpf":
            for r in range(h):
                for col in range(w):
                    if r < m or r >= h - m or col < m or col >= w - m:
                        spec[r, col] = 0
        else:
            cy, cx = h // 2, w // 2  # frequency 0 after the shift
            spec[cy - m // 2 : cy - m // 2 + m, cx - m // 2 : cx - m // 2 + m] = 0
        out[idx] = np.fft.ifft2(np.fft.ifftshift(spec)).real
    return out


@pytest.mark.parametrize("kind, m", [("lpf", 0), ("lpf", 3), ("lpf", 14), ("lpf", 15), ("hpf", 1), ("hpf", 3), ("hpf", 14)])
def test_filters_match_numpy_reference(kind: str, m: int) -> None:
    x = X[:3].double()
    torch.testing.assert_close(frequency_filter(x, kind, m).numpy(), _numpy_filter(x.numpy(), kind, m),
                               rtol=1e-9, atol=1e-9)


def test_filter_masks_mean_what_the_paper_says() -> None:
    # Paper Appendix C: LPF magnitude 15 on 32x32 leaves 4 "pixels" in the centre; HPF zeroes m x m.
    lpf = filter_mask("lpf", 15, 32, 32)
    assert lpf.sum() == 4 and lpf[15:17, 15:17].all()
    hpf = filter_mask("hpf", 14, 32, 32)
    assert (hpf == 0).sum() == 14 * 14 and hpf[16, 16] == 0  # the 2m x 2m bug would zero 784
    # Any HPF removes frequency 0: every filtered channel has zero mean.
    assert frequency_filter(X, "hpf", 1).mean(dim=(-2, -1)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="does not fit"):
        filter_mask("lpf", 17, 32, 32)
    with pytest.raises(ValueError, match="unknown filter"):
        filter_mask("bandpass", 1, 32, 32)


def test_filtered_task_filters_train_test_and_oe() -> None:
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    test = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    task = PreparedTask.from_arrays(train, test, np.arange(6) % 2 == 0, filter=("lpf", 2))
    raw = torch.tensor(train).permute(0, 3, 1, 2).float() / 255
    filtered = frequency_filter(raw, "lpf", 2)
    torch.testing.assert_close(task.prepare(task.train) * task.std + task.mean, filtered, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(task.mean.flatten(), filtered.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    oe = task.normalise(test[:1]) * task.std + task.mean
    torch.testing.assert_close(oe, frequency_filter(torch.tensor(test[:1]).permute(0, 3, 1, 2).float() / 255, "lpf", 2),
                               rtol=1e-5, atol=1e-5)


def test_augmented_training_is_seeded_and_packs() -> None:
    rng = np.random.default_rng(4)
    train = rng.integers(0, 120, (64, 8, 8, 1), dtype=np.uint8)
    test = np.concatenate([rng.integers(0, 120, (16, 8, 8, 1)), rng.integers(100, 256, (16, 8, 8, 1))]).astype(np.uint8)
    task = PreparedTask.from_arrays(train, test, np.r_[np.zeros(16, bool), np.ones(16, bool)])
    task64 = task.astype(torch.float64)
    oe = rng.integers(150, 256, (1, 8, 8, 1), dtype=np.uint8)
    settings = TrainSettings(epochs=2, batch_size=8, milestones=(1,), augment=Augment(crop=2, flip=True, brightness=0.3,
                                                                                      contrast=0.3, noise=0.02))
    objective = make_objective("hsc")
    plain = train_and_evaluate(task64, oe, objective, TrainSettings(epochs=2, batch_size=8, milestones=(1,)), 5, 12)
    a = train_and_evaluate(task64, oe, objective, settings, 5, record_steps=12)
    assert a.step_losses == train_and_evaluate(task64, oe, objective, settings, 5, record_steps=12).step_losses
    assert a.step_losses != plain.step_losses  # augmentation changes the batches
    packed = train_packed(task64, [oe, oe], objective, settings, [5, 6], record_steps=12)
    np.testing.assert_allclose(packed.step_losses[0], a.step_losses, rtol=1e-6)


def test_filter_properties_of_appendix_c() -> None:
    """m = 0 is the identity; HPF output has zero mean; LPF keeps a constant image; the FFT shows what was cut.

    Appendix C keeps the real part of the inverse FFT, so the output spectrum is the masked one made
    Hermitian: zero where a frequency and its mirror (-f) are both cut, unchanged where neither is, and
    half where only one of the pair is (on even sizes the masks are not point-symmetric).
    """
    x = X.double()
    torch.testing.assert_close(frequency_filter(x, "lpf", 0), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(frequency_filter(x, "hpf", 0), x, rtol=0, atol=1e-12)
    for m in (1, 2, 6, 14):
        assert frequency_filter(x, "hpf", m).mean(dim=(-2, -1)).abs().max() < 1e-12
    constant = torch.full((2, 3, 32, 32), 0.37, dtype=torch.float64)
    for m in (1, 5, 15):
        torch.testing.assert_close(frequency_filter(constant, "lpf", m), constant, rtol=0, atol=1e-12)
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")  # shifted: frequency 0 at (16, 16)
    for kind, m in (("lpf", 5), ("lpf", 14), ("hpf", 5), ("hpf", 6)):
        before = np.fft.fftshift(np.fft.fft2(x.numpy()), axes=(-2, -1))
        after = np.fft.fftshift(np.fft.fft2(frequency_filter(x, kind, m).numpy()), axes=(-2, -1))
        if kind == "lpf":  # the first and last m rows and columns of the shifted spectrum
            cut = (rows < m) | (rows >= 32 - m) | (cols < m) | (cols >= 32 - m)
        else:  # the centred m x m block around frequency 0
            lo = 16 - m // 2
            cut = (rows >= lo) & (rows < lo + m) & (cols >= lo) & (cols < lo + m)
        mirror = cut[(32 - rows) % 32, (32 - cols) % 32]
        both, neither = cut & mirror, ~cut & ~mirror
        assert both.any() and neither.any()
        assert np.abs(after[..., both]).max() < 1e-9, f"{kind} {m}: a cut frequency survived"
        np.testing.assert_allclose(after[..., neither], before[..., neither], atol=1e-9)
        np.testing.assert_allclose(after[..., cut ^ mirror], before[..., cut ^ mirror] / 2, atol=1e-9)
