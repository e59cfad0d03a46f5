"""The analysis views show what the network saw when a run used an LPF/HPF filter."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from oesearch.analysis import filter_view
from oesearch.config import config_from_dict


def runs_with(*filters: dict) -> list:
    """Objects carrying a real Config, which is all filter_view reads of a run."""
    return [SimpleNamespace(config=config_from_dict({"train": {"filter": f}})) for f in filters]


def test_no_view_for_unfiltered_or_mixed_runs() -> None:
    assert filter_view(runs_with({"kind": "none"})) is None
    assert filter_view(runs_with({"kind": "lpf", "magnitude": 0})) is None
    assert filter_view(runs_with({"kind": "lpf", "magnitude": 2}, {"kind": "hpf", "magnitude": 2})) is None


def test_lpf_view_equals_a_numpy_low_pass() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
    view = filter_view(runs_with({"kind": "lpf", "magnitude": 2}, {"kind": "lpf", "magnitude": 2}))
    # Independently: zero the outer 2 rows and columns of the centred spectrum (paper Appendix C).
    spectrum = np.fft.fftshift(np.fft.fft2(images[..., 0] / 255.0), axes=(-2, -1))
    mask = np.zeros((8, 8))
    mask[2:-2, 2:-2] = 1
    low = np.fft.ifft2(np.fft.ifftshift(spectrum * mask, axes=(-2, -1))).real
    expected = np.round(np.clip(low, 0, 1) * 255).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(view(images), expected)
    constant = np.full((1, 8, 8, 1), 77, dtype=np.uint8)
    np.testing.assert_array_equal(view(constant), constant), "a constant image passes a low-pass unchanged"


def test_hpf_view_is_stretched_to_be_visible() -> None:
    view = filter_view(runs_with({"kind": "hpf", "magnitude": 2}))
    images = np.random.default_rng(1).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    out = view(images)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert all(o.min() == 0 and o.max() == 255 for o in out), "each image spans the full range"
