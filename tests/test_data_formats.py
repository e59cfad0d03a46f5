"""Loaders of the real on-disk formats, on small files this test writes in each format.

CIFAR-100 pickles, MNIST/Fashion-MNIST/EMNIST idx files (raw and gzipped),
80MTI ``tiny_images.bin`` records with an exclusion list, the 300K-images
``.npy``, and the ImageNet-30, ImageNet-22k, CUB, DTD and MVTec-AD layouts.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oesearch.config import config_from_dict
from oesearch.data import DataError, load_corpus, load_normal
from oesearch.data.cifar import load_cifar100
from oesearch.data.idx import load_idx_dataset, read_idx
from oesearch.data.layouts import load_cub, load_dtd, load_imagenet22k, load_imagenet30, load_mvtec
from oesearch.data.tiny import load_random_300k, load_tiny_images


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


# ---------------------------------------------------------------- idx: MNIST, Fashion-MNIST, EMNIST letters


def _idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding: 00 00 08 <ndim>, big-endian uint32 sizes, then the bytes."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _idx_bytes(np.ascontiguousarray(array, dtype=np.uint8))
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _digits(n: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(7, key)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_raw_and_gz(tmp_path: Path, gz: bool) -> None:
    for stem, key in (("train", 0), ("t10k", 1)):
        images, labels = _digits(6 - key, key)
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte", images, gz)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", labels, gz)
    for split, key in (("train", 0), ("test", 1)):
        images, labels = _digits(6 - key, key)
        store = load_idx_dataset("mnist", tmp_path, split)
        assert store.images.shape == (len(images), 28, 28, 1) and store.images.dtype == np.uint8
        np.testing.assert_array_equal(store.images[..., 0], images)  # MNIST rows are image rows
        assert store.labels.dtype == np.int64 and store.labels.tolist() == labels.tolist()
        assert store.class_names == tuple("0123456789")


def test_fashion_mnist_in_torchvision_layout(tmp_path: Path) -> None:
    images, labels = _digits(4, 3)
    raw = tmp_path / "FashionMNIST" / "raw"
    _write_idx(raw / "t10k-images-idx3-ubyte", images, gz=True)
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels, gz=False)
    store = load_idx_dataset("fashion_mnist", tmp_path, "test")
    np.testing.assert_array_equal(store.images[..., 0], images)
    assert store.labels.tolist() == labels.tolist()
    assert store.class_names[0] == "T-shirt/top" and store.class_names[9] == "Ankle boot"


def test_emnist_letters_are_transposed_back_and_labels_shifted(tmp_path: Path) -> None:
    rng = _rng(26)
    upright = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    letters = np.array([1, 2, 26, 13, 1], dtype=np.uint8)  # EMNIST letters: 1 = a ... 26 = z
    folder = tmp_path / "gzip"  # as unzipped from the official gzip.zip
    _write_idx(folder / "emnist-letters-train-images-idx3-ubyte", upright.transpose(0, 2, 1), gz=True)
    _write_idx(folder / "emnist-letters-train-labels-idx1-ubyte", letters, gz=True)
    store = load_idx_dataset("emnist_letters", tmp_path, "train")
    np.testing.assert_array_equal(store.images[..., 0], upright)
    assert store.labels.tolist() == [0, 1, 25, 12, 0]
    assert store.class_names == tuple("abcdefghijklmnopqrstuvwxyz")
    assert [store.class_names[i] for i in store.labels] == ["a", "b", "z", "m", "a"]

    _write_idx(folder / "emnist-letters-train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4], np.uint8), gz=True)
    with pytest.raises(DataError, match=r"\[1, 26\]"):
        load_idx_dataset("emnist_letters", tmp_path, "train")


def test_idx_missing_files_name_the_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_idx_dataset("mnist", tmp_path, "test")
    message = str(info.value)
    assert f"{tmp_path}/t10k-images-idx3-ubyte" in message and "t10k-images-idx3-ubyte.gz" in message
    assert "yann.lecun.com/exdb/mnist" in message
    with pytest.raises(DataError, match="emnist-letters-test-images-idx3-ubyte") as info:
        load_idx_dataset("emnist_letters", tmp_path, "test")
    assert "gzip.zip" in str(info.value)
    images, _ = _digits(3, 0)
    _write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=False)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_idx_dataset("mnist", tmp_path, "train")
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=False)
    with pytest.raises(DataError, match="3 images but .* 4 labels"):
        load_idx_dataset("mnist", tmp_path, "train")


def test_idx_header_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "x-idx3-ubyte"
    good = _idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path.write_bytes(good)
    np.testing.assert_array_equal(read_idx(path, ndim=3), np.arange(24).reshape(2, 3, 4))
    cases = [
        (b"\x01" + good[1:], "magic"),  # not 00 00
        (good[:2] + b"\x0d" + good[3:], "element type 0x0d"),  # float32
        (good, "expected an idx1 file"),  # read as labels
        (good[:-1], "header says shape \\(2, 3, 4\\)"),  # one byte short
        (good + b"\x00", "\\(40 bytes\\), but the file has 41 bytes"),
        (good[:9], "cut short"),
    ]
    for data, pattern in cases:
        path.write_bytes(data)
        with pytest.raises(DataError, match=pattern):
            read_idx(path, ndim=1 if pattern.startswith("expected an idx1") else 3)
    bad_gz = tmp_path / "x-idx3-ubyte.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(bad_gz, ndim=3)


# ---------------------------------------------------------------- 80MTI tiny_images.bin and 300K .npy


def _tiny_images(n: int) -> np.ndarray:
    """n distinct HWC images; image i has a distinct pixel pattern."""
    return _rng(80, n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _write_tiny_bin(path: Path, images: np.ndarray) -> None:
    # The reference reads a record with reshape((32, 32, 3), order="F"): write exactly its inverse.
    path.write_bytes(b"".join(image.ravel(order="F").tobytes() for image in images))


def test_tiny_images_record_layout_matches_the_reference_reader(tmp_path: Path) -> None:
    images = _tiny_images(6)
    path = tmp_path / "tiny_images.bin"
    _write_tiny_bin(path, images)
    raw = path.read_bytes()
    # The documented layout: byte c*1024 + x*32 + y holds row y, column x, channel c.
    assert raw[3072 * 2 + 1 * 1024 + 5 * 32 + 7] == images[2, 7, 5, 1]
    store = load_tiny_images(path)
    assert store.images.shape == (6, 32, 32, 3) and store.class_names == ("80mti",)
    np.testing.assert_array_equal(store.images, images)
    assert store.labels.tolist() == [0] * 6
    for i in range(6):  # the reference loader's expression, record by record
        reference = np.frombuffer(raw[3072 * i : 3072 * (i + 1)], dtype=np.uint8).reshape((32, 32, 3), order="F")
        np.testing.assert_array_equal(store.images[i], reference)


def test_tiny_images_exclusion_list_is_one_based_and_count_is_seeded(tmp_path: Path) -> None:
    images = _tiny_images(40)
    path = tmp_path / "tiny_images.bin"
    _write_tiny_bin(path, images)
    exclude = tmp_path / "80mn_cifar_idxs.txt"
    exclude.write_text("1\n5\n\n40\n5\n")  # records 0, 4 and 39; a duplicate and a blank line
    kept = [i for i in range(40) if i not in (0, 4, 39)]
    store = load_tiny_images(path, exclude)
    np.testing.assert_array_equal(store.images, images[kept])

    draws = [load_tiny_images(path, exclude, count=10, seed=s).images for s in (0, 0, 1)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])
    for drawn in draws:
        positions = [int(np.flatnonzero((images == im).all(axis=(1, 2, 3)))[0]) for im in drawn]
        assert len(positions) == 10 and positions == sorted(set(positions))  # distinct, in file order
        assert set(positions) <= set(kept)
    assert len(load_tiny_images(path, exclude, count=37).images) == 37  # every record not excluded
    with pytest.raises(DataError, match=r"count must lie in \[1, 37\]"):
        load_tiny_images(path, exclude, count=38)


def test_tiny_images_errors(tmp_path: Path) -> None:
    path = tmp_path / "tiny_images.bin"
    with pytest.raises(DataError, match="tiny_images.bin") as info:
        load_tiny_images(path)
    assert str(path) in str(info.value) and "300K" in str(info.value)
    path.write_bytes(bytes(3072 * 2 + 5))
    with pytest.raises(DataError, match="multiple of 3072"):
        load_tiny_images(path)
    path.write_bytes(bytes(3072 * 3))
    exclude = tmp_path / "idxs.txt"
    with pytest.raises(DataError, match="index list not found") as info:
        load_tiny_images(path, exclude)
    assert str(exclude) in str(info.value)
    for text, pattern in (("0\n", r"\[1, 3\]"), ("4\n", r"\[1, 3\]"), ("2\nabc\n", "one integer index per line")):
        exclude.write_text(text)
        with pytest.raises(DataError, match=pattern):
            load_tiny_images(path, exclude)


def test_tiny_images_full_size_file_is_memory_mapped(tmp_path: Path) -> None:
    """A sparse file of the real size: reading needs `count`, and then touches only the drawn records."""
    path = tmp_path / "tiny_images.bin"
    with open(path, "wb") as f:
        f.truncate(3072 * 79_302_017)  # 244 GB on paper, no blocks on disk
        f.seek(3072 * 79_302_016)
        f.write(_tiny_images(1)[0].ravel(order="F").tobytes())  # the last record is a real image
    with pytest.raises(DataError, match="79,302,017 records .* set `count`"):
        load_tiny_images(path)
    exclude = tmp_path / "80mn_cifar_idxs.txt"
    exclude.write_text("\n".join(str(i) for i in range(1, 79_302_017, 1000)))
    store = load_tiny_images(path, exclude, count=2000, seed=0)
    assert store.images.shape == (2000, 32, 32, 3)
    assert load_tiny_images(path, exclude, count=2000, seed=0).images.tobytes() == store.images.tobytes()


def test_random_300k_npy(tmp_path: Path) -> None:
    images = _tiny_images(12)
    path = tmp_path / "300K_random_images.npy"
    np.save(path, images)
    store = load_random_300k(path)
    assert isinstance(store.images, np.memmap)  # never read whole
    np.testing.assert_array_equal(store.images, images)
    assert store.class_names == ("80mti",) and store.labels.tolist() == [0] * 12
    a, b = (load_random_300k(path, count=5, seed=3).images for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert len({im.tobytes() for im in a}) == 5 and {im.tobytes() for im in a} <= {im.tobytes() for im in images}

    missing = tmp_path / "nope.npy"
    with pytest.raises(DataError, match="300K_random_images.npy") as info:
        load_random_300k(missing)
    assert str(missing) in str(info.value) and "hendrycks" in str(info.value)
    np.save(path, images[:, :28])
    with pytest.raises(DataError, match=r"\(N, 32, 32, 3\) uint8"):
        load_random_300k(path)
    path.write_bytes(b"not an npy file")
    with pytest.raises(DataError, match="not a .npy array"):
        load_random_300k(path)


# ---------------------------------------------------------------- folder layouts


def _png(path: Path, key: int, size: int = 6, mode: str = "RGB") -> np.ndarray:
    """Write a distinct lossless image and return its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    pixels = _rng(5, key).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _wnid(i: int) -> str:
    return f"n{i:08d}"


