"""Load CIFAR-10 from the official *python* pickle batches into an :class:`ImageStore`.

The layout is the one in ``cifar-10-python.tar.gz``::

    cifar-10-batches-py/data_batch_1 .. data_batch_5   (train, 10,000 images each)
    cifar-10-batches-py/test_batch                     (test, 10,000 images)
    cifar-10-batches-py/batches.meta                   (b"label_names")

Each batch is a pickled dict whose ``b"data"`` is (N, 3072) uint8, one row per
image, channel-major (1024 red, then 1024 green, then 1024 blue bytes, each
plane row-major 32x32), and whose ``b"labels"`` holds N ints in [0, 10).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from oesearch.data.store import DataError, ImageStore

__all__ = ["load_cifar10"]

_FOLDER = "cifar-10-batches-py"
_SPLIT_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_META = "batches.meta"
_NUM_CLASSES = 10
_HOW_TO_GET = (
    "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
    "and extract it there (`tar xzf cifar-10-python.tar.gz -C DIR`)."
)


def load_cifar10(root: Path, split: str) -> ImageStore:
    """Read the CIFAR-10 ``split`` ("train" or "test") as (N, 32, 32, 3) uint8 HWC images.

    ``root`` may be the ``cifar-10-batches-py`` folder itself or the folder
    that contains it.  The batches are pickles, which can run code when
    loaded: point this only at files from a trusted source.

    Raises:
        ValueError: ``split`` is not "train" or "test".
        DataError: a batch or ``batches.meta`` is missing, or a file is not a
            CIFAR-10 python batch.
    """
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    folder = root / _FOLDER if (root / _FOLDER).is_dir() else root
    names = (*_SPLIT_FILES[split], _META)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 python batches not found: {folder} lacks {', '.join(missing)} "
            f"(expected {folder}/{{{', '.join(names)}}}, or the same under {root}/{_FOLDER}/). {_HOW_TO_GET}"
        )

    class_names = _read_label_names(folder / _META)
    images, labels = [], []
    for name in _SPLIT_FILES[split]:
        batch_images, batch_labels = _read_batch(folder / name)
        images.append(batch_images)
        labels.append(batch_labels)
    return ImageStore(np.concatenate(images), np.concatenate(labels), class_names)


def _unpickle(path: Path) -> dict[Any, Any]:
    """The dict in one pickle file; the official files are Python 2 pickles, hence bytes keys."""
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="bytes")
    except Exception as err:  # a non-pickle can fail in many ways (UnpicklingError, EOFError, ...)
        raise DataError(f"{path} is not a CIFAR-10 python batch (cannot unpickle: {err!r}). {_HOW_TO_GET}") from err
    if not isinstance(content, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch: it holds a {type(content).__name__}, not a dict")
    return content


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) HWC and labels (N,) int64 from one batch file."""
    batch = _unpickle(path)
    if b"data" not in batch or b"labels" not in batch:
        keys = ", ".join(repr(k) for k in batch)
        raise DataError(f"{path} is not a CIFAR-10 python batch: expected keys b'data' and b'labels', found {keys}")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path} is not a CIFAR-10 python batch: b'data' must be (N, 3072) uint8, got {data.dtype} {data.shape}"
        )
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(
            f"{path} is not a CIFAR-10 python batch: {len(data)} images but b'labels' has shape {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise DataError(f"{path} is not a CIFAR-10 python batch: labels must lie in [0, {_NUM_CLASSES})")
    # Rows are channel-major planes (C, H, W); the store is HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _read_label_names(path: Path) -> tuple[str, ...]:
    """The ten class names from ``batches.meta``."""
    meta = _unpickle(path)
    names = meta.get(b"label_names")
    if not isinstance(names, (list, tuple)) or len(names) != _NUM_CLASSES:
        raise DataError(f"{path} is not CIFAR-10 batches.meta: expected b'label_names' with {_NUM_CLASSES} names")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
