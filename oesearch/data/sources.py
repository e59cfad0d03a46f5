"""Turn a configured source into an :class:`ImageStore`, decoding once and caching.

Normal sources give a train and a test split; corpus sources give one store,
conformed to the normal data's image shape so the model can consume it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oesearch.config import Cifar10Source, DigitsSource, ImageFolderSource, NaturalPatchesSource
from oesearch.data.store import DataError, ImageStore, cached

__all__ = ["load_normal", "load_corpus", "corpus_key", "conform"]

_CACHE_VERSION = 1


def _cache_key(kind: str, *parts: object) -> str:
    text = json.dumps([_CACHE_VERSION, kind, *parts], sort_keys=True, default=str)
    return f"{kind}-{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


def _cache_dir(cache_dir: str | Path | None) -> Path | None:
    return None if cache_dir is None else Path(cache_dir).expanduser()


def _source_id(source) -> dict:
    """The source's options, with a local path resolved so two spellings share one cache."""
    raw = source.model_dump(mode="json")
    if "path" in raw:
        raw["path"] = str(Path(raw["path"]).expanduser().resolve())
    return raw


def load_normal(source, split: str, cache_dir: str | Path | None) -> ImageStore:
    """The ``split`` ("train" or "test") of a normal-data source."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def build() -> ImageStore:
        if isinstance(source, DigitsSource):
            from oesearch.data.embedded import load_digits_split

            return load_digits_split(split, source.test_fraction, source.split_seed)
        if isinstance(source, ImageFolderSource):
            from oesearch.data.folders import load_image_folder

            root = Path(source.path).expanduser()
            if not (root / split).is_dir():
                raise DataError(
                    f"expected the {split} split of an ImageFolder dataset at {root / split} "
                    f"(layout: {root}/train/<class>/<image> and {root}/test/<class>/<image>)"
                )
            return load_image_folder(root / split, size=source.size)
        if isinstance(source, Cifar10Source):
            from oesearch.data.cifar import load_cifar10

            return load_cifar10(Path(source.path).expanduser(), split)
        raise DataError(f"{source.kind!r} cannot serve as normal data")

    return cached(_cache_dir(cache_dir), _cache_key(f"normal-{source.kind}-{split}", _source_id(source)), build)


def load_corpus(source, image_shape: tuple[int, int, int], cache_dir: str | Path | None) -> ImageStore:
    """The OE corpus, conformed to ``image_shape`` (H, W, C)."""

    def build() -> ImageStore:
        if isinstance(source, NaturalPatchesSource):
            from oesearch.data.embedded import load_natural_patches

            store = load_natural_patches(source.patch_size, source.scales, source.stride)
        elif isinstance(source, ImageFolderSource):
            from oesearch.data.folders import load_image_folder

            store = load_image_folder(Path(source.path).expanduser(), size=source.size)
        elif isinstance(source, Cifar10Source):
            from oesearch.data.cifar import load_cifar10

            store = load_cifar10(Path(source.path).expanduser(), "train")
        else:
            raise DataError(f"{source.kind!r} cannot serve as an OE corpus")
        return conform(store, image_shape)

    return cached(_cache_dir(cache_dir), corpus_key(source, image_shape), build)


def corpus_key(source, image_shape: tuple[int, int, int]) -> str:
    """The cache key of a corpus; files derived from it (the neighbour index) share it."""
    return _cache_key(f"corpus-{source.kind}", _source_id(source), list(image_shape))


def conform(store: ImageStore, image_shape: tuple[int, int, int], chunk: int = 4096) -> ImageStore:
    """Resize (antialiased bilinear) and convert channels so every image has ``image_shape``."""
    height, width, channels = image_shape
    if store.image_shape == tuple(image_shape):
        return store
    if store.image_shape[2] not in (1, 3) or channels not in (1, 3):
        raise DataError(f"cannot convert {store.image_shape[2]}-channel images to {channels} channels")
    parts = []
    for lo in range(0, len(store), chunk):
        x = torch.as_tensor(np.asarray(store.images[lo : lo + chunk])).permute(0, 3, 1, 2).float()
        if x.shape[1] == 3 and channels == 1:  # ITU-R 601 luma, as PIL's convert("L")
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        parts.append(x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return ImageStore(np.concatenate(parts), store.labels, store.class_names)
