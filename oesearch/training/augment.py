"""Batched, on-device augmentation and frequency filters (no PIL, no per-sample Python).

Augmentations act on whole batches of pixels in [0, 1], shape (B, C, H, W),
with every random parameter drawn from one ``torch.Generator`` (the trainers'
is on the CPU) and then moved to the batch's device, so a training's
augmentations follow from its seed, the same on every device.  Each transform
matches a torchvision definition given the same parameters (tested):
crop = ``pad`` with zeros then ``crop``; flip = ``horizontal_flip``;
jitter = ``adjust_brightness`` then ``adjust_contrast`` (a fixed order,
unlike ``ColorJitter``'s random one).  Gaussian noise is added unclamped.

Frequency filters follow the paper's Appendix C (SPEC section 5): 2-D FFT per
channel, shifted so frequency 0 sits at index (H//2, W//2); LPF with magnitude
m zeroes the first and last m rows and columns; HPF with magnitude m zeroes
the centred m x m block (rows and columns H//2 - m//2 .. H//2 - m//2 + m - 1);
then the inverse FFT's real part.  m = 0 is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from oesearch.config import AugmentConfig, field_default
import torch.nn.functional as F

__all__ = ["Augment", "random_crop", "random_flip", "color_jitter", "gaussian_noise", "frequency_filter", "filter_mask"]


@dataclass(frozen=True)
class Augment:
    """Which augmentations a training applies to each batch (normal and OE halves alike)."""

    # train.augment's fields and defaults (oesearch.config.AugmentConfig says what each does)
    crop: int = field_default(AugmentConfig, "crop")  # zero padding before a random crop back to H x W
    flip: bool = field_default(AugmentConfig, "flip")  # horizontal flip with probability 1/2
    brightness: float = field_default(AugmentConfig, "brightness")  # factor from [max(0, 1 - b), 1 + b]
    contrast: float = field_default(AugmentConfig, "contrast")  # factor from [max(0, 1 - c), 1 + c]
    noise: float = field_default(AugmentConfig, "noise")  # std of additive Gaussian pixel noise

    @property
    def active(self) -> bool:
        return bool(self.crop or self.flip or self.brightness or self.contrast or self.noise)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.crop:
            x = random_crop(x, self.crop, gen)
        if self.flip:
            x = random_flip(x, gen)
        if self.brightness or self.contrast:
            x = color_jitter(x, self.brightness, self.contrast, gen)
        if self.noise:
            x = gaussian_noise(x, self.noise, gen)
        return x


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=gen, device=gen.device)).to(device)


def crop_offsets(n: int, pad: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, 2) top/left offsets into the padded image, each uniform in [0, 2 * pad]."""
    return torch.randint(0, 2 * pad + 1, (n, 2), generator=gen, device=gen.device).to(device)


def crop_at(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``pad`` and cut each image's H x W window at its (top, left) offset, in one gather."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    return crop_at(x, pad, crop_offsets(len(x), pad, gen, x.device))


def random_flip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    flip = (torch.rand(len(x), generator=gen, device=gen.device) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _grayscale_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean of torchvision's grayscale (ITU-R 601-2 luma for RGB), shape (B, 1, 1, 1)."""
    if x.shape[1] == 3:
        gray = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    else:
        gray = x[:, 0]
    return gray.mean(dim=(-2, -1)).reshape(-1, 1, 1, 1)


def jitter_with(x: torch.Tensor, brightness: torch.Tensor | None, contrast: torch.Tensor | None) -> torch.Tensor:
    """Brightness then contrast with per-image factors (B,), clamped to [0, 1] after each."""
    if brightness is not None:
        x = (x * brightness[:, None, None, None]).clamp(0, 1)
    if contrast is not None:
        c = contrast[:, None, None, None]
        x = (c * x + (1 - c) * _grayscale_mean(x)).clamp(0, 1)
    return x


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, gen: torch.Generator) -> torch.Tensor:
    n, dev = len(x), x.device
    b = _uniform(n, max(0.0, 1 - brightness), 1 + brightness, gen, dev) if brightness else None
    c = _uniform(n, max(0.0, 1 - contrast), 1 + contrast, gen, dev) if contrast else None
    return jitter_with(x, b, c)


def gaussian_noise(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)


def filter_mask(kind: str, magnitude: int, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W) 0/1 mask over the *shifted* spectrum: what ``kind`` ('lpf' or 'hpf') keeps."""
    m = int(magnitude)
    if kind not in ("lpf", "hpf"):
        raise ValueError(f"unknown filter {kind!r}; choose 'lpf' or 'hpf'")
    if m < 0 or (kind == "lpf" and 2 * m > min(height, width)) or (kind == "hpf" and m > min(height, width)):
        raise ValueError(f"{kind} magnitude {m} does not fit {height}x{width} images")
    mask = torch.ones(height, width, device=device)
    if m == 0:
        return mask
    if kind == "lpf":
        mask[:m] = 0
        mask[height - m :] = 0
        mask[:, :m] = 0
        mask[:, width - m :] = 0
    else:
        top, left = height // 2 - m // 2, width // 2 - m // 2
        mask[top : top + m, left : left + m] = 0
    return mask


def frequency_filter(x: torch.Tensor, kind: str, magnitude: int) -> torch.Tensor:
    """LPF/HPF every channel of a batch (B, C, H, W) as the paper defines it; returns real images."""
    if magnitude == 0:
        return x
    mask = filter_mask(kind, magnitude, x.shape[-2], x.shape[-1], x.device)
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)) * mask
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real.to(x.dtype)