def test_imagenet22k_minus_excluded_wnids(tmp_path: Path) -> None:
    root = tmp_path / "imagenet22k"
    pixels = {}
    for c in range(1, 6):  # n00000001..n00000005; 1 and 3 are "ImageNet-1k"
        for i in range(3):
            pixels[(c, i)] = _png(root / _wnid(c) / f"{_wnid(c)}_{i}.JPEG.png", 10 * c + i)
    exclude = tmp_path / "imagenet1k_wnids.txt"
    exclude.write_text("\n".join([_wnid(1), _wnid(3)] + [_wnid(1000 + i) for i in range(998)]) + "\n")
    store = load_imagenet22k(root, exclude, size=None)
    assert store.class_names == (_wnid(2), _wnid(4), _wnid(5))
    assert store.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(store.images[3], pixels[(4, 0)])
    np.testing.assert_array_equal(store.images[8], pixels[(5, 2)])

    few = load_imagenet22k(root, exclude, size=4, per_class=2, seed=0)
    assert few.images.shape == (6, 4, 4, 3) and few.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(few.images, load_imagenet22k(root, exclude, size=4, per_class=2, seed=0).images)

    exclude.write_text("\n".join(_wnid(i) for i in range(30)))  # the reference code's pitfall: only 30 classes
    with pytest.raises(DataError, match="names 30 wnids.*all 1000 ImageNet-1k wnids"):
        load_imagenet22k(root, exclude)
    exclude.write_text("n01440764\nairliner\n")
    with pytest.raises(DataError, match="'airliner' is not a wnid"):
        load_imagenet22k(root, exclude)
    with pytest.raises(DataError, match="wnid list not found") as info:
        load_imagenet22k(root, tmp_path / "missing.txt")
    assert str(tmp_path / "missing.txt") in str(info.value)


