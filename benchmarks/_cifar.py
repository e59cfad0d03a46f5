"""CIFAR-sized benchmark data: a subset of the CIFAR-10 JPEGs in ../shared/data, or random pixels.

The archive is never unpacked into the repository: the chosen files are
written to a folder under the system temp directory (an ImageFolder tree) and
reused by later runs.
"""

from __future__ import annotations

import io
import re
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
_MEMBER = re.compile(r"cifar10-jpeg/(train|test)/(\w+)/(\d+)\.jpg$")


def cifar_tree(per_class_train: int, per_class_test: int) -> Path | None:
    """An ImageFolder tree ``<dir>/{train,test}/<class>/*.jpg`` with the first N images per class, or None."""
    if not ARCHIVE.exists():
        return None
    root = Path(tempfile.gettempdir()) / f"oesearch-bench-cifar-{per_class_train}-{per_class_test}"
    if (root / "done").exists():
        return root
    limits = {"train": per_class_train, "test": per_class_test}
    with tarfile.open(ARCHIVE, "r:gz") as tar:
        for member in tar:
            m = _MEMBER.search(member.name)
            if not m or int(m.group(3)) >= limits[m.group(1)]:
                continue
            out = root / m.group(1) / m.group(2) / Path(member.name).name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    (root / "done").write_text("ok")
    return root


def load_class(root: Path | None, split: str, cls: str | None, n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8: class ``cls`` (or all classes) of a tree; random pixels without the archive."""
    if root is None:
        return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    paths = sorted((root / split).glob(f"{cls or '*'}/*.jpg"))[:n]
    return np.stack([np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in paths])


def describe(root: Path | None) -> str:
    return f"CIFAR-10 JPEGs ({ARCHIVE.name})" if root else "random 32x32x3 pixels (CIFAR archive absent)"
