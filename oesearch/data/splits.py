"""Benchmark protocols built from stores (paper Sections 5.1-5.2, Appendix A; SPEC section 3).

- one-vs-rest: one class normal, the rest anomalous at test time;
- leave-one-class-out: the reverse, one class anomalous and the rest normal;
- OE-size sweep: a seeded random subset of k corpus images per repetition;
- OE class diversity: the images of k seeded corpus classes per repetition;
- the split protocol for data at hand: OE classes that never appear at test time.

Every draw is a pure function of the run seed and its labels (via
:func:`~oesearch.seeding.derive_seed`), so a repetition sees the same subset
whichever worker or process computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oesearch.data.store import DataError, ImageStore
from oesearch.seeding import derive_seed

__all__ = ["ClassSplit", "LeaveOneClassOut", "OEClasses", "OneVsRest", "SplitTask", "leave_one_class_out",
           "oe_classes", "oe_size_sweep", "oe_subset", "one_vs_rest", "split_classes", "split_protocol"]


class _Task:
    """What the trainer needs of any protocol: ``train``, ``test`` and ``test_anomalous`` arrays."""

    train: np.ndarray  # declared by each dataclass below, in its own field order

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class OneVsRest(_Task):
    """Normal training images of one class, and the full test set labelled anomalous or not."""

    normal_class: int
    class_name: str
    train: np.ndarray  # (n, H, W, C) uint8
    test: np.ndarray  # (m, H, W, C) uint8
    test_anomalous: np.ndarray  # (m,) bool


@dataclass(frozen=True)
class LeaveOneClassOut(_Task):
    """Training images of every class but one, and the test set where only that class is anomalous."""

    anomalous_class: int
    class_name: str
    train: np.ndarray  # (n, H, W, C) uint8
    test: np.ndarray  # (m, H, W, C) uint8
    test_anomalous: np.ndarray  # (m,) bool


def _check_class(store: ImageStore, cls: int, role: str) -> None:
    n_classes = len(store.class_names)
    if not 0 <= cls < n_classes:
        names = ", ".join(f"{i}={name}" for i, name in enumerate(store.class_names))
        raise DataError(f"{role} class {cls} is out of range; this dataset has {n_classes} classes: {names}")


def _task_arrays(train: ImageStore, test: ImageStore, normal: np.ndarray, test_keep: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal training images, test images and their anomaly flags for the classes in ``normal``.

    ``test_keep`` limits the test set to those classes (the split protocol); ``None`` keeps every class.
    """
    if train.class_names != test.class_names:
        only_train = sorted(set(train.class_names) - set(test.class_names))
        only_test = sorted(set(test.class_names) - set(train.class_names))
        detail = "; ".join(part for part in (
            f"only in train: {', '.join(only_train)}" if only_train else "",
            f"only in test: {', '.join(only_test)}" if only_test else "",
        ) if part) or "the same names in another order"
        raise DataError(f"the train and test splits name different classes ({detail}). Each split needs the same "
                        "class folders: add the missing ones, or remove the extra ones.")
    if train.image_shape != test.image_shape:
        raise DataError(f"train images are {train.image_shape} but test images are {test.image_shape}")
    is_normal = np.isin(train.labels, normal)
    if not is_normal.any():
        names = ", ".join(train.class_names[c] for c in normal)
        raise DataError(f"the normal classes ({names}) have no training images")
    kept = np.ones(len(test), bool) if test_keep is None else np.isin(test.labels, test_keep)
    anomalous = ~np.isin(test.labels[kept], normal)
    if anomalous.all() or not anomalous.any():
        raise DataError("the test set needs both normal and anomalous images for an AUC")
    return np.asarray(train.images[is_normal]), np.asarray(test.images[kept]), anomalous


def one_vs_rest(train: ImageStore, test: ImageStore, normal_class: int) -> OneVsRest:
    """Train on ``normal_class`` alone; test on every class, the others being anomalies."""
    _check_class(train, normal_class, "normal")
    arrays = _task_arrays(train, test, np.array([normal_class]))
    return OneVsRest(normal_class, train.class_names[normal_class], *arrays)


def leave_one_class_out(train: ImageStore, test: ImageStore, anomalous_class: int) -> LeaveOneClassOut:
    """Train on every class but ``anomalous_class``; at test time only that class is anomalous (Figure 4)."""
    _check_class(train, anomalous_class, "anomalous")
    normal = np.array([c for c in range(len(train.class_names)) if c != anomalous_class])
    arrays = _task_arrays(train, test, normal)
    return LeaveOneClassOut(anomalous_class, train.class_names[anomalous_class], *arrays)


