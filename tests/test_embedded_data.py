"""The embedded default data (sklearn digits, natural-photo patches), the store and its cache, one-vs-rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oesearch.config import ImageFolderSource, NaturalPatchesSource
from oesearch.data import DataError, ImageStore, cached, conform, load_corpus, load_normal, one_vs_rest
from oesearch.data.embedded import load_digits_split, load_natural_patches

# ---------------------------------------------------------------- digits


def _full_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def _rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each (image, label) as one row, sorted: a multiset fingerprint."""
    flat = np.concatenate([np.asarray(images).reshape(len(images), -1).astype(np.int64), labels[:, None]], axis=1)
    return flat[np.lexsort(flat.T[::-1])]


def test_digits_split_partitions_all_images() -> None:
    train = load_digits_split("train", 0.5, 0)
    test = load_digits_split("test", 0.5, 0)
    raw, target = _full_digits()
    assert len(train) + len(test) == 1797 == len(raw)
    # 0..16 stretched to 0..255 by rounding k * 255 / 16, computed here from the raw data.
    scaled = np.array([round(v * 255 / 16) for v in raw.ravel()]).reshape(raw.shape)
    union = _rows(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels]))
    # Equal multisets of 1,797 rows: every original image is in exactly one split (disjoint, complete).
    np.testing.assert_array_equal(union, _rows(scaled, target))
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    assert train.class_names == tuple(str(d) for d in range(10))


def test_digits_pixel_scale() -> None:
    train = load_digits_split("train")
    allowed = {round(k * 255 / 16) for k in range(17)}
    assert set(np.unique(train.images).tolist()) <= allowed
    assert train.images.min() == 0 and train.images.max() == 255


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_digits_per_class_test_fraction(fraction: float) -> None:
    _, target = _full_digits()
    test = load_digits_split("test", fraction, 0)
    train = load_digits_split("train", fraction, 0)
    for c in range(10):
        n_class = int((target == c).sum())
        n_test = int((test.labels == c).sum())
        assert abs(n_test - n_class * fraction) <= 0.5
        assert n_test + int((train.labels == c).sum()) == n_class


def test_digits_split_is_seeded() -> None:
    a = load_digits_split("test", 0.5, 0)
    b = load_digits_split("test", 0.5, 0)
    c = load_digits_split("test", 0.5, 1)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    # Same class counts (same fraction), different members.
    np.testing.assert_array_equal(np.bincount(a.labels), np.bincount(c.labels))
    assert not np.array_equal(a.images, c.images)


def test_digits_bad_split() -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_digits_split("val")


# ---------------------------------------------------------------- natural patches


@pytest.fixture(scope="module")
def patches() -> ImageStore:
    return load_natural_patches()


def _grid(n: int, patch: int, stride: int) -> int:
    """Window positions along a side of n pixels: 0, stride, ... up to n - patch."""
    return (n - patch) // stride + 1


