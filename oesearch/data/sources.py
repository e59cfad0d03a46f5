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

from oesearch.config import (
    Cifar10Source,
    Cifar100Source,
    CubSource,
    DigitsSource,
    DtdSource,
    IdxSource,
    ImageFolderSource,
    ImageNet22kSource,
    ImageNet30Source,
    MVTecSource,
    NaturalPatchesSource,
    Random300kSource,
    TinyImagesSource,
)
from oesearch.data.store import DataError, ImageStore, cached

__all__ = ["load_normal", "load_corpus", "corpus_key", "conform"]

_CACHE_VERSION = 1
_PATH_OPTIONS = ("path", "exclude")


def _cache_key(kind: str, *parts: object) -> str:
    text = json.dumps([_CACHE_VERSION, kind, *parts], sort_keys=True, default=str)
    return f"{kind}-{hashlib.blake2b(text.encode(), digest_size=8).hexdigest()}"


def _cache_dir(cache_dir: str | Path | None) -> Path | None:
    return None if cache_dir is None else Path(cache_dir).expanduser()


def _source_id(source) -> dict:
    """The source's options, with local paths resolved so two spellings share one cache."""
    raw = source.model_dump(mode="json")
    for key in _PATH_OPTIONS:
        if raw.get(key) is not None:
            raw[key] = str(Path(raw[key]).expanduser().resolve())
    return raw


def _path(source) -> Path:
    return Path(source.path).expanduser()


def _split_store(source, split: str) -> ImageStore | None:
    """The ``split`` of a dataset that has a train and a test split; ``None`` for any other source."""
    # Imports are local: a run loads one or two of these modules, never all of them.
    if isinstance(source, DigitsSource):
        from oesearch.data.embedded import load_digits_split

        return load_digits_split(split, source.test_fraction, source.split_seed)
    if isinstance(source, Cifar10Source):
        from oesearch.data.cifar import load_cifar10

        return load_cifar10(_path(source), split)
    if isinstance(source, Cifar100Source):
        from oesearch.data.cifar import load_cifar100

        return load_cifar100(_path(source), split, source.labels)
    if isinstance(source, IdxSource):
        from oesearch.data.idx import load_idx_dataset

        return load_idx_dataset(source.kind, _path(source), split)
    if isinstance(source, ImageNet30Source):
        from oesearch.data.layouts import load_imagenet30

        return load_imagenet30(_path(source), split, source.size)
    if isinstance(source, CubSource):
        from oesearch.data.layouts import load_cub

        return load_cub(_path(source), split, source.size)
    if isinstance(source, DtdSource):
        from oesearch.data.layouts import load_dtd

        return load_dtd(_path(source), split, source.fold, source.size)
    if isinstance(source, MVTecSource):
        from oesearch.data.layouts import load_mvtec

        return load_mvtec(_path(source), source.category, split, source.size)
    return None


def load_normal(source, split: str, cache_dir: str | Path | None) -> ImageStore:
    """The ``split`` ("train" or "test") of a normal-data source."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def build() -> ImageStore:
        if isinstance(source, ImageFolderSource):
            from oesearch.data.folders import load_image_folder

            root = _path(source)
            if not (root / split).is_dir():
                raise DataError(
                    f"expected the {split} split of an ImageFolder dataset at {root / split} "
                    f"(layout: {root}/train/<class>/<image> and {root}/test/<class>/<image>)"
                )
            return load_image_folder(root / split, size=source.size)
        store = _split_store(source, split)
        if store is None:
            raise DataError(f"{source.kind!r} cannot serve as normal data")
        return store

    return cached(_cache_dir(cache_dir), _cache_key(f"normal-{source.kind}-{split}", _source_id(source)), build)


def _corpus_store(source) -> ImageStore:
    """The unconformed OE corpus: a corpus-only source, or the training split of a dataset."""
    if isinstance(source, NaturalPatchesSource):
        from oesearch.data.embedded import load_natural_patches

        return load_natural_patches(source.patch_size, source.scales, source.stride)
    if isinstance(source, ImageFolderSource):
        from oesearch.data.folders import load_image_folder

        return load_image_folder(_path(source), size=source.size)
    if isinstance(source, TinyImagesSource):
        from oesearch.data.tiny import load_tiny_images

        exclude = None if source.exclude is None else Path(source.exclude).expanduser()
        return load_tiny_images(_path(source), exclude, source.count, source.subset_seed)
    if isinstance(source, Random300kSource):
        from oesearch.data.tiny import load_random_300k

        return load_random_300k(_path(source), source.count, source.subset_seed)
    if isinstance(source, ImageNet22kSource):
        from oesearch.data.layouts import load_imagenet22k

        return load_imagenet22k(_path(source), Path(source.exclude).expanduser(), source.size, source.per_class,
                                source.subset_seed)
    store = _split_store(source, "train")
    if store is None:
        raise DataError(f"{source.kind!r} cannot serve as an OE corpus")
    return store


def load_corpus(source, image_shape: tuple[int, int, int], cache_dir: str | Path | None) -> ImageStore:
    """The OE corpus, conformed to ``image_shape`` (H, W, C)."""
    return cached(_cache_dir(cache_dir), corpus_key(source, image_shape),
                  lambda: conform(_corpus_store(source), image_shape))


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
