"""Load a torchvision ``ImageFolder``-style tree (``root/<class>/<image>``) into an :class:`ImageStore`.

Class folders are sorted alphabetically and images by path, exactly as
``torchvision.datasets.ImageFolder`` orders them, so label ``i`` means the same
class here as there.  Images are decoded with PIL only: no per-image torch
work, so tens of thousands of small JPEGs take seconds.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Collection

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from oesearch.data.store import DataError, ImageStore

__all__ = ["decode_images", "load_image_folder"]

_EXPECTED = (
    "expected an ImageFolder tree root/<class>/<image>.jpg|png... "
    f"(one sub-folder per class; image extensions: {', '.join(IMG_EXTENSIONS)})"
)
_HOW_TO_GET = (
    "Create that tree or extract the dataset archive there "
    "(e.g. `tar xzf cifar10-jpeg.tar.gz -C DIR` and point at DIR/cifar10-jpeg/train)."
)
# Files per thread task: large enough that executor overhead is negligible
# next to decoding, small enough that two cores stay busy to the end.
_CHUNK = 512


def load_image_folder(
    root: Path,
    size: int | None = None,
    grayscale: bool | None = None,
    exclude: Collection[str] = (),
    per_class: int | None = None,
    seed: int = 0,
) -> ImageStore:
    """Decode every image under ``root/<class>/`` into one uint8 :class:`ImageStore`.

    Args:
        root: the tree's root; each sub-folder is a class, and every file in it
            (recursively) with an extension in ``IMG_EXTENSIONS`` is an image.
        size: when given, every image is resized to ``size`` x ``size`` (PIL
            bilinear, antialiased when shrinking).  When ``None``, all images
            must already share one height and width.
        grayscale: ``True`` gives 1 channel (PIL mode ``L``), ``False`` gives
            3 channels (RGB).  ``None`` keeps RGB unless every image is stored
            in mode ``L``, in which case the store has 1 channel.
        exclude: class folder names to leave out (e.g. the ImageNet-1k wnids);
            the remaining classes are numbered in sorted order.
        per_class: keep at most this many images per class, drawn without
            replacement by ``seed`` (the paper's CUB/DTD subset of ImageNet-22k
            keeps 2 per class).

    Returns:
        images (N, H, W, C) uint8, labels (N,) int64 indexing ``class_names``.

    Raises:
        DataError: ``root`` is missing or not a tree of class folders with
            images, an image cannot be decoded, or the sizes differ and no
            ``size`` was given.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise DataError(f"image folder {root} {what}; {_EXPECTED}. {_HOW_TO_GET}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be a positive int or None, got {per_class!r}")
    excluded = set(exclude)
    try:
        found = find_classes(root)[0]
    except FileNotFoundError:
        raise DataError(f"no class folders under {root}: it must hold one sub-folder per class. "
                        f"{_EXPECTED}. {_HOW_TO_GET}") from None
    classes = [name for name in found if name not in excluded]
    if not classes:
        raise DataError(f"every class folder under {root} is excluded ({len(found)} found). "
                        "Check the source's exclusion list against the folder names.")
    samples = make_dataset(root, {name: i for i, name in enumerate(classes)}, extensions=IMG_EXTENSIONS,
                           allow_empty=True)  # an empty class is named below, not folded into "no images"
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    empty = [classes[i] for i in np.flatnonzero(counts == 0)]
    shown = ", ".join(str(root / name) for name in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    if len(empty) == len(classes):
        raise DataError(f"no images found under {root}: none of its {len(classes)} class folders ({shown}) holds an "
                        f"image file. {_EXPECTED}. {_HOW_TO_GET}")
    if empty:
        raise DataError(f"{len(empty)} of the {len(classes)} class folders under {root} hold no images: {shown}. "
                        "Every class needs images in every split: fill those folders, or remove them from "
                        "every split so that the classes still match.")

    paths = [Path(path) for path, _ in samples]
    labels = np.fromiter((label for _, label in samples), dtype=np.int64, count=len(samples))
    if per_class is not None:
        keep = _at_most_per_class(labels, per_class, seed)
        paths, labels = [paths[i] for i in keep], labels[keep]
    return decode_images(paths, labels, tuple(classes), size, grayscale, root)


def _at_most_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``per_class`` entries of each label, drawn without replacement."""
    rng = np.random.default_rng(seed)
    keep = [rng.choice(members, min(per_class, len(members)), replace=False)
            for members in (np.flatnonzero(labels == c) for c in np.unique(labels))]
    return np.sort(np.concatenate(keep))


def decode_images(
    paths: list[Path],
    labels: np.ndarray,
    class_names: tuple[str, ...],
    size: int | None = None,
    grayscale: bool | None = None,
    root: Path | None = None,
) -> ImageStore:
    """Decode image files into one store, in parallel; ``size`` and ``grayscale`` as in :func:`load_image_folder`.

    ``root`` only names the folder in the error about differing sizes.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    if not paths:
        raise DataError(f"no images to decode under {root}")
    mode = None if grayscale is None else ("L" if grayscale else "RGB")

    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    workers = max(1, min(len(chunks), os.cpu_count() or 1))
    # PIL releases the GIL while decoding, so threads scale without pickling images.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda chunk: [_decode(path, mode, size) for path in chunk], chunks)
        decoded = [array for chunk in results for array in chunk]

    height, width = decoded[0].shape[:2]
    for path, array in zip(paths, decoded):
        if array.shape[:2] != (height, width):
            raise DataError(
                f"{path} is {array.shape[1]}x{array.shape[0]} (WxH) but {paths[0]} is {width}x{height}; "
                f"images in {root or paths[0].parent} differ in size: "
                "pass the `size` option to resize them all to size x size"
            )

    if mode is None and any(array.ndim == 3 for array in decoded):
        # Mixed L and colour images: widen the grey ones the way PIL's L->RGB does.
        decoded = [np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a for a in decoded]
    images = np.stack(decoded)
    if images.ndim == 3:
        images = images[:, :, :, None]
    return ImageStore(images, labels, class_names)


def _decode(path: Path, mode: str | None, size: int | None) -> np.ndarray:
    """One image as uint8 (H, W) for mode L or (H, W, 3) for RGB.

    With ``mode=None`` an ``L`` image stays (H, W) so the caller can decide on
    the channel count once every image has been seen.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a broken file fails here with its name
            target = mode or ("L" if image.mode == "L" else "RGB")
            if image.mode != target:  # skipping a no-op convert saves a copy per image
                image = image.convert(target)
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {path}: {err}. Replace or delete the file.") from err
