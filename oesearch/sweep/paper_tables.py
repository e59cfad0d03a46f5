"""A benchmark's outputs: the tidy results frame, the per-class table, and the OE-size figure.

The table has the layout of the paper's Tables 1/2/15-18: one row per class
(its name; under leave_one_class_out the anomalous class), one column per
method (per method and OE size when there are several sizes), cells
``mean ± std`` of the test AUC **in percent** over the seeds (mean to one
decimal, sample standard deviation, ddof=1, to two, as the paper prints them).
The last row is the mean over classes of the per-class means, ± their std
across classes.  Failed cells are left out of every mean and counted in the
cell's text, e.g. ``84.1 ± 0.36 (1 failed)``; a class whose cells all failed
reads ``failed (2/2)``.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "results_frame", "column_label", "oe_labels", "class_table", "table_markdown",
           "oe_size_points", "oe_size_figure"]

# The tidy table's columns, in order.
COLUMNS = ["cell", "protocol", "class", "class_name", "method", "oe_draw", "oe_size", "oe_all", "oe_images",
           "oe_classes", "test_classes", "repetition", "seed", "auc", "seconds", "status", "reason", "attempts",
           "worker", "device"]


def _classes_text(value: Any) -> str | None:
    return None if value is None else " ".join(str(int(c)) for c in value)


def results_frame(rows: Iterable[dict[str, Any]], order: list[str] | None = None) -> pd.DataFrame:
    """One row per cell (the first journal row of each), in ``order`` of cell keys when given.

    ``oe_classes`` and ``test_classes`` become space-separated text (CSV-friendly).
    """
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row["cell"], row)
    keys = [k for k in order if k in first] if order is not None else list(first)
    frame = pd.DataFrame([{c: first[k].get(c) for c in COLUMNS} for k in keys], columns=COLUMNS)
    for col in ("oe_classes", "test_classes"):
        frame[col] = frame[col].map(_classes_text).astype(object)
    frame["auc"] = frame["auc"].astype(float)
    frame["seconds"] = frame["seconds"].astype(float)
    return frame


def column_label(method: str, oe_label: str, several_sizes: bool) -> str:
    return f"{method} k={oe_label}" if several_sizes else method


def oe_labels(frame: pd.DataFrame) -> pd.Series:
    return frame["oe_size"].astype(int).astype(str).where(~frame["oe_all"].astype(bool), "all")


def _fmt(mean: float, std: float) -> str:
    return f"{100 * mean:.1f}" if np.isnan(std) else f"{100 * mean:.1f} ± {100 * std:.2f}"


def class_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The printed table as text cells: index = class names then ``mean``, columns = methods (x OE sizes)."""
    frame = frame.assign(oe_label=oe_labels(frame))
    methods = list(dict.fromkeys(frame["method"]))
    labels = list(dict.fromkeys(frame["oe_label"]))
    classes = list(dict.fromkeys(zip(frame["class"], frame["class_name"])))
    several = len(labels) > 1
    table: dict[str, list[str]] = {}
    for method in methods:
        for label in labels:
            part = frame[(frame["method"] == method) & (frame["oe_label"] == label)]
            texts, class_means = [], []
            for cls, _ in classes:
                cells = part[part["class"] == cls]
                ok = cells.loc[cells["status"] == "ok", "auc"]
                failed = len(cells) - len(ok)
                if ok.empty:
                    texts.append(f"failed ({failed}/{len(cells)})" if len(cells) else "")
                    continue
                class_means.append(ok.mean())
                text = _fmt(ok.mean(), ok.std() if len(ok) > 1 else np.nan)
                texts.append(text + (f" ({failed} failed)" if failed else ""))
            means = pd.Series(class_means, dtype=float)
            mean_text = "" if means.empty else _fmt(means.mean(), means.std() if len(means) > 1 else np.nan)
            if len(means) < len(classes) and not means.empty:
                mean_text += f" ({len(means)} of {len(classes)} classes)"
            table[column_label(method, label, several)] = texts + [mean_text]
    index = [name for _, name in classes] + ["mean"]
    return pd.DataFrame(table, index=pd.Index(index, name="class"))


def table_markdown(table: pd.DataFrame, protocol: str, seeds: int) -> str:
    """The table as GitHub markdown, with a title line that says what the numbers are."""
    head = "anomalous class" if protocol == "leave_one_class_out" else "normal class"
    columns = [head, *table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] * len(columns)) + "|"]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name), *row.tolist()]) + " |")
    title = (f"Test AUC in %, mean ± std over {seeds} seed(s) per class ({protocol}); last row: mean over classes "
             "of the class means ± their std across classes. Failed trainings are excluded and counted.")
    return title + "\n\n" + "\n".join(lines) + "\n"


def oe_size_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method and OE size: x (the size; ``all`` at the pool's size), mean and std of the AUC in %.

    Per repetition the AUC is averaged over classes; mean and std are over repetitions
    (the seed-to-seed spread of the benchmark's mean).  Failed cells are left out.
    """
    ok = frame[frame["status"] == "ok"].assign(oe_label=oe_labels(frame))
    per_rep = ok.groupby(["method", "oe_label", "repetition"], sort=False).agg(
        auc=("auc", "mean"), x=("oe_size", "max"))
    points = per_rep.groupby(["method", "oe_label"], sort=False).agg(
        x=("x", "max"), mean=("auc", "mean"), std=("auc", "std"), seeds=("auc", "size")).reset_index()
    points["mean"] *= 100
    points["std"] = points["std"].fillna(0.0) * 100
    return points.sort_values(["method", "x"], kind="stable")


def oe_size_figure(frame: pd.DataFrame, title: str = ""):
    """Figure 2 style: mean AUC ± std vs OE size on a log2 axis, one line per method, the full pool last."""
    from matplotlib.figure import Figure  # a plain Figure, never pyplot (as oesearch.results.figures)

    points = oe_size_points(frame)
    unit = "OE classes" if (frame["oe_draw"] == "classes").all() else "OE samples"
    fig = Figure(figsize=(6.0, 4.0), dpi=120)
    ax = fig.add_subplot()
    for method in dict.fromkeys(frame["method"]):
        p = points[points["method"] == method]
        line, = ax.plot(p["x"], p["mean"], marker="o", label=method)
        ax.fill_between(p["x"], p["mean"] - p["std"], p["mean"] + p["std"], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    ticks = points.drop_duplicates("oe_label").sort_values("x")
    ax.set_xticks(ticks["x"].tolist())
    ax.set_xticklabels([f"all\n({x})" if lab == "all" else str(x) for lab, x in zip(ticks["oe_label"], ticks["x"])],
                       fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel(f"number of {unit} (log scale; 'all': the full pool)")
    ax.set_ylabel("mean AUC in %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
