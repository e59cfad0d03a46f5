"""The folder layouts of the large-image benchmarks: ImageNet-30, ImageNet-22k, CUB, DTD and MVTec-AD.

Each is an ImageFolder tree or a list of files decoded by
:func:`~oesearch.data.folders.decode_images`; what differs is where the train
and test split lie and what the classes are.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from oesearch.data.folders import decode_images, load_image_folder
from oesearch.data.store import DataError, ImageStore

__all__ = ["IMAGENET1K_CLASSES", "load_cub", "load_dtd", "load_imagenet22k", "load_imagenet30", "load_mvtec",
           "read_wnid_list"]

IMAGENET1K_CLASSES = 1000
_WNID = re.compile(r"n\d{8}")
_SPLITS = ("train", "test")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _inside(root: Path, folder: str, marker: str) -> Path:
    """``root/folder`` when it holds ``marker`` (the archive was extracted into ``root``), else ``root``."""
    root = Path(root).expanduser()
    return root / folder if (root / folder / marker).exists() else root


# ---------------------------------------------------------------- ImageNet-30 and ImageNet-22k


def load_imagenet30(root: Path, split: str, size: int | None = 224) -> ImageStore:
    """ImageNet-30 (Hendrycks et al., 2019b): ``root/train`` and ``root/test`` with 30 class folders each.

    The original archives' ``one_class_train`` and ``one_class_test`` are
    found as well.
    """
    _check_split(split)
    root = Path(root).expanduser()
    folders = [root / split, root / f"one_class_{split}"]
    folder = next((f for f in folders if f.is_dir()), None)
    if folder is None:
        raise DataError(
            f"ImageNet-30 {split} split not found: expected {folders[0]} or {folders[1]} with 30 class folders. "
            "Download one_class_train.tar and one_class_test.tar (links in https://github.com/hendrycks/ss-ood) "
            f"and extract them into {root}."
        )
    store = load_image_folder(folder, size=size)
    if len(store.class_names) != 30:
        raise DataError(f"{folder} has {len(store.class_names)} class folders; ImageNet-30 has 30")
    return store


def read_wnid_list(path: Path) -> frozenset[str]:
    """The WordNet ids (``n01440764``...) in a file of one wnid per line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"wnid list not found: expected {path} with one WordNet id (like n01440764) per line, e.g. the 1,000 "
            "ImageNet-1k class folder names (`ls ILSVRC2012/train > imagenet1k_wnids.txt`)."
        )
    words = path.read_text().split()
    bad = [w for w in words if not _WNID.fullmatch(w)]
    if bad:
        raise DataError(f"{path}: {bad[0]!r} is not a wnid (n followed by 8 digits); one wnid per line")
    return frozenset(words)


def load_imagenet22k(
    root: Path, exclude: Path, size: int | None = 224, per_class: int | None = None, seed: int = 0,
    min_excluded: int = IMAGENET1K_CLASSES,
) -> ImageStore:
    """ImageNet-22k as an OE corpus: ``root/<wnid>/<image>`` minus the classes listed in ``exclude``.

    The list must name at least ``min_excluded`` distinct wnids: removing "1k"
    by a list of 30 classes is a known pitfall of the reference code.
    """
    wnids = read_wnid_list(exclude)
    if len(wnids) < min_excluded:
        raise DataError(
            f"{exclude} names {len(wnids)} wnids, but ImageNet-22k minus ImageNet-1k needs all "
            f"{IMAGENET1K_CLASSES} ImageNet-1k wnids in the exclusion list"
        )
    return load_image_folder(root, size=size, exclude=wnids, per_class=per_class, seed=seed)


# ---------------------------------------------------------------- CUB and DTD: a list of files per split