# ---------------------------------------------------------------- the OE corpus: size and class diversity


def oe_subset(corpus_size: int, k: int, seed: int, repetition: int) -> np.ndarray:
    """Sorted positions of ``k`` distinct corpus images, drawn anew for each ``repetition`` (Section 5.2)."""
    if not 1 <= k <= corpus_size:
        raise DataError(f"an OE subset of {k} images needs 1 <= k <= the corpus size {corpus_size}")
    rng = np.random.default_rng(derive_seed(seed, "oe-subset", k, repetition))
    return np.sort(rng.choice(corpus_size, size=k, replace=False))


def oe_size_sweep(corpus_size: int) -> list[int]:
    """The OE sizes of the paper's sweep: 1, 2, 4, ... and finally the whole corpus."""
    if corpus_size < 1:
        raise DataError("the OE corpus is empty")
    sizes = [2**i for i in range(corpus_size.bit_length()) if 2**i < corpus_size]
    return [*sizes, corpus_size]


@dataclass(frozen=True)
class OEClasses:
    """The ``classes`` drawn for one repetition and the sorted corpus positions of their images."""

    classes: tuple[int, ...]
    index: np.ndarray


def oe_classes(corpus: ImageStore, k: int, seed: int, repetition: int) -> OEClasses:
    """``k`` distinct corpus classes drawn anew for each ``repetition``, with all their images (Appendix A)."""
    present = np.unique(corpus.labels)
    if not 1 <= k <= len(present):
        raise DataError(f"{k} OE classes requested, but the corpus has images of {len(present)} classes")
    rng = np.random.default_rng(derive_seed(seed, "oe-classes", k, repetition))
    classes = tuple(sorted(int(c) for c in rng.choice(present, size=k, replace=False)))
    return OEClasses(classes, np.flatnonzero(np.isin(corpus.labels, classes)))


# ---------------------------------------------------------------- the split protocol (data at hand)


@dataclass(frozen=True)
class ClassSplit:
    """One dataset's classes split three ways: the normal class, the OE classes, the test-time anomalies."""

    normal_class: int
    oe_classes: tuple[int, ...]
    test_classes: tuple[int, ...]


def split_classes(n_classes: int, normal_class: int, n_oe: int, seed: int) -> ClassSplit:
    """Draw ``n_oe`` OE classes among the ``n_classes - 1`` non-normal ones; the others are test anomalies.

    The draw depends on ``seed`` and ``normal_class`` only, so every repetition
    and every individual of a search sees the same split.
    """
    if not 0 <= normal_class < n_classes:
        raise DataError(f"normal class {normal_class} is out of range for {n_classes} classes")
    others = np.array([c for c in range(n_classes) if c != normal_class])
    if not 1 <= n_oe <= len(others) - 1:
        raise DataError(f"{n_oe} OE classes leave no anomaly class at test time: with {n_classes} classes, "
                        f"1 <= n_oe <= {len(others) - 1}")
    rng = np.random.default_rng(derive_seed(seed, "split-protocol", normal_class))
    oe = tuple(sorted(int(c) for c in rng.choice(others, size=n_oe, replace=False)))
    return ClassSplit(normal_class, oe, tuple(int(c) for c in others if c not in oe))


@dataclass(frozen=True)
class SplitTask:
    """A one-vs-rest task whose test set holds only the normal and test classes, and its OE corpus."""

    split: ClassSplit
    task: OneVsRest
    oe: ImageStore  # training images of the OE classes, labels as in the dataset


def split_protocol(train: ImageStore, test: ImageStore, normal_class: int, n_oe: int, seed: int) -> SplitTask:
    """The split protocol: OE from training images of classes that never appear at test time.

    A deviation from the paper, whose OE comes from another corpus (80MTI,
    ImageNet-22k); it lets one labelled dataset at hand, such as CIFAR-10,
    serve as both normal data and OE without the OE showing the test anomalies.
    """
    _check_class(train, normal_class, "normal")
    split = split_classes(len(train.class_names), normal_class, n_oe, seed)
    arrays = _task_arrays(train, test, np.array([normal_class]), np.array([normal_class, *split.test_classes]))
    task = OneVsRest(normal_class, train.class_names[normal_class], *arrays)
    return SplitTask(split, task, train.subset(np.flatnonzero(np.isin(train.labels, split.oe_classes))))
