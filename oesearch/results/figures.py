"""Sample grids in the style of the paper's Figure 6: normal samples on top, OE samples below."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["sample_grid"]


def _show(ax: plt.Axes, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(
    path: Path,
    title: str,
    normal_images: np.ndarray,
    normal_label: str,
    rows: Sequence[tuple[str, np.ndarray, Sequence[str]]],
) -> Path:
    """Write a PNG grid: a row of ``normal_images``, then one row per (label, images, captions)."""
    columns = max([len(normal_images), *(len(images) for _, images, _ in rows), 1])
    height = 1.6 * (1 + len(rows)) + 0.6
    fig, axes = plt.subplots(1 + len(rows), columns, figsize=(1.3 * columns + 1.2, height), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, image in enumerate(normal_images):
        axes[0, j].axis("on")
        _show(axes[0, j], image)
    axes[0, 0].set_ylabel(normal_label, rotation=0, ha="right", va="center", fontsize=9)
    for i, (label, images, captions) in enumerate(rows, start=1):
        for j, (image, caption) in enumerate(zip(images, captions)):
            axes[i, j].axis("on")
            _show(axes[i, j], image)
            axes[i, j].set_xlabel(caption, fontsize=8)
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