def test_natural_patches_shape_and_count(patches: ImageStore) -> None:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    expected = 0
    for photo in photos:
        h, w = photo.shape[:2]
        for s in (2, 4, 8, 16):
            expected += _grid(h // s, 8, 4) * _grid(w // s, 8, 4)
    assert len(patches) == expected >= 2000
    assert patches.images.shape == (expected, 8, 8, 1)
    assert patches.images.dtype == np.uint8
    assert patches.class_names == ("china", "flower")
    assert np.bincount(patches.labels).tolist() == [expected // 2, expected // 2]  # two 427x640 photos
    # Natural content: not all flat.
    assert patches.images.reshape(len(patches), -1).std(axis=1).mean() > 5


@pytest.mark.parametrize("photo, scale, row, col", [(1, 4, 10, 7), (0, 2, 0, 0), (1, 16, 4, 8)])
def test_a_patch_equals_a_window_of_the_downscaled_photo(patches: ImageStore, photo: int, scale: int,
                                                        row: int, col: int) -> None:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    # Offset of the patch in the store: earlier photos, earlier scales of this photo, then row-major grid.
    offset = 0
    for p in range(photo + 1):
        h, w = photos[p].shape[:2]
        for s in (2, 4, 8, 16):
            if p == photo and s == scale:
                break
            offset += _grid(h // s, 8, 4) * _grid(w // s, 8, 4)
    h, w = photos[photo].shape[:2]
    offset += row * _grid(w // scale, 8, 4) + col

    gray = Image.fromarray(photos[photo]).convert("L")
    small = gray.resize((w // scale, h // scale), Image.Resampling.LANCZOS)
    window = np.asarray(small.crop((4 * col, 4 * row, 4 * col + 8, 4 * row + 8)))
    np.testing.assert_array_equal(patches.images[offset, :, :, 0], window)
    assert patches.labels[offset] == photo


# ---------------------------------------------------------------- store and cache


def _store(n: int = 6, shape: tuple[int, int, int] = (4, 4, 3), seed: int = 0) -> ImageStore:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    return ImageStore(images, np.arange(n, dtype=np.int64) % 3, ("cat", "dog", "fox"))


def test_store_save_load_round_trip(tmp_path: Path) -> None:
    store = _store()
    store.save(tmp_path / "s")
    loaded = ImageStore.load(tmp_path / "s")
    np.testing.assert_array_equal(loaded.images, store.images)
    np.testing.assert_array_equal(loaded.labels, store.labels)
    assert loaded.class_names == ("cat", "dog", "fox")
    assert isinstance(loaded.images, np.memmap)
    assert not isinstance(ImageStore.load(tmp_path / "s", mmap=False).images, np.memmap)
    # The atomic save leaves no temporary sibling behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_store_validation() -> None:
    with pytest.raises(DataError, match="uint8"):
        ImageStore(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int64), ("a",))
    with pytest.raises(DataError, match="labels must have shape"):
        ImageStore(np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int64), ("a",))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\)"):
        ImageStore(np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 2]), ("a", "b"))


def test_cached_builds_once_then_loads(tmp_path: Path) -> None:
    calls = []

    def build() -> ImageStore:
        calls.append(1)
        return _store()

    first = cached(tmp_path, "key-a", build)
    second = cached(tmp_path, "key-a", build)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.images, second.images)
    assert isinstance(second.images, np.memmap)
    cached(tmp_path, "key-b", build)  # another key builds again
    assert len(calls) == 2
    # A damaged cache is rebuilt, not trusted.
    (tmp_path / "key-a" / "header.json").write_text("{not json")
    third = cached(tmp_path, "key-a", build)
    assert len(calls) == 3
    np.testing.assert_array_equal(third.images, first.images)
    assert cached(tmp_path, "key-a", build) is not None and len(calls) == 3
    # No cache directory: build every time.
    cached(None, "key-a", build)
    assert len(calls) == 4