def test_imagenet30_train_test_folders(tmp_path: Path) -> None:
    names = [f"class{c:02d}" for c in range(30)]
    for c, name in enumerate(names):
        _png(tmp_path / "one_class_train" / name / "a.png", c, size=5)
        _png(tmp_path / "test" / name / "a.png", 100 + c, size=7)
    train = load_imagenet30(tmp_path, "train", size=4)  # the original archive's folder name
    test = load_imagenet30(tmp_path, "test", size=None)
    assert train.class_names == test.class_names == tuple(names)
    assert train.images.shape == (30, 4, 4, 3) and test.images.shape == (30, 7, 7, 3)
    np.testing.assert_array_equal(test.images[29], _rng(5, 129).integers(0, 256, (7, 7, 3), dtype=np.uint8))

    (tmp_path / "test" / "class00" / "a.png").rename(tmp_path / "stray.png")
    (tmp_path / "test" / "class00").rmdir()
    with pytest.raises(DataError, match="has 29 class folders; ImageNet-30 has 30"):
        load_imagenet30(tmp_path, "test", size=None)
    with pytest.raises(DataError, match="one_class_test") as info:
        load_imagenet30(tmp_path / "elsewhere", "test")
    assert "ss-ood" in str(info.value)


def test_mvtec_category(tmp_path: Path) -> None:
    screw = tmp_path / "mvtec" / "screw"
    train = [_png(screw / "train" / "good" / f"{i:03d}.png", i, mode="L") for i in range(3)]
    test_good = _png(screw / "test" / "good" / "000.png", 10, mode="L")
    thread = [_png(screw / "test" / "thread_top" / f"{i:03d}.png", 20 + i, mode="L") for i in range(2)]
    scratch = _png(screw / "test" / "scratch_head" / "000.png", 30, mode="L")
    (screw / "ground_truth" / "scratch_head").mkdir(parents=True)  # masks are not images of a split
    tr = load_mvtec(tmp_path / "mvtec", "screw", "train", size=None)
    te = load_mvtec(tmp_path / "mvtec", "screw", "test", size=None)
    assert tr.class_names == te.class_names == ("good", "scratch_head", "thread_top")
    assert tr.images.shape == (3, 6, 6, 1) and tr.labels.tolist() == [0, 0, 0]
    np.testing.assert_array_equal(tr.images[..., 0], np.stack(train))
    assert te.labels.tolist() == [0, 1, 2, 2]
    np.testing.assert_array_equal(te.images[..., 0], np.stack([test_good, scratch, *thread]))
    with pytest.raises(DataError, match="MVTec-AD category 'bottle' not found") as info:
        load_mvtec(tmp_path / "mvtec", "bottle", "test")
    assert "bottle/train/good" in str(info.value) and "mvtec.com" in str(info.value)


