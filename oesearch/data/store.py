"""The one image store every stage uses: uint8 images, integer labels, class names.

Sources are decoded once and cached as plain ``.npy`` files plus a small JSON
header; later loads memory-map the images instead of decoding again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["ImageStore", "DataError", "cached"]

_FORMAT_VERSION = 1


class DataError(ValueError):
    """A data source is missing or not in the expected format."""


@dataclass(frozen=True)
class ImageStore:
    """``images`` (N, H, W, C) uint8, ``labels`` (N,) int64, and the names of the classes."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(f"labels must lie in [0, {len(self.class_names)}) for {len(self.class_names)} classes")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: np.ndarray) -> "ImageStore":
        return ImageStore(np.asarray(self.images[index]), self.labels[index], self.class_names)

    def save(self, directory: Path) -> None:
        """Write the store to ``directory`` atomically (a temporary sibling, then a rename)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            np.save(tmp / "images.npy", np.ascontiguousarray(self.images))
            np.save(tmp / "labels.npy", self.labels.astype(np.int64))
            header = {"version": _FORMAT_VERSION, "class_names": list(self.class_names)}
            (tmp / "header.json").write_text(json.dumps(header))
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> "ImageStore":
        directory = Path(directory)
        header = json.loads((directory / "header.json").read_text())
        if header.get("version") != _FORMAT_VERSION:
            raise DataError(f"{directory} holds cache format {header.get('version')}, expected {_FORMAT_VERSION}")
        images = np.load(directory / "images.npy", mmap_mode="r" if mmap else None)
        labels = np.load(directory / "labels.npy")
        return cls(images, labels, tuple(header["class_names"]))


def cached(cache_dir: Path | None, key: str, build: Callable[[], ImageStore]) -> ImageStore:
    """Load the store cached under ``cache_dir/key``, or build it once and cache it.

    ``key`` must change whenever the source or its options change.  A cache
    directory that is damaged is rebuilt rather than trusted.
    """
    if cache_dir is None:
        return build()
    path = Path(cache_dir).expanduser() / key
    if (path / "header.json").exists():
        try:
            return ImageStore.load(path)
        except (OSError, ValueError, KeyError):
            shutil.rmtree(path, ignore_errors=True)
    store = build()
    try:
        store.save(path)
    except FileExistsError:
        pass  # another process cached it first
    except OSError as err:
        if not (path / "header.json").exists():
            raise DataError(f"cannot write the data cache at {path}: {err}") from err
    return store
