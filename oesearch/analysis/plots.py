"""The figures of the notebooks and the report: sample grids, fitness curves, diversity, progress.

Each builder returns a :class:`~matplotlib.figure.Figure` (no pyplot, so a
notebook's backend is left alone); the data behind it comes from a separate
function that the tests compare with the run's own files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.spatial.distance import pdist

from oesearch.analysis.runs import Run, RunImages, distinct_labels, journal_generation_stats, run_images
from oesearch.training.augment import frequency_filter
from oesearch.results.figures import grid_figure
from oesearch.results.summary import entry_caption

__all__ = ["GridRow", "best_worst_figures", "best_worst_rows", "diversity_figure", "fitness_curves",
           "panels", "population_diversity", "progress_figure", "fmt"]

# The paper's row order (Figures 6, 23-28): best HSC, best BCE, worst HSC, worst BCE; random search after.
_ORDER = {(s, m, meth): i for i, (s, m, meth) in enumerate(
    (s, m, meth) for s in ("evolution", "random") for m in ("best", "worst") for meth in ("hsc", "bce"))}


def fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _order(run: Run) -> int:
    return _ORDER.get((run.strategy, run.mode, run.method), len(_ORDER))


@dataclass
class GridRow:
    """One row of a best/worst grid: a run's hall of fame in rank (= fitness) order."""

    label: str
    indices: list[list[int]]  # each individual's corpus indices
    captions: list[str]


def best_worst_rows(runs: Sequence[Run], columns: int = 8) -> dict[tuple[str, int], list[GridRow]]:
    """Per (experiment name, normal class): one row per run, in the paper's order."""
    groups: dict[tuple[str, int], list[GridRow]] = {}
    runs = [r for r in runs if r.hall_of_fame]  # a run with no finished individual has no row to show
    seeds = {key: {r.config.run.seed for r in runs if (r.config.name, r.normal_class) == key}
             for key in {(r.config.name, r.normal_class) for r in runs}}
    for run in sorted(runs, key=_order):
        top = run.hall_of_fame[:columns]
        captions = [entry_caption(t) for t in top]
        label = f"{run.mode}\n{run.method.upper()}" + ("\nrandom" if run.strategy == "random" else "")
        if len(seeds[(run.config.name, run.normal_class)]) > 1:  # rows of one grid must not look alike
            label += f"\nseed {run.config.run.seed}"
        if not run.finished:
            label += "\n(stopped)" if run.state == "stopped" else "\n(partial)"
        groups.setdefault((run.config.name, run.normal_class), []).append(
            GridRow(label, [list(t["indices"]) for t in top], captions))
    return groups