def test_cub_official_split(tmp_path: Path) -> None:
    folder = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    rows, pixels = [], {}
    for image_id in range(1, 7):
        cls = (image_id - 1) % 2
        rel = f"{classes[cls]}/img_{image_id}.png"
        pixels[image_id] = _png(folder / "images" / rel, image_id)
        rows.append((image_id, rel, cls + 1, int(image_id <= 3)))
    (folder / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _, _ in rows))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))
    (folder / "classes.txt").write_text("".join(f"{n + 1} {name}\n" for n, name in enumerate(classes)))
    train = load_cub(tmp_path, "train", size=None)
    test = load_cub(folder, "test", size=None)
    assert train.class_names == ("Black_footed_Albatross", "Laysan_Albatross")
    assert train.labels.tolist() == [0, 1, 0] and test.labels.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(train.images[1], pixels[2])
    np.testing.assert_array_equal(test.images, np.stack([pixels[4], pixels[5], pixels[6]]))
    (folder / "train_test_split.txt").unlink()
    with pytest.raises(DataError, match="train_test_split.txt not found.*CUB_200_2011.tgz"):
        load_cub(folder, "train")


def test_dtd_fold_files(tmp_path: Path) -> None:
    folder = tmp_path / "dtd"
    pixels = {name: _png(folder / "images" / name, n) for n, name in enumerate(
        ["banded/banded_0001.jpg.png", "banded/banded_0002.jpg.png", "zigzagged/zigzagged_0001.jpg.png"])}
    (folder / "labels").mkdir()
    (folder / "labels" / "train2.txt").write_text("zigzagged/zigzagged_0001.jpg.png\nbanded/banded_0002.jpg.png\n")
    (folder / "labels" / "test2.txt").write_text("banded/banded_0001.jpg.png\n")
    train = load_dtd(tmp_path, "train", fold=2, size=None)
    assert train.class_names == ("banded", "zigzagged") and train.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(train.images[0], pixels["zigzagged/zigzagged_0001.jpg.png"])
    assert load_dtd(folder, "test", fold=2, size=None).labels.tolist() == [0]
    with pytest.raises(DataError, match="test1.txt not found.*dtd-r1.0.1.tar.gz"):
        load_dtd(folder, "test", fold=1)


