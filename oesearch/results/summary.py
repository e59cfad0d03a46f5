"""Files a finished search leaves in its run directory, and the summary tools read.

``summary.json`` holds at least ``method``, ``mode``, ``normal_class``,
``seed``, ``evaluations``, ``wall_seconds`` and ``top``: the final hall of
fame in rank order, each entry with ``indices``, ``search_fitness`` and
``validated_fitness`` (and, from a search, ``validated_seeds``,
``validated_ci95``, ``random_percentile`` and ``vs_random``); a search adds
``signal``, ``random_panel`` and ``validation``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from oesearch.results.figures import sample_grid
from oesearch.results.rundir import RunDir

__all__ = ["genealogy_dict", "search_fitness_table", "write_outputs", "entry_caption", "flat_entry"]

_GRID_COLUMNS = 8


def search_fitness_table(rows: Sequence[dict[str, Any]], seeds: Sequence[int]) -> pd.DataFrame:
    """Per individual: its search fitness, the seeds behind it and the generation it first appeared.

    The fitness is the mean AUC over every search training of the individual:
    ``seeds`` (the search's repetition seeds), plus any seeds a rescore added.
    Individuals missing one of ``seeds`` or with a failed training are left out:
    they have no honest fitness to rank by.
    """
    frame = pd.DataFrame([r for r in rows if r["purpose"] == "search"])
    if frame.empty:
        return pd.DataFrame(columns=["indices", "fitness", "seeds", "generation"])
    frame["key"] = frame["indices"].map(lambda idx: tuple(sorted(idx)))
    frame = frame.drop_duplicates(["key", "seed"])  # a seed journaled twice (a resumed kill) counts once
    base = set(seeds)
    grouped = frame.groupby("key").agg(
        fitness=("auc", "mean"),
        ok=("status", lambda s: bool((s == "ok").all())),
        seeds=("seed", "nunique"),
        base=("seed", lambda s: len(base & set(s))),
        generation=("generation", "min"),
    )
    grouped = grouped[grouped["ok"] & (grouped["base"] == len(base))]
    return grouped.reset_index().rename(columns={"key": "indices"})[["indices", "fitness", "seeds", "generation"]]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def entry_caption(entry: dict[str, Any]) -> str:
    """A grid caption: search fitness, validated fitness with its CI, and the share of random images it beats."""
    lines = [f"search {_fmt(entry['search_fitness'])}", f"valid {_fmt(entry.get('validated_fitness'))}"]
    lo, hi = entry.get("validated_ci95") or (None, None)
    if lo is not None and math.isfinite(lo):
        lines.append(f"[{lo:.3f}, {hi:.3f}]")
    if entry.get("random_percentile") is not None:
        mark = "" if entry.get("distinguishable") else " ~rand"
        lines.append(f"beats {100 * entry['random_percentile']:.0f}%{mark}")
    return "\n".join(lines)


def write_outputs(
    rundir: RunDir,
    *,
    config: Any,
    state: Any,
    top: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    search_seeds: Sequence[int],
    normal_train: np.ndarray,
    class_name: str,
    corpus_images: np.ndarray,
    wall_seconds: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the stats, hall of fame, genealogy, grids and summary; return the summary.

    ``top`` is the validated hall of fame in final rank order; ``extra`` (the
    signal, random panel and validation) is merged into ``summary.json``.
    """
    mode = config.search.mode
    top = [dict(t) for t in top]
    pd.DataFrame(state.logbook).to_csv(rundir.file("generations.csv"), index=False)
    hof_frame = pd.DataFrame([flat_entry(t) for t in top])
    if not hof_frame.empty:
        hof_frame["indices"] = hof_frame["indices"].map(lambda i: " ".join(map(str, i)))
    rundir.write_text("hall_of_fame.csv", hof_frame.to_csv(index=False))
    rundir.write_json("genealogy.json", genealogy_dict(state))

    table = search_fitness_table(rows, search_seeds).sort_values("fitness", kind="stable")
    normal_row = normal_train[: _GRID_COLUMNS]
    label = f"normal\n({class_name})"
    method = config.train.method.upper()
    for which in ("best", "worst"):
        if which == mode:  # this run's hall of fame, with both fitness numbers
            chosen = [(t["indices"], entry_caption(t)) for t in top]
            heading = (f"{which} {len(chosen)} OE samples ({method}, hall of fame, validated on fresh seeds; "
                       "~rand: not distinguishable from a random image)")
        else:  # the other end of what this search happened to evaluate
            part = table.tail(_GRID_COLUMNS)[::-1] if which == "best" else table.head(_GRID_COLUMNS)
            chosen = [(list(idx), f"search {_fmt(f)}") for idx, f in zip(part["indices"], part["fitness"])]
            heading = f"{which} {len(chosen)} OE samples evaluated in this {mode}-mode search ({method})"
        images = np.stack([corpus_images[idx[0]] for idx, _ in chosen]) if chosen else normal_row[:0]
        sample_grid(
            rundir.file(f"{which}.png"),
            f"{heading}\nnormal class {class_name}, test AUC under each sample",
            normal_row,
            label,
            [(f"{which}\n({method})", images, [c for _, c in chosen])],
        )

    gaps = [t["search_fitness"] - t["validated_fitness"] for t in top if math.isfinite(t["validated_fitness"])]
    rows_search = [r for r in rows if r["purpose"] == "search"]
    summary = {
        "name": config.name,
        "method": config.train.method,
        "mode": mode,
        "strategy": config.search.strategy,
        "rescore": config.search.rescore,
        "normal_class": config.data.normal_class,
        "class_name": class_name,
        "seed": config.run.seed,
        "generations": config.search.generations,
        "population": config.search.population,
        "evaluations": len(rows),
        "search_evaluations": len(rows_search),
        "validation_evaluations": len(rows) - len(rows_search),
        "failed_evaluations": sum(r["status"] != "ok" for r in rows),
        "individuals_evaluated": len(table),
        "wall_seconds": round(wall_seconds, 2),
        "search_seeds": list(search_seeds),
        "top": top,
        "mean_search_minus_validated": float(np.mean(gaps)) if gaps else None,
        **(extra or {}),
    }
    rundir.write_json("summary.json", summary)
    return summary


def flat_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A ``top`` entry as one CSV row: the CI and the panel comparison in columns of their own."""
    flat = {k: v for k, v in entry.items() if k not in ("validated_ci95", "vs_random")}
    lo, hi = entry.get("validated_ci95") or (None, None)
    vs = entry.get("vs_random") or {}
    ci = vs.get("ci95") or (None, None)
    flat.update(validated_ci95_lo=lo, validated_ci95_hi=hi, vs_random_difference=vs.get("difference"),
                vs_random_ci95_lo=ci[0], vs_random_ci95_hi=ci[1])
    return flat


def genealogy_dict(state: Any) -> dict[str, Any]:
    """DEAP History as plain data: every individual ever created, its indices and its parents.

    ``hall_of_fame`` holds the final hall of fame's ids in rank order, and
    ``generations`` each generation's population as ids (``None`` where a
    checkpoint from before populations were kept left a gap).
    """
    history = state.history
    individuals = {
        str(i): {
            "indices": [int(x) for x in ind],
            "parents": [int(p) for p in history.genealogy_tree.get(i, ())],
        }
        for i, ind in history.genealogy_history.items()
    }
    final = [int(getattr(ind, "history_index", -1)) for ind in state.hall_of_fame]
    generations = [None if ids is None else [int(i) for i in ids] for ids in getattr(state, "populations", [])]
    return {"individuals": individuals, "hall_of_fame": final, "generations": generations}
