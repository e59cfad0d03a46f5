"""Sample grids in the style of the paper's Figure 6: normal samples on top, OE samples below.

Figures are plain :class:`matplotlib.figure.Figure` objects, never pyplot ones:
they need no display and no backend, leave a notebook's backend alone, and are
freed when dropped.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["grid_figure", "png_bytes", "sample_grid", "save_png", "show_image"]


def show_image(ax: Axes, image: np.ndarray) -> None:
    """One uint8 (H, W, C) image, gray or RGB, at its own pixels, without ticks."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def grid_figure(
    title: str,
    normal_images: np.ndarray,
    normal_label: str,
    rows: Sequence[tuple[str, np.ndarray, Sequence[str]]],
) -> Figure:
    """A grid: a row of ``normal_images``, then one row per (label, images, captions)."""
    columns = max([len(normal_images), *(len(images) for _, images, _ in rows), 1])
    lines = max([1, *(c.count("\n") + 1 for _, _, captions in rows for c in captions)])
    height = 1.6 * (1 + len(rows)) + 0.14 * max(0, lines - 2) * len(rows) + 0.6  # room for long captions
    fig = Figure(figsize=(1.3 * columns + 1.2, height))
    axes = fig.subplots(1 + len(rows), columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, image in enumerate(normal_images):
        axes[0, j].axis("on")
        show_image(axes[0, j], image)
    axes[0, 0].set_ylabel(normal_label, rotation=0, ha="right", va="center", fontsize=9)
    for i, (label, images, captions) in enumerate(rows, start=1):
        for j, (image, caption) in enumerate(zip(images, captions)):
            axes[i, j].axis("on")
            show_image(axes[i, j], image)
            axes[i, j].set_xlabel(caption, fontsize=8)
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_png(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` through a temporary file, so a reader never sees half a PNG."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(path)
    return path


def sample_grid(
    path: Path,
    title: str,
    normal_images: np.ndarray,
    normal_label: str,
    rows: Sequence[tuple[str, np.ndarray, Sequence[str]]],
) -> Path:
    """Write a PNG grid: a row of ``normal_images``, then one row per (label, images, captions)."""
    return save_png(grid_figure(title, normal_images, normal_label, rows), path)