# ---------------------------------------------------------------- through the configured sources


def test_configured_sources_load_and_conform(tmp_path: Path) -> None:
    """Normal data and corpora named in a config reach the real loaders, cached by their options."""
    images, labels = _digits(8, 0)
    _write_idx(tmp_path / "fmnist" / "train-images-idx3-ubyte", images, gz=True)
    _write_idx(tmp_path / "fmnist" / "train-labels-idx1-ubyte", labels, gz=True)
    _write_cifar100(tmp_path / "c100" / "cifar-100-python")
    _write_tiny_bin(tmp_path / "tiny_images.bin", _tiny_images(9))
    (tmp_path / "idxs.txt").write_text("2\n")
    config = config_from_dict({"data": {
        "normal": {"kind": "fashion_mnist", "path": str(tmp_path / "fmnist")},
        "corpus": {"kind": "cifar100", "path": str(tmp_path / "c100")},
    }})
    cache = tmp_path / "cache"
    normal = load_normal(config.data.normal, "train", cache)
    np.testing.assert_array_equal(normal.images[..., 0], images)
    corpus = load_corpus(config.data.corpus, normal.image_shape, cache)
    assert corpus.images.shape == (9, 28, 28, 1)  # grayscale CIFAR-100 for Fashion-MNIST, as in the paper
    assert len(list(cache.iterdir())) == 2

    tiny = config_from_dict({"data": {"corpus": {
        "kind": "tiny_images", "path": str(tmp_path / "tiny_images.bin"), "exclude": str(tmp_path / "idxs.txt"),
        "count": 4, "subset_seed": 1}}}).data.corpus
    store = load_corpus(tiny, (32, 32, 3), cache)
    np.testing.assert_array_equal(store.images, load_tiny_images(tmp_path / "tiny_images.bin", tmp_path / "idxs.txt",
                                                                 count=4, seed=1).images)
    other = tiny.model_copy(update={"subset_seed": 2})
    assert not np.array_equal(load_corpus(other, (32, 32, 3), cache).images, store.images)
