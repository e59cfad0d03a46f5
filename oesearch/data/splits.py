"""Benchmark protocols built from stores: one class normal, the rest anomalous."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oesearch.data.store import DataError, ImageStore

__all__ = ["OneVsRest", "one_vs_rest"]


@dataclass(frozen=True)
class OneVsRest:
    """Normal training images of one class, and the full test set labelled anomalous or not."""

    normal_class: int
    class_name: str
    train: np.ndarray  # (n, H, W, C) uint8
    test: np.ndarray  # (m, H, W, C) uint8
    test_anomalous: np.ndarray  # (m,) bool

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


def one_vs_rest(train: ImageStore, test: ImageStore, normal_class: int) -> OneVsRest:
    """Train on ``normal_class`` alone; test on every class, the others being anomalies."""
    n_classes = len(train.class_names)
    if not 0 <= normal_class < n_classes:
        names = ", ".join(f"{i}={name}" for i, name in enumerate(train.class_names))
        raise DataError(f"normal class {normal_class} is out of range; this dataset has {n_classes} classes: {names}")
    if train.class_names != test.class_names:
        raise DataError("the train and test splits name different classes")
    if train.image_shape != test.image_shape:
        raise DataError(f"train images are {train.image_shape} but test images are {test.image_shape}")
    normal = train.labels == normal_class
    if not normal.any():
        raise DataError(f"class {normal_class} ({train.class_names[normal_class]}) has no training images")
    anomalous = test.labels != normal_class
    if anomalous.all() or not anomalous.any():
        raise DataError("the test set needs both normal and anomalous images for an AUC")
    return OneVsRest(
        normal_class=normal_class,
        class_name=train.class_names[normal_class],
        train=np.asarray(train.images[normal]),
        test=np.asarray(test.images),
        test_anomalous=anomalous,
    )