def filter_view(runs: Sequence[Run]) -> Callable[[np.ndarray], np.ndarray] | None:
    """What the networks saw when the runs used an LPF/HPF filter (paper Appendix C), as uint8 images.

    None when the runs are unfiltered or use different filters. A high-pass
    view has zero mean, so each image is stretched to the full range to be seen.
    """
    filters = {(r.config.train.filter.kind, r.config.train.filter.magnitude) for r in runs}
    if len(filters) != 1:
        return None
    ((kind, magnitude),) = filters
    if kind == "none" or magnitude == 0:
        return None

    def view(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double() / 255.0
        y = frequency_filter(x, kind, magnitude)
        if kind == "hpf":
            lo, hi = y.amin((1, 2, 3), keepdim=True), y.amax((1, 2, 3), keepdim=True)
            y = (y - lo) / (hi - lo).clamp_min(1e-12)
        return (y.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    return view


def best_worst_figures(runs: Sequence[Run], columns: int = 8,
                       filtered: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Figure]:
    """Figure 6 / 23-28: per class a row of normal samples, then the best and worst samples of each method.

    Fitness goes under each image: the search AUC and the AUC re-scored on
    fresh seeds.  ``filtered`` (uint8 images in, uint8 images out, e.g. a
    low- or high-pass filter) adds under every row the filtered view, which is
    what the network saw.  An individual of several images shows its first.
    """
    by_key = {(r.config.name, r.normal_class): r for r in runs}
    figures = []
    for key, rows in best_worst_rows(runs, columns).items():
        images = run_images(by_key[key])
        normal = images.normal[:columns]
        grid = []
        for row in rows:
            oe = images.corpus[[idx[0] for idx in row.indices]] if row.indices else normal[:0]
            grid.append((row.label, oe, row.captions))
            if filtered is not None:
                grid.append((f"{row.label.splitlines()[0]}\nfiltered", filtered(oe), [""] * len(oe)))
        normal_rows = [("normal\nfiltered", filtered(normal), [""] * len(normal))] if filtered is not None else []
        title = f"{key[0]}: normal class {images.class_name}; test AUC under each sample (search / fresh seeds)"
        fig = grid_figure(title, normal, f"normal\n({images.class_name})", normal_rows + grid)
        figures.append(fig)
    return figures


def panels(n: int, width: float = 5.5, height: float = 3.6, columns: int = 2) -> tuple[Figure, list]:
    """A figure of ``n`` panels, ``columns`` to a row (the best and worst modes side by side)."""
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    fig = Figure(figsize=(width * columns, height * rows))
    axes = list(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.axis("off")
    return fig, axes[:n]


def fitness_curves(runs: Sequence[Run]) -> Figure:
    """Population fitness per generation (mean, min-max band, hall of fame's best), one panel per run.

    The curves are the logbook's columns (``generations.csv``, or the
    checkpoint's while a run is in progress); a partial run also shows the
    journal's best so far, which reaches into the generation still running.
    """
    runs = sorted((r for r in runs if r.rows), key=_order)  # nothing to draw before the first training
    fig, axes = panels(len(runs))
    for ax, run, title in zip(axes, runs, distinct_labels(runs)):
        book = run.logbook
        if len(book):
            ax.fill_between(book["gen"], book["min"], book["max"], alpha=0.2, color="C0")
            for column, style, name in (("mean", "-", "mean"), ("min", ":", "min"), ("max", ":", "max"),
                                        ("hof", "-", "hall of fame")):
                ax.plot(book["gen"], book[column], style, label=name, color="C3" if column == "hof" else "C0")
        if not run.finished:
            live = journal_generation_stats(run)
            ax.plot(live["gen"], live["best_so_far"], "--", color="C1", label="best so far (journal)")
        ax.set_title(f"{title}\n{run.status()}", fontsize=9)
        ax.set_xlabel("generation")
        ax.set_ylabel("fitness (test AUC)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def population_diversity(run: Run, corpus: np.ndarray) -> pd.DataFrame:
    """Per generation: unique individuals, and the mean pairwise L2 between the population's images.

    Distances are on pixels in [0, 1], as the model and the neighbour index
    see them; an individual of several images is their concatenation.
    Generations whose population is unknown (a checkpoint from before
    populations were kept) are left out.
    """
    out = []
    genealogy = run.genealogy or {}
    for gen, ids in enumerate(genealogy.get("generations", [])):
        if ids is None:
            continue
        population = [sorted(genealogy["individuals"][str(i)]["indices"]) for i in ids]
        vectors = np.stack([corpus[idx].reshape(-1) for idx in population]).astype(np.float64) / 255.0
        out.append({"gen": gen, "unique": len({tuple(p) for p in population}),
                    "mean_l2": float(pdist(vectors).mean()) if len(vectors) > 1 else 0.0})
    return pd.DataFrame(out, columns=["gen", "unique", "mean_l2"])


def diversity_figure(runs: Sequence[Run], images: Sequence[RunImages] | None = None) -> Figure:
    """Unique individuals and mean pairwise L2 per generation, one line per run."""
    images = images or [run_images(r) for r in runs]
    fig = Figure(figsize=(10, 3.4))
    left, right = fig.subplots(1, 2)
    for run, imgs, label in zip(runs, images, distinct_labels(runs)):
        div = population_diversity(run, imgs.corpus)
        left.plot(div["gen"], div["unique"], marker=".", label=label)
        right.plot(div["gen"], div["mean_l2"], marker=".", label=label)
    left.set(xlabel="generation", ylabel="unique individuals", title="population diversity: unique indices")
    right.set(xlabel="generation", ylabel="mean pairwise L2", title="population diversity: mean pairwise L2")
    for ax in (left, right):
        ax.title.set_fontsize(9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def progress_figure(runs: Sequence[Run]) -> Figure:
    """Best fitness so far against trainings spent, per run: evolution against random search (Appendix D)."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    runs = sorted(runs, key=_order)
    for run, label in zip(runs, distinct_labels(runs)):
        stats = journal_generation_stats(run).dropna(subset=["best_so_far"])  # before any complete individual
        ax.plot(stats["trainings"], stats["best_so_far"], "--" if run.strategy == "random" else "-",
                marker=".", label=label)
    ax.set(xlabel="trainings (search)", ylabel="best fitness so far (test AUC)",
           title="search progress: evolution vs random search")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
