"""The genealogy of the final best individual, drawn as a tree of its ancestors' images."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, OffsetImage

from oesearch.analysis.plots import fmt, panels
from oesearch.analysis.runs import Run, distinct_labels

__all__ = ["ancestry", "draw_genealogy", "genealogy_figure"]


def ancestry(genealogy: dict[str, Any], root: int) -> tuple[dict[int, int | None], list[tuple[int, int]]]:
    """Every ancestor of ``root`` (itself included) with the generation it was born in, and the (parent, child) edges.

    An individual that survives a generation unchanged keeps its id, so each
    node is one creation: a founder, a mutation or a child of a mating.  The
    generation is the first population holding the id (``None`` if unknown).
    """
    born: dict[int, int] = {}
    for gen, ids in enumerate(genealogy.get("generations") or []):
        for i in ids or ():
            born.setdefault(int(i), gen)
    individuals = genealogy["individuals"]
    nodes: dict[int, int | None] = {}
    edges: list[tuple[int, int]] = []
    stack = [int(root)]
    while stack:
        node = stack.pop()
        if node in nodes:
            continue
        nodes[node] = born.get(node)
        for parent in individuals[str(node)]["parents"]:
            edges.append((int(parent), node))
            stack.append(int(parent))
    return nodes, edges


def _layout(nodes: dict[int, int | None], edges: list[tuple[int, int]],
            root: int) -> tuple[dict[int, tuple[float, float]], list[str], str]:
    """Positions, one row per generation of birth (founders on top; by depth below the root if unknown),
    the rows' labels, and what they are."""
    depth = {root: 0}
    order = [root]
    for parent, child in edges:  # edges come in search order from the root, so children precede parents
        if parent not in depth:
            depth[parent] = depth[child] + 1
            order.append(parent)
    known = all(g is not None for g in nodes.values())
    level = {n: (nodes[n] if known else -depth[n]) for n in nodes}
    levels = sorted(set(level.values()))  # rows stay compact when generations pass without a birth
    positions = {}
    for y, value in enumerate(levels):
        row = [n for n in order if level[n] == value]
        for k, n in enumerate(row):
            positions[n] = (k - (len(row) - 1) / 2, y)
    labels = [str(v) if known else str(-v) for v in levels]
    return positions, labels, "generation of birth" if known else "depth below the best"


def draw_genealogy(ax: Axes, run: Run, corpus: np.ndarray | None = None, label: str | None = None) -> None:
    """The ancestors of the run's best individual: images (or dots) with indices and fitness, founders on top."""
    genealogy = run.genealogy
    ax.set_title(f"{label or run.label}: ancestors of hall-of-fame #1", fontsize=9)
    if not genealogy or not genealogy.get("hall_of_fame"):
        ax.axis("off")
        ax.text(0.5, 0.5, "no genealogy yet (before the first checkpoint)", ha="center", va="center")
        return
    root = int(genealogy["hall_of_fame"][0])
    nodes, edges = ancestry(genealogy, root)
    pos, labels, what = _layout(nodes, edges, root)
    fitness = {tuple(k): f for k, f in zip(run.fitness_table["indices"], run.fitness_table["fitness"])}
    for parent, child in edges:
        (x0, y0), (x1, y1) = pos[parent], pos[child]
        ax.plot([x0, x1], [y0, y1], color="0.6", zorder=1)
    for node, (x, y) in pos.items():
        indices = sorted(genealogy["individuals"][str(node)]["indices"])
        if corpus is not None:
            image = corpus[indices[0]]
            box = OffsetImage(image[..., 0] if image.shape[-1] == 1 else image, zoom=24 / image.shape[0],
                              cmap="gray", interpolation="nearest")
            box.get_children()[0].set_clim(0, 255)
            ax.add_artist(AnnotationBbox(box, (x, y), frameon=node == root, pad=0.1, zorder=2))
        else:
            ax.scatter([x], [y], s=60, color="C3" if node == root else "C0", zorder=2)
        ax.annotate(f"#{','.join(map(str, indices))}\n{fmt(fitness.get(tuple(indices)))}", (x, y),
                    xytext=(15, 0), textcoords="offset points", ha="left", va="center", fontsize=6)
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 1.0)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # founders on top
    ax.set_xticks([])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylabel(what)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)


def genealogy_figure(runs: Sequence[Run], corpora: Sequence[np.ndarray | None] | None = None) -> Figure:
    """One genealogy tree per run (evolution runs; a random search has no parents to show)."""
    corpora = corpora if corpora is not None else [None] * len(runs)
    rows, widest = [], []
    for run in runs:
        if run.genealogy and run.genealogy.get("hall_of_fame"):
            root = int(run.genealogy["hall_of_fame"][0])
            positions, labels, _ = _layout(*ancestry(run.genealogy, root), root)
            rows.append(len(labels))
            widest.append(max(sum(1 for p in positions.values() if p[1] == y) for y in range(len(labels))))
    # Room for every node at its image's size: about an inch per node across (image plus caption), and a
    # third of an inch per generation of birth; panels grow with the tree instead of crowding it.
    fig, axes = panels(len(runs), width=max(5.5, 1.0 + 1.0 * max(widest, default=1)),
                       height=1.2 + 0.45 * max(rows, default=4))
    for ax, run, corpus, label in zip(axes, runs, corpora, distinct_labels(runs)):
        draw_genealogy(ax, run, corpus, label)
    fig.tight_layout()
    return fig
