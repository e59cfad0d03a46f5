"""Benchmark protocols: leave-one-class-out, seeded OE subsets and OE classes, and the split protocol."""

from __future__ import annotations

import numpy as np
import pytest

from oesearch.data import DataError, ImageStore
from oesearch.data.splits import (
    leave_one_class_out,
    oe_classes,
    oe_size_sweep,
    oe_subset,
    one_vs_rest,
    split_classes,
    split_protocol,
)

NAMES = tuple(f"c{i}" for i in range(10))


def _store(per_class: int, offset: int) -> ImageStore:
    """Image n is filled with the value offset + n, so every image is identifiable; labels cycle 0..9."""
    n = 10 * per_class
    images = ((np.arange(n) + offset) % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    return ImageStore(images, np.arange(n) % 10, NAMES)


TRAIN, TEST = _store(5, 0), _store(3, 100)


def _ids(images: np.ndarray, offset: int) -> list[int]:
    return [int(v) - offset for v in images[:, 0, 0, 0]]


def test_leave_one_class_out_is_the_reverse_of_one_vs_rest() -> None:
    task = leave_one_class_out(TRAIN, TEST, 3)
    assert task.anomalous_class == 3 and task.class_name == "c3" and task.image_shape == (2, 2, 1)
    assert _ids(task.train, 0) == [i for i in range(50) if i % 10 != 3]
    assert _ids(task.test, 100) == list(range(30))
    assert task.test_anomalous.tolist() == [i % 10 == 3 for i in range(30)]
    ovr = one_vs_rest(TRAIN, TEST, 3)
    np.testing.assert_array_equal(ovr.test_anomalous, ~task.test_anomalous)
    with pytest.raises(DataError, match="anomalous class 10 is out of range"):
        leave_one_class_out(TRAIN, TEST, 10)


def test_oe_subset_sizes_determinism_and_repetitions() -> None:
    for k in (1, 7, 64, 1000):
        a = oe_subset(1000, k, seed=0, repetition=0)
        assert len(a) == k and len(set(a.tolist())) == k and a.tolist() == sorted(a.tolist())
        assert a.min() >= 0 and a.max() < 1000
        np.testing.assert_array_equal(a, oe_subset(1000, k, seed=0, repetition=0))
    assert oe_subset(1000, 1000, 0, 0).tolist() == list(range(1000))
    per_rep = [oe_subset(1000, 16, seed=0, repetition=r).tolist() for r in range(5)]
    assert len({tuple(s) for s in per_rep}) == 5  # a new subset per repetition
    assert oe_subset(1000, 16, seed=1, repetition=0).tolist() != per_rep[0]
    for bad in (0, 1001):
        with pytest.raises(DataError, match="1 <= k"):
            oe_subset(1000, bad, 0, 0)


def test_oe_size_sweep() -> None:
    assert oe_size_sweep(1) == [1]
    assert oe_size_sweep(8) == [1, 2, 4, 8]
    assert oe_size_sweep(300_000)[-3:] == [131072, 262144, 300000]


def test_oe_classes_draws_k_whole_classes() -> None:
    corpus = _store(4, 0)
    for k in (1, 3, 10):
        drawn = oe_classes(corpus, k, seed=0, repetition=2)
        assert len(drawn.classes) == k == len(set(drawn.classes))
        assert drawn.index.tolist() == [i for i in range(40) if i % 10 in drawn.classes]
        assert oe_classes(corpus, k, seed=0, repetition=2).classes == drawn.classes
    assert len({oe_classes(corpus, 3, seed=0, repetition=r).classes for r in range(8)}) > 1
    with pytest.raises(DataError, match="11 OE classes"):
        oe_classes(corpus, 11, 0, 0)


def test_split_classes_partitions_the_classes() -> None:
    for normal in range(10):
        for n_oe in (1, 4, 8):
            split = split_classes(10, normal, n_oe, seed=0)
            assert split.normal_class == normal and len(split.oe_classes) == n_oe
            assert len(split.test_classes) == 9 - n_oe
            assert sorted((normal, *split.oe_classes, *split.test_classes)) == list(range(10))
            assert split == split_classes(10, normal, n_oe, seed=0)
    assert len({split_classes(10, 0, 4, seed=s).oe_classes for s in range(6)}) > 1
    for bad in (0, 9):
        with pytest.raises(DataError, match="1 <= n_oe <= 8"):
            split_classes(10, 0, bad, 0)


def test_split_protocol_keeps_oe_classes_out_of_the_test_set() -> None:
    result = split_protocol(TRAIN, TEST, normal_class=2, n_oe=4, seed=5)
    split, task = result.split, result.task
    oe_set, test_set = set(split.oe_classes), set(split.test_classes)
    assert task.normal_class == 2 and task.class_name == "c2"
    assert _ids(task.train, 0) == [i for i in range(50) if i % 10 == 2]
    test_ids = _ids(task.test, 100)
    assert {i % 10 for i in test_ids} == {2} | test_set and not {i % 10 for i in test_ids} & oe_set
    assert test_ids == [i for i in range(30) if i % 10 in {2} | test_set]
    assert task.test_anomalous.tolist() == [i % 10 != 2 for i in test_ids]
    assert set(result.oe.labels.tolist()) == oe_set and result.oe.class_names == NAMES
    assert _ids(result.oe.images, 0) == [i for i in range(50) if i % 10 in oe_set]  # OE from the train split
