"""Load MNIST, Fashion-MNIST and EMNIST-letters from their idx files into an :class:`ImageStore`.

The idx format (LeCun's MNIST page): a 4-byte magic ``00 00 TT DD`` (TT the
element type, 0x08 = unsigned byte; DD the number of dimensions), DD big-endian
uint32 sizes, then the elements in row-major order.  Images are idx3
(N, rows, cols), labels idx1 (N,).  Files may be gzipped (``.gz``) or raw.

EMNIST stores every image transposed (column-major) relative to MNIST, and its
letters labels run 1..26; this loader transposes the images back and shifts the
labels to 0..25 ("a".."z"), so the store looks like any other.
"""

from __future__ import annotations

import gzip
import string
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oesearch.data.store import DataError, ImageStore

__all__ = ["IDX_DATASETS", "load_idx_dataset", "read_idx"]

_UBYTE = 0x08


@dataclass(frozen=True)
class _IdxDataset:
    """The file names, sub-folders and label conventions of one idx dataset."""

    name: str
    files: dict[str, tuple[str, str]]  # split -> (images, labels), without .gz
    folders: tuple[str, ...]  # where under the root the files may lie, besides the root itself
    class_names: tuple[str, ...]
    first_label: int  # the label of class_names[0] in the files
    transposed: bool
    how_to_get: str


def _mnist_files(prefix: str = "") -> dict[str, tuple[str, str]]:
    return {
        split: (f"{prefix}{stem}-images-idx3-ubyte", f"{prefix}{stem}-labels-idx1-ubyte")
        for split, stem in (("train", "train"), ("test", "t10k"))
    }


IDX_DATASETS = {
    "mnist": _IdxDataset(
        "MNIST", _mnist_files(), ("raw", "MNIST/raw"), tuple(string.digits), 0, False,
        "Download the four files from http://yann.lecun.com/exdb/mnist/ (mirror: "
        "https://ossci-datasets.s3.amazonaws.com/mnist/), or run torchvision.datasets.MNIST(DIR, download=True) "
        "where there is internet and copy DIR/MNIST/raw.",
    ),
    "fashion_mnist": _IdxDataset(
        "Fashion-MNIST", _mnist_files(), ("raw", "FashionMNIST/raw"),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        0, False,
        "Download the four files from https://github.com/zalandoresearch/fashion-mnist (data/fashion), or run "
        "torchvision.datasets.FashionMNIST(DIR, download=True) where there is internet and copy DIR/FashionMNIST/raw.",
    ),
    "emnist_letters": _IdxDataset(
        "EMNIST-letters",
        {split: (f"emnist-letters-{split}-images-idx3-ubyte", f"emnist-letters-{split}-labels-idx1-ubyte")
         for split in ("train", "test")},
        ("gzip", "raw", "EMNIST/raw"), tuple(string.ascii_lowercase), 1, True,
        "Download gzip.zip from https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip and unzip it there "
        "(it holds gzip/emnist-letters-*-idx?-ubyte.gz).",
    ),
}


def load_idx_dataset(dataset: str, root: Path, split: str) -> ImageStore:
    """The ``split`` ("train" or "test") of ``dataset`` (a key of :data:`IDX_DATASETS`) as (N, 28, 28, 1) uint8.

    ``root`` is the folder with the idx files, or one above it in a known
    layout (torchvision's ``MNIST/raw``, EMNIST's ``gzip``).  Each file may be
    gzipped (``NAME.gz``) or raw (``NAME``).

    Raises:
        ValueError: unknown ``dataset`` or ``split``.
        DataError: a file is missing, or is not an idx file of the expected shape.
    """
    if dataset not in IDX_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(IDX_DATASETS)}, got {dataset!r}")
    spec = IDX_DATASETS[dataset]
    if split not in spec.files:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root).expanduser()
    image_file, label_file = (_find(spec, root, name) for name in spec.files[split])
    images = read_idx(image_file, ndim=3)
    labels = read_idx(label_file, ndim=1).astype(np.int64) - spec.first_label
    if len(images) != len(labels):
        raise DataError(f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(spec.class_names)):
        last = spec.first_label + len(spec.class_names) - 1
        raise DataError(f"{label_file}: {spec.name} labels must lie in [{spec.first_label}, {last}]")
    if spec.transposed:
        images = images.transpose(0, 2, 1)
    return ImageStore(np.ascontiguousarray(images[..., None]), labels, spec.class_names)


def _find(spec: _IdxDataset, root: Path, name: str) -> Path:
    """The raw or gzipped file ``name`` in ``root`` or one of the dataset's usual sub-folders."""
    for folder in (root, *(root / sub for sub in spec.folders)):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    places = ", ".join(str(root / sub) for sub in spec.folders)
    raise DataError(
        f"{spec.name} idx file not found: expected {root}/{name} or {root}/{name}.gz (or the same in {places}). "
        f"{spec.how_to_get}"
    )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The unsigned-byte array in the idx file ``path`` (gzipped if it ends in .gz), checked to have ``ndim`` dims."""
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {err}") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an idx file: its magic number must start with two zero bytes")
    if data[2] != _UBYTE:
        raise DataError(f"{path}: idx element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    if data[3] != ndim:
        raise DataError(f"{path}: expected an idx{ndim} file ({ndim} dimensions), found {data[3]} dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is cut short inside its idx header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} bytes), but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
