"""Loaders of the real on-disk formats, on small files this test writes in each format.

CIFAR-100 pickles, MNIST/Fashion-MNIST/EMNIST idx files (raw and gzipped),
80MTI ``tiny_images.bin`` records with an exclusion list, the 300K-images
``.npy``, and the ImageNet-30, ImageNet-22k, CUB, DTD and MVTec-AD layouts.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from oesearch.data import DataError
from oesearch.data.cifar import load_cifar100


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


# ---------------------------------------------------------------- CIFAR-100


def _write_cifar100(folder: Path, n_train: int = 9, n_test: int = 5) -> dict[str, dict[bytes, object]]:
    """The official layout: ``train``, ``test`` and ``meta`` pickles with bytes keys."""
    folder.mkdir(parents=True)
    written = {}
    for n, (name, count) in enumerate((("train", n_train), ("test", n_test))):
        rng = _rng(100, n)
        batch = {
            b"filenames": [f"{name}_{i}.png".encode() for i in range(count)],
            b"batch_label": f"{name} batch 1 of 1".encode(),
            b"fine_labels": [int(x) for x in rng.integers(0, 100, count)],
            b"coarse_labels": [int(x) for x in rng.integers(0, 20, count)],
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = batch
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return written


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    written = _write_cifar100(tmp_path / "cifar-100-python")
    for split, count in (("train", 9), ("test", 5)):
        fine = load_cifar100(tmp_path, split)  # the parent of cifar-100-python works
        data = written[split][b"data"]
        assert fine.images.shape == (count, 32, 32, 3) and fine.images.dtype == np.uint8
        assert fine.images[0, 0, 0, 0] == data[0, 0] and fine.images[0, 0, 0, 2] == data[0, 2048]
        assert fine.images[1, 1, 0, 1] == data[1, 1024 + 32]
        np.testing.assert_array_equal(fine.images.transpose(0, 3, 1, 2).reshape(count, 3072), data)
        assert fine.labels.tolist() == written[split][b"fine_labels"]
        assert fine.class_names == tuple(f"fine{i}" for i in range(100))
        coarse = load_cifar100(tmp_path / "cifar-100-python", split, labels="coarse")
        assert coarse.labels.tolist() == written[split][b"coarse_labels"]
        assert coarse.class_names == tuple(f"coarse{i}" for i in range(20))
        np.testing.assert_array_equal(coarse.images, fine.images)
    with pytest.raises(ValueError, match="labels"):
        load_cifar100(tmp_path, "train", labels="medium")


def test_cifar100_missing_and_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar100(tmp_path, "train")
    message = str(info.value)
    assert "CIFAR-100" in message and "train" in message and "meta" in message
    assert "cifar-100-python.tar.gz" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message

    folder = tmp_path / "cifar-100-python"
    _write_cifar100(folder)
    with open(folder / "test", "wb") as f:  # a CIFAR-10 batch where a CIFAR-100 one belongs
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="b'fine_labels'"):
        load_cifar100(folder, "test")
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, f)
    with pytest.raises(DataError, match=r"\[0, 100\)"):
        load_cifar100(folder, "test")
