"""Load CIFAR-10 and CIFAR-100 from the official *python* pickle batches into an :class:`ImageStore`.

The layouts are those of ``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz``::

    cifar-10-batches-py/data_batch_1 .. data_batch_5   (train, 10,000 images each)
    cifar-10-batches-py/test_batch                     (test, 10,000 images)
    cifar-10-batches-py/batches.meta                   (b"label_names")

    cifar-100-python/train     (50,000 images; b"fine_labels" and b"coarse_labels")
    cifar-100-python/test      (10,000 images)
    cifar-100-python/meta      (b"fine_label_names", b"coarse_label_names")

Each batch is a pickled dict whose ``b"data"`` is (N, 3072) uint8, one row per
image, channel-major (1024 red, then 1024 green, then 1024 blue bytes, each
plane row-major 32x32), and whose label key holds N ints.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oesearch.data.store import DataError, ImageStore

__all__ = ["load_cifar10", "load_cifar100"]

_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class _Layout:
    """Where one CIFAR variant keeps its files and which keys hold its labels and names."""

    name: str
    folder: str
    archive: str
    split_files: dict[str, tuple[str, ...]]
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int

    def how_to_get(self) -> str:
        return f"Download {self.archive} from {_URL} and extract it there (`tar xzf {self.archive} -C DIR`)."


_CIFAR10 = _Layout(
    "CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "batches.meta", b"labels", b"label_names", 10,
)
_CIFAR100 = {
    labels: _Layout(
        "CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", {"train": ("train",), "test": ("test",)},
        "meta", f"{labels}_labels".encode(), f"{labels}_label_names".encode(), classes,
    )
    for labels, classes in (("fine", 100), ("coarse", 20))
}


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
    return _load(_CIFAR10, root, split)


def load_cifar100(root: Path, split: str, labels: str = "fine") -> ImageStore:
    """Read the CIFAR-100 ``split`` with its 100 ``fine`` classes or its 20 ``coarse`` superclasses.

    ``root`` may be the ``cifar-100-python`` folder or the folder that contains
    it.  The superclasses are the usual CIFAR-100 one-vs-rest AD benchmark
    (Golan & El-Yaniv, 2018); the fine classes are what the paper's OE
    class-diversity experiment (Appendix A) draws k of.
    """
    if labels not in _CIFAR100:
        raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    return _load(_CIFAR100[labels], root, split)


def _load(layout: _Layout, root: Path, split: str) -> ImageStore:
    if split not in layout.split_files:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    folder = root / layout.folder if (root / layout.folder).is_dir() else root
    names = (*layout.split_files[split], layout.meta)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{layout.name} python batches not found: {folder} lacks {', '.join(missing)} "
            f"(expected {folder}/{{{', '.join(names)}}}, or the same under {root}/{layout.folder}/). "
            f"{layout.how_to_get()}"
        )

    class_names = _read_label_names(layout, folder / layout.meta)
    images, labels = [], []
    for name in layout.split_files[split]:
        batch_images, batch_labels = _read_batch(layout, folder / name)
        images.append(batch_images)
        labels.append(batch_labels)
    return ImageStore(np.concatenate(images), np.concatenate(labels), class_names)


def _unpickle(layout: _Layout, path: Path) -> dict[Any, Any]:
    """The dict in one pickle file; the official files are Python 2 pickles, hence bytes keys."""
    try:
        with open(path, "rb") as f:
            content = pickle.load(f, encoding="bytes")
    except Exception as err:  # a non-pickle can fail in many ways (UnpicklingError, EOFError, ...)
        raise DataError(
            f"{path} is not a {layout.name} python batch (cannot unpickle: {err!r}). {layout.how_to_get()}"
        ) from err
    if not isinstance(content, dict):
        raise DataError(f"{path} is not a {layout.name} python batch: it holds a {type(content).__name__}, not a dict")
    return content


def _read_batch(layout: _Layout, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) HWC and labels (N,) int64 from one batch file."""
    batch = _unpickle(layout, path)
    bad = f"{path} is not a {layout.name} python batch"
    if b"data" not in batch or layout.label_key not in batch:
        keys = ", ".join(repr(k) for k in batch)
        raise DataError(f"{bad}: expected keys b'data' and {layout.label_key!r}, found {keys}")
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{bad}: b'data' must be (N, 3072) uint8, got {data.dtype} {data.shape}")
    labels = np.asarray(batch[layout.label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{bad}: {len(data)} images but {layout.label_key!r} has shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(f"{bad}: labels must lie in [0, {layout.num_classes})")
    # Rows are channel-major planes (C, H, W); the store is HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def _read_label_names(layout: _Layout, path: Path) -> tuple[str, ...]:
    """The class names from the meta file."""
    meta = _unpickle(layout, path)
    names = meta.get(layout.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
        raise DataError(
            f"{path} is not {layout.name} {layout.meta}: expected {layout.names_key!r} with {layout.num_classes} names"
        )
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