def _read_table(path: Path, how_to_get: str) -> list[list[str]]:
    """The whitespace-separated rows of a metadata file, or a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path} not found. {how_to_get}")
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


_CUB_HOW = ("Expected the CUB_200_2011 folder (images/, images.txt, train_test_split.txt, image_class_labels.txt, "
            "classes.txt): download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ "
            "and extract it (`tar xzf CUB_200_2011.tgz -C DIR`).")


def load_cub(root: Path, split: str, size: int | None = 224) -> ImageStore:
    """CUB-200-2011 with its official train/test split (``train_test_split.txt``), 200 classes."""
    _check_split(split)
    folder = _inside(root, "CUB_200_2011", "images.txt")
    paths = dict(_read_table(folder / "images.txt", _CUB_HOW))
    is_train = dict(_read_table(folder / "train_test_split.txt", _CUB_HOW))
    label_of = dict(_read_table(folder / "image_class_labels.txt", _CUB_HOW))
    classes = sorted((int(i), name) for i, name in _read_table(folder / "classes.txt", _CUB_HOW))
    # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
    class_names = tuple(name.split(".", 1)[-1] for _, name in classes)
    wanted = "1" if split == "train" else "0"
    ids = sorted((i for i in paths if is_train.get(i) == wanted), key=int)
    labels = np.array([int(label_of[i]) - 1 for i in ids], dtype=np.int64)
    return decode_images([folder / "images" / paths[i] for i in ids], labels, class_names, size, False, folder)


_DTD_HOW = ("Expected the dtd folder (images/<class>/, labels/train1.txt..test10.txt): download dtd-r1.0.1.tar.gz "
            "from https://www.robots.ox.ac.uk/~vgg/data/dtd/ and extract it (`tar xzf dtd-r1.0.1.tar.gz -C DIR`).")


def load_dtd(root: Path, split: str, fold: int = 1, size: int | None = 224) -> ImageStore:
    """DTD's 47 texture classes; ``labels/train{fold}.txt`` (40 per class) or ``labels/test{fold}.txt``."""
    _check_split(split)
    if not 1 <= fold <= 10:
        raise ValueError(f"fold must lie in 1..10, got {fold}")
    folder = _inside(root, "dtd", "labels")
    if not (folder / "images").is_dir():
        raise DataError(f"{folder / 'images'} not found. {_DTD_HOW}")
    class_names = tuple(sorted(p.name for p in (folder / "images").iterdir() if p.is_dir()))
    index = {name: i for i, name in enumerate(class_names)}
    files = [row[0] for row in _read_table(folder / "labels" / f"{split}{fold}.txt", _DTD_HOW)]
    unknown = [f for f in files if f.split("/", 1)[0] not in index]
    if unknown:
        raise DataError(f"{folder / 'labels' / f'{split}{fold}.txt'} names {unknown[0]}, whose class has no folder")
    labels = np.array([index[f.split("/", 1)[0]] for f in files], dtype=np.int64)
    return decode_images([folder / "images" / f for f in files], labels, class_names, size, False, folder)


# ---------------------------------------------------------------- MVTec-AD


def load_mvtec(root: Path, category: str, split: str, size: int | None = 224) -> ImageStore:
    """One MVTec-AD category: train is ``train/good``; test is ``test/good`` (normal) and ``test/<defect>``.

    Both splits name the classes ``("good", *defects)``, so class 0 is the
    normal class of a one-vs-rest task and every defect is anomalous.
    """
    _check_split(split)
    folder = Path(root).expanduser() / category
    if not (folder / "train" / "good").is_dir() or not (folder / "test" / "good").is_dir():
        raise DataError(
            f"MVTec-AD category {category!r} not found: expected {folder}/train/good/ and {folder}/test/<defect>/ "
            "(good among them). Download mvtec_anomaly_detection.tar.xz from "
            "https://www.mvtec.com/company/research/datasets/mvtec-ad and extract it "
            "(`tar xJf mvtec_anomaly_detection.tar.xz -C DIR`)."
        )
    defects = sorted(p.name for p in (folder / "test").iterdir() if p.is_dir() and p.name != "good")
    class_names = ("good", *defects)
    paths, labels = [], []
    for label, name in enumerate(class_names[:1] if split == "train" else class_names):
        files = sorted(p for p in (folder / split / name).iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    return decode_images(paths, np.array(labels, dtype=np.int64), class_names, size, None, folder / split)