def test_load_normal_digits_is_cached(tmp_path: Path) -> None:
    from oesearch.config import DigitsSource

    a = load_normal(DigitsSource(), "train", tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    b = load_normal(DigitsSource(), "train", tmp_path)
    assert isinstance(b.images, np.memmap)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.images, load_digits_split("train").images)
    load_normal(DigitsSource(split_seed=1), "train", tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # other options, other cache entry


# ---------------------------------------------------------------- one vs rest


def test_one_vs_rest_on_digits() -> None:
    train = load_digits_split("train")
    test = load_digits_split("test")
    task = one_vs_rest(train, test, 8)
    np.testing.assert_array_equal(task.test_anomalous, test.labels != 8)
    np.testing.assert_array_equal(task.train, train.images[train.labels == 8])
    np.testing.assert_array_equal(task.test, test.images)
    assert task.class_name == "8" and task.normal_class == 8 and task.image_shape == (8, 8, 1)
    assert task.test_anomalous.sum() == len(test) - (test.labels == 8).sum()


def test_one_vs_rest_out_of_range_class_names_the_valid_ones() -> None:
    store = _store()
    for bad in (3, -1):
        with pytest.raises(DataError) as err:
            one_vs_rest(store, store, bad)
        message = str(err.value)
        assert f"normal class {bad} is out of range" in message
        assert "0=cat, 1=dog, 2=fox" in message


def test_one_vs_rest_other_errors() -> None:
    store = _store()
    with pytest.raises(DataError, match="different classes"):
        one_vs_rest(store, ImageStore(store.images, store.labels, ("a", "b", "c")), 0)
    with pytest.raises(DataError, match="train images are"):
        one_vs_rest(store, _store(shape=(5, 5, 3)), 0)
    only_normal = ImageStore(store.images, np.zeros(len(store), np.int64), store.class_names)
    with pytest.raises(DataError, match="both normal and anomalous"):
        one_vs_rest(store, only_normal, 0)


# ---------------------------------------------------------------- corpus conform


def _luma(rgb: tuple[int, int, int]) -> int:
    r, g, b = rgb
    return round(0.299 * r + 0.587 * g + 0.114 * b)


COLOURS = [(200, 100, 50), (10, 250, 30), (255, 255, 255), (0, 0, 0), (90, 20, 240)]


def test_load_corpus_conforms_rgb_32_to_gray_8(tmp_path: Path) -> None:
    tree = tmp_path / "corpus"
    for c, colour in enumerate(COLOURS):
        (tree / f"class{c}").mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(tree / f"class{c}" / "img.png")
    source = ImageFolderSource(path=str(tree))
    cache = tmp_path / "cache"
    corpus = load_corpus(source, (8, 8, 1), cache)
    assert corpus.images.shape == (len(COLOURS), 8, 8, 1) and corpus.images.dtype == np.uint8
    # By hand: 0.299*200 + 0.587*100 + 0.114*50 = 124.2 -> 124; 10,250,30 -> 153.16 -> 153; ...
    assert [_luma(c) for c in COLOURS[:2]] == [124, 153]
    for i, colour in enumerate(COLOURS):
        assert np.all(corpus.images[i] == _luma(colour)), (colour, np.unique(corpus.images[i]))
    # Cached: the second load memory-maps the stored result.
    again = load_corpus(source, (8, 8, 1), cache)
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(again.images, corpus.images)


def test_conform_resizes_with_a_triangle_filter_and_expands_gray() -> None:
    # A 16x16 gray image of constant 8x8 quadrants (0, 200 / 100, 0), shrunk to 2x2.
    img = np.zeros((16, 16, 1), np.uint8)
    img[:8, 8:] = 200
    img[8:, :8] = 100
    store = ImageStore(img[None], np.zeros(1, np.int64), ("x",))
    small = conform(store, (2, 2, 1))
    # Antialiased bilinear = a triangle filter stretched by the scale factor (support 2 x scale),
    # so neighbouring quadrants mix near the edges; compute it separably in plain numpy.
    def triangle_weights(out: int, inp: int) -> np.ndarray:
        scale = inp / out
        w = np.zeros((out, inp))
        for o in range(out):
            centre = (o + 0.5) * scale
            for i in range(inp):
                w[o, i] = max(0.0, 1 - abs((i + 0.5 - centre) / scale))
            w[o] /= w[o].sum()
        return w

    wts = triangle_weights(2, 16)
    expected = np.rint(wts @ img[..., 0].astype(float) @ wts.T).astype(np.uint8)
    np.testing.assert_array_equal(small.images[0, :, :, 0], expected)
    rgb = conform(store, (16, 16, 3))
    assert rgb.images.shape == (1, 16, 16, 3)
    for ch in range(3):
        np.testing.assert_array_equal(rgb.images[0, :, :, ch], img[..., 0])
    assert conform(store, (16, 16, 1)) is store
    with pytest.raises(DataError, match="cannot convert 1-channel images to 2 channels"):
        conform(store, (16, 16, 2))


def test_natural_patches_source_through_load_corpus(patches: ImageStore) -> None:
    corpus = load_corpus(NaturalPatchesSource(), (8, 8, 1), None)
    np.testing.assert_array_equal(corpus.images, patches.images)
    np.testing.assert_array_equal(corpus.labels, patches.labels)
