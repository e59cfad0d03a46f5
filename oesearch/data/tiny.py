"""The 80 Million Tiny Images OE corpora: ``tiny_images.bin`` and the 300K random images ``.npy``.

``tiny_images.bin`` is 79,302,017 records of 3,072 bytes, no header.  A record
is one 32x32 RGB image stored channel by channel, each channel column-major:
byte ``c*1024 + x*32 + y`` is row ``y``, column ``x``, channel ``c``.  That is
what the reference loaders' ``reshape((32, 32, 3), order="F")`` reads (Hendrycks
et al., Outlier Exposure).  The file (~244 GB) is memory-mapped and only the
chosen records are read.

The CIFAR-exclusion list (``80mn_cifar_idxs.txt``) holds one record index per
line, counted from 1 ("indices in file take the 80mn database to start at 1").

``300K_random_images.npy`` (Hendrycks et al.) is a (300000, 32, 32, 3) uint8
array of 80MTI images with CIFAR removed, already HWC.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from oesearch.data.store import DataError, ImageStore

__all__ = ["TINY_IMAGES_RECORDS", "load_random_300k", "load_tiny_images", "read_index_list"]

TINY_IMAGES_RECORDS = 79_302_017
_RECORD = 3 * 32 * 32
_MAX_WHOLE = 2_000_000  # 6 GB decoded: beyond this a corpus must be a drawn subset
_CHUNK = 65_536  # records gathered per step: bounds the temporary index arrays, not the result
_HOW_TO_GET_80M = (
    "The 80 Million Tiny Images dataset was withdrawn by its authors in 2020 and has no public download; "
    "use a copy your lab keeps (tiny_images.bin, with 80mn_cifar_idxs.txt from "
    "https://github.com/hendrycks/outlier-exposure), or the 300K random images .npy."
)
_HOW_TO_GET_300K = (
    "Download 300K_random_images.npy from https://people.eecs.berkeley.edu/~hendrycks/300K_random_images.npy "
    "(Hendrycks et al., Outlier Exposure)."
)


def load_tiny_images(path: Path, exclude: Path | None = None, count: int | None = None, seed: int = 0) -> ImageStore:
    """Records of ``tiny_images.bin`` as (n, 32, 32, 3) uint8, one class ``"80mti"``.

    Args:
        path: the ``tiny_images.bin`` file (any whole number of records).
        exclude: a file of 1-based record indices to leave out (``80mn_cifar_idxs.txt``).
        count: draw this many records, uniformly without replacement from those
            not excluded, seeded by ``seed``; ``None`` reads every record left,
            which is only sensible for a small file.

    The chosen records are returned in file order.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"80 Million Tiny Images file not found: expected {path} (tiny_images.bin). {_HOW_TO_GET_80M}")
    size = path.stat().st_size
    if size == 0 or size % _RECORD:
        raise DataError(f"{path} is not tiny_images.bin: its size {size} is not a positive multiple of {_RECORD} bytes")
    n_records = size // _RECORD
    excluded = np.zeros(0, np.int64)
    if exclude is not None:
        excluded = read_index_list(exclude) - 1
        if len(excluded) and (excluded.min() < 0 or excluded.max() >= n_records):
            raise DataError(f"{exclude}: indices must lie in [1, {n_records}] (1-based) for {path}")
    index = _choose(n_records, excluded, count, seed)
    records = np.memmap(path, dtype=np.uint8, mode="r", shape=(n_records, 3, 32, 32))
    # The records are scattered: without this hint every page fault also reads ~128 KB around it (measured
    # here: 14 s instead of 0.04 s for 2,000 records of a cold file).
    madvise = getattr(getattr(records, "_mmap", None), "madvise", None)
    if madvise is not None and hasattr(mmap, "MADV_RANDOM"):
        madvise(mmap.MADV_RANDOM)
    images = np.empty((len(index), 32, 32, 3), np.uint8)
    for lo in range(0, len(index), _CHUNK):
        # (C, x, y) -> (y, x, C): the reference's reshape(32, 32, 3, order="F").
        images[lo : lo + _CHUNK] = records[index[lo : lo + _CHUNK]].transpose(0, 3, 2, 1)
    return ImageStore(images, np.zeros(len(images), np.int64), ("80mti",))


def _choose(n_records: int, excluded: np.ndarray, count: int | None, seed: int) -> np.ndarray:
    """Sorted record indices: ``count`` drawn uniformly from those not excluded, or all of them."""
    if count is None:
        if n_records > _MAX_WHOLE:
            raise DataError(f"the file holds {n_records:,} records ({n_records * _RECORD / 1e9:.0f} GB decoded); "
                            f"set `count` to draw a subset (at most {_MAX_WHOLE:,} records are read whole)")
        return np.setdiff1d(np.arange(n_records), excluded)
    available = n_records - len(excluded)
    if not 0 < count <= available:
        raise DataError(f"count must lie in [1, {available}] (records not excluded), got {count}")
    # A random order of count + |excluded| records contains at least `count` allowed ones; keeping the first
    # `count` of them is a uniform draw from the allowed records, without an array of all 79M indices.
    drawn = np.random.default_rng(seed).choice(n_records, size=count + len(excluded), replace=False)
    allowed = drawn[~np.isin(drawn, excluded)]
    return np.sort(allowed[:count])


def read_index_list(path: Path) -> np.ndarray:
    """The distinct integers in a file of one index per line (blank lines ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"index list not found: expected {path} (one integer index per line, e.g. 80mn_cifar_idxs.txt)")
    try:
        values = [int(line) for line in path.read_text().split()]
    except ValueError as err:
        raise DataError(f"{path} must hold one integer index per line: {err}") from err
    return np.unique(np.asarray(values, dtype=np.int64))


def load_random_300k(path: Path, count: int | None = None, seed: int = 0) -> ImageStore:
    """``300K_random_images.npy`` memory-mapped as (n, 32, 32, 3) uint8, one class ``"80mti"``.

    ``count`` draws that many images without replacement (seeded, in file
    order); ``None`` keeps the memory map of all of them.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"300K random images not found: expected {path} (300K_random_images.npy). {_HOW_TO_GET_300K}")
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a .npy array: {err}. {_HOW_TO_GET_300K}") from err
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: expected (N, 32, 32, 3) uint8 images, got {images.dtype} {images.shape}")
    if count is not None:
        if not 0 < count <= len(images):
            raise DataError(f"count must lie in [1, {len(images)}], got {count}")
        images = np.asarray(images[np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))])
    return ImageStore(images, np.zeros(len(images), np.int64), ("80mti",))
