"""The embedded default: data that ships with scikit-learn, so a run needs no download.

Normal data are scikit-learn's 1,797 handwritten 8x8 digits, split per class
into train and test with a fixed seed.  The OE corpus is grayscale 8x8 patches
cut at several scales from scikit-learn's two sample photographs (china.jpg,
flower.jpg): real natural-image content, from smooth sky to sharp edges.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from oesearch.data.store import ImageStore

__all__ = ["load_digits_split", "load_natural_patches"]


def load_digits_split(split: str, test_fraction: float = 0.5, split_seed: int = 0) -> ImageStore:
    """One split of sklearn's digits as (N, 8, 8, 1) uint8, split per class by ``split_seed``."""
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    digits = load_digits()
    # Pixel values are 0..16; stretch them to the 0..255 range of every other source.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(split_seed)
    chosen = []
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(members) * test_fraction))
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    index = np.sort(np.concatenate(chosen))
    return ImageStore(images[index], labels[index], tuple(str(d) for d in range(10)))


def load_natural_patches(
    patch_size: int = 8, scales: tuple[int, ...] = (2, 4, 8, 16), stride: int = 4
) -> ImageStore:
    """Grayscale ``patch_size`` patches of the two sklearn sample photos, one label per photo.

    For each downscaling factor in ``scales`` the photo is shrunk with an
    antialiasing filter, then patches are cut on a grid with step ``stride``.
    """
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    names = tuple(name.rsplit("/", 1)[-1].removesuffix(".jpg") for name in photos.filenames)
    patches, labels = [], []
    for label, photo in enumerate(photos.images):
        gray = Image.fromarray(photo).convert("L")
        for scale in scales:
            small = np.asarray(gray.resize((gray.width // scale, gray.height // scale), Image.Resampling.LANCZOS))
            windows = np.lib.stride_tricks.sliding_window_view(small, (patch_size, patch_size))
            grid = windows[::stride, ::stride].reshape(-1, patch_size, patch_size)
            patches.append(grid)
            labels.append(np.full(len(grid), label, dtype=np.int64))
    images = np.ascontiguousarray(np.concatenate(patches)[..., None])
    return ImageStore(images, np.concatenate(labels), names)
