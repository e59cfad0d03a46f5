"""The ImageFolder and CIFAR-10 loaders, on real files written in the standard formats."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oesearch.data.cifar import load_cifar10
from oesearch.data.folders import load_image_folder
from oesearch.data.store import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_JPEG = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"


# ---------------------------------------------------------------- ImageFolder


def _pixels(class_index: int, image_index: int, size: int = 6) -> np.ndarray:
    """A distinct, deterministic RGB image per (class, image)."""
    rng = np.random.default_rng(100 * class_index + image_index)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


@pytest.fixture()
def png_tree(tmp_path: Path) -> Path:
    """3 classes x 4 PNGs; class folders are created out of alphabetical order on purpose."""
    root = tmp_path / "tree"
    for class_index, name in [(2, "zebra"), (0, "ant"), (1, "bee")]:
        (root / name).mkdir(parents=True)
        for i in reversed(range(4)):
            Image.fromarray(_pixels(class_index, i)).save(root / name / f"img{i}.png")
    return root


def test_image_folder_reads_png_pixels_labels_and_class_order(png_tree: Path) -> None:
    (png_tree / "bee" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    store = load_image_folder(png_tree)
    assert store.class_names == ("ant", "bee", "zebra")
    assert store.images.shape == (12, 6, 6, 3) and store.images.dtype == np.uint8
    assert store.labels.dtype == np.int64
    assert store.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for n in range(12):
        np.testing.assert_array_equal(store.images[n], _pixels(n // 4, n % 4))


def test_image_folder_adds_jpeg_and_resizes(png_tree: Path) -> None:
    jpeg = np.full((6, 6, 3), (200, 40, 90), dtype=np.uint8)
    Image.fromarray(jpeg).save(png_tree / "ant" / "img9.jpg", quality=95)
    store = load_image_folder(png_tree)
    assert store.images.shape == (13, 6, 6, 3)
    assert store.labels.tolist()[:5] == [0] * 5
    # JPEG is lossy, so only approximately equal; it sorts after img0..img3.png.
    assert np.abs(store.images[4].astype(int) - jpeg).max() <= 4

    resized = load_image_folder(png_tree, size=3)
    assert resized.images.shape == (13, 3, 3, 3)
    expected = np.asarray(Image.fromarray(_pixels(0, 0)).resize((3, 3), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resized.images[0], expected)
    np.testing.assert_array_equal(resized.labels, store.labels)


def test_image_folder_grayscale_handling(png_tree: Path, tmp_path: Path) -> None:
    grey = load_image_folder(png_tree, grayscale=True)
    assert grey.images.shape == (12, 6, 6, 1)
    expected = np.asarray(Image.fromarray(_pixels(0, 0)).convert("L"))
    np.testing.assert_array_equal(grey.images[0, :, :, 0], expected)

    # An all-L tree keeps one channel by default, and three when asked for RGB.
    l_root = tmp_path / "grey"
    for name in ("a", "b"):
        (l_root / name).mkdir(parents=True)
        Image.fromarray(np.full((5, 4), 17 if name == "a" else 230, dtype=np.uint8)).save(l_root / name / "x.png")
    auto = load_image_folder(l_root)
    assert auto.images.shape == (2, 5, 4, 1)
    assert auto.images[0].max() == auto.images[0].min() == 17
    assert auto.images[1].min() == 230
    rgb = load_image_folder(l_root, grayscale=False)
    assert rgb.images.shape == (2, 5, 4, 3)
    assert (rgb.images[1] == 230).all()

    # One colour image among L images: everything becomes RGB, grey replicated.
    Image.fromarray(np.zeros((5, 4, 3), dtype=np.uint8)).save(l_root / "b" / "y.png")
    mixed = load_image_folder(l_root)
    assert mixed.images.shape == (3, 5, 4, 3)
    assert (mixed.images[0] == 17).all()


def test_image_folder_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as info:
        load_image_folder(missing)
    assert str(missing) in str(info.value)
    assert "root/<class>/<image>" in str(info.value)


def test_image_folder_empty_trees(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected an ImageFolder tree") as info:
        load_image_folder(tmp_path)  # no class sub-folders at all
    assert str(tmp_path) in str(info.value)

    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="expected an ImageFolder tree") as info:
        load_image_folder(tmp_path)
    assert "cls" in str(info.value)


def test_image_folder_mixed_sizes_need_size(png_tree: Path) -> None:
    odd = png_tree / "bee" / "img2b.png"
    Image.fromarray(np.zeros((7, 9, 3), dtype=np.uint8)).save(odd)
    with pytest.raises(DataError, match="size") as info:
        load_image_folder(png_tree)
    assert str(odd) in str(info.value)
    assert load_image_folder(png_tree, size=4).images.shape == (13, 4, 4, 3)


def test_image_folder_corrupt_image(png_tree: Path) -> None:
    bad = png_tree / "zebra" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match="cannot decode") as info:
        load_image_folder(png_tree)
    assert str(bad) in str(info.value)

    # A PNG cut short decodes the header but fails on the pixels.
    truncated = png_tree / "zebra" / "img0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    bad.unlink()
    with pytest.raises(DataError, match="cannot decode") as info:
        load_image_folder(png_tree)
    assert str(truncated) in str(info.value)


def test_image_folder_rejects_bad_size(png_tree: Path) -> None:
    with pytest.raises(ValueError):
        load_image_folder(png_tree, size=0)


# ---------------------------------------------------------------- CIFAR-10 python batches


def _write_cifar(folder: Path, per_batch: int = 7) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write the official layout with ``per_batch`` images per batch; return {file: (data, labels)}."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for n, name in enumerate(names):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        batch = {
            b"batch_label": f"batch {n}".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{n}_{i}.png".encode() for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return written


def test_cifar10_round_trips_pixels_to_hwc(tmp_path: Path) -> None:
    written = _write_cifar(tmp_path / "cifar-10-batches-py")
    test = load_cifar10(tmp_path / "cifar-10-batches-py", "test")
    data, labels = written["test_batch"]
    assert test.images.shape == (7, 32, 32, 3) and test.images.dtype == np.uint8
    assert test.class_names == CIFAR10_CLASSES
    assert test.labels.dtype == np.int64 and test.labels.tolist() == labels
    # Row layout: 1024 red bytes, 1024 green, 1024 blue, each plane row-major.
    assert test.images[0, 0, 0, 0] == data[0, 0]
    assert test.images[0, 0, 0, 1] == data[0, 1024]
    assert test.images[0, 0, 0, 2] == data[0, 2048]
    assert test.images[0, 0, 1, 0] == data[0, 1]
    assert test.images[0, 1, 0, 0] == data[0, 32]
    assert test.images[3, 31, 31, 2] == data[3, 3071]
    np.testing.assert_array_equal(test.images.transpose(0, 3, 1, 2).reshape(7, 3072), data)

    train = load_cifar10(tmp_path, "train")  # the parent folder works too
    assert train.images.shape == (35, 32, 32, 3)
    expected = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images.transpose(0, 3, 1, 2).reshape(35, 3072), expected)
    assert train.labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])


def test_cifar10_rejects_unknown_split(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    with pytest.raises(ValueError, match="split"):
        load_cifar10(tmp_path, "val")


def test_cifar10_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_cifar10(tmp_path, "test")
    message = str(info.value)
    assert str(tmp_path) in message and "test_batch" in message and "batches.meta" in message
    assert "cifar-10-python.tar.gz" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message

    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    (folder / "data_batch_3").unlink()
    load_cifar10(tmp_path, "test")  # the test split does not need the train batches
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")


def test_cifar10_wrong_content(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder)
    test_batch = folder / "test_batch"

    test_batch.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch") as info:
        load_cifar10(folder, "test")
    assert str(test_batch) in str(info.value)

    with open(test_batch, "wb") as f:
        pickle.dump({b"images": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="b'data'"):
        load_cifar10(folder, "test")

    with open(test_batch, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 28 * 28), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="3072"):
        load_cifar10(folder, "test")

    with open(test_batch, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, f)
    with pytest.raises(DataError, match="labels"):
        load_cifar10(folder, "test")

    with open(test_batch, "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(DataError, match="not a dict"):
        load_cifar10(folder, "test")

    _write_cifar(tmp_path / "fresh" / "cifar-10-batches-py")
    with open(tmp_path / "fresh" / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"only", b"three", b"names"]}, f)
    with pytest.raises(DataError, match="batches.meta"):
        load_cifar10(tmp_path / "fresh", "test")


# ---------------------------------------------------------------- real CIFAR-10 as JPEG (optional)


def test_cifar10_jpeg_test_split_loads(tmp_path: Path) -> None:
    archive = Path(os.environ.get("OESEARCH_CIFAR10_JPEG", CIFAR10_JPEG))
    if not archive.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {archive} (set OESEARCH_CIFAR10_JPEG to its path)")
    with tarfile.open(archive, "r:gz") as tar:
        seen_test = False
        for member in tar:  # streamed: stop once the test split has gone by, skipping 50k train files
            if member.name.startswith("cifar10-jpeg/test/"):
                tar.extract(member, tmp_path, filter="data")
                seen_test = True
            elif seen_test and not member.name.startswith("cifar10-jpeg/test"):
                break
    store = load_image_folder(tmp_path / "cifar10-jpeg" / "test")
    assert len(store) == 10_000
    assert store.class_names == CIFAR10_CLASSES
    assert store.image_shape == (32, 32, 3)
    assert np.bincount(store.labels, minlength=10).tolist() == [1_000] * 10
    assert 100 < store.images.mean() < 140  # real photos, mean intensity about 121
