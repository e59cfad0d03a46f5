"""Tables: HSC vs BCE, best vs worst, in the layout of the paper's Table 3 (and Table 5 for random search)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from oesearch.analysis.runs import Run

__all__ = ["compare_table", "runs_table"]

_MODES = {"best": "Best OE", "worst": "Worst OE"}


def runs_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One line per run: what it searched, how far it got, and its single best (or worst) sample."""
    lines = []
    for run in runs:
        top = run.hall_of_fame[0] if run.hall_of_fame else {}
        lines.append({
            "run": run.path.name,
            "experiment": run.config.name,
            "class": run.normal_class,
            "method": run.method.upper(),
            "mode": run.mode,
            "strategy": run.strategy,
            "status": run.status(),
            "top indices": " ".join(map(str, top.get("indices", []))),
            "search AUC": top.get("search_fitness", math.nan),
            "validated AUC": top.get("validated_fitness", math.nan),
            "validated CI95": _interval(top.get("validated_ci95")),
            "validated seeds": top.get("validated_seeds"),
            "beats random": top.get("random_percentile"),
            "vs random": _difference(top.get("vs_random"), top.get("distinguishable")),
            "signal ICC": ((run.summary or {}).get("signal") or {}).get("icc"),
        })
    return pd.DataFrame(lines)


def _interval(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None or not math.isfinite(ci[0]):
        return ""
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _difference(vs: dict[str, Any] | None, distinguishable: bool | None) -> str:
    """The paired difference to the random panel's mean, its CI, and whether it tells the find from random."""
    if not vs:
        return ""
    note = "" if distinguishable else " (not distinguishable)"
    return f"{vs['difference']:+.4f} {_interval(vs['ci95'])}{note}"


def compare_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Mean AUC in % of the single best / worst OE sample, over classes (and seeds), as in Table 3.

    Rows: ``Best OE`` and ``Worst OE``, then the same for random search (the
    paper's Table 5) when such runs are given.  Columns: experiment, method
    (HSC, BCE), and the search fitness beside the fitness validated on fresh
    seeds; each cell averages the rank-1 sample of the matching runs, and the ``runs`` column beside
    them says how many runs that is (runs of several seeds or classes are averaged; 0: no such run).
    """
    records = []
    for run in runs:
        if not run.hall_of_fame:
            continue
        top = run.hall_of_fame[0]
        row = _MODES[run.mode] + (" (random search)" if run.strategy == "random" else "")
        for kind, key in (("search", "search_fitness"), ("validated", "validated_fitness")):
            value = top[key]
            records.append((row, run.config.name, run.method.upper(), kind,
                            100 * value if value is not None else math.nan))
    if not records:
        return pd.DataFrame()
    frame = pd.DataFrame(records, columns=["row", "experiment", "method", "fitness", "auc"])
    columns = ["experiment", "method", "fitness"]
    table = frame.pivot_table(index="row", columns=columns, values="auc", aggfunc=lambda v: float(np.mean(v)),
                              dropna=False)
    runs_of = frame[frame["fitness"] == "search"].assign(fitness="runs").groupby(["row", *columns]).size()
    table = pd.concat([table, runs_of.unstack(columns).reindex(table.index)], axis=1)
    order = [r for r in ("Best OE", "Worst OE", "Best OE (random search)", "Worst OE (random search)") if r in table.index]
    methods = {"HSC": 0, "BCE": 1}
    kinds = {"search": 0, "validated": 1, "runs": 2}
    columns = sorted(table.columns, key=lambda c: (c[0], methods.get(c[1], 2), c[1], kinds[c[2]]))
    table = table.loc[order, columns].rename_axis(index=None)
    counts = [c for c in columns if c[2] == "runs"]
    table[counts] = table[counts].fillna(0).astype(int)
    return table
