"""A campaign's combined outputs, computed from its finished search run directories.

A campaign directory holds ``config.yaml`` and ``manifest.json`` (written by
the campaign driver): the grid of normal classes x methods x modes x seeds x
strategies, and one entry per search with its ``run_dir`` (relative to the
campaign directory), an ordinary search run directory.  A search is finished
when its run directory has ``summary.json``.

:func:`write_campaign_outputs` reads them all and writes, next to the manifest:

- ``table.md`` and ``table.csv``: one row per normal class plus ``mean``, one
  column per (method, mode) (and per strategy and seed where the grid has
  several), each cell the validated test AUC in % of that search's top
  finalist with its confidence interval, and its paired difference to the
  random panel where the search has one (see docs/trust.md);
- ``results.parquet``: one row per search, finished or not;
- ``report.html``: the table and a relative link to every search's own report.

Everything is computed before anything is written, and every file is written
atomically, so a failing or interrupted rerun leaves the previous outputs whole.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

import pandas as pd

from oesearch.analysis.html_report import REPORT, _STYLE
from oesearch.analysis.runs import Run, load_run
from oesearch.analysis.tables import compare_table
from oesearch.results.rundir import atomic_write_bytes
from oesearch.search.statistics import mean_ci

__all__ = ["CampaignError", "CampaignSearch", "MANIFEST", "campaign_table", "load_campaign", "read_manifest",
           "results_frame", "write_campaign_outputs"]

MANIFEST = "manifest.json"
TABLE_MD, TABLE_CSV, RESULTS, CAMPAIGN_REPORT = "table.md", "table.csv", "results.parquet", "report.html"
_KEYS = ("id", "normal_class", "method", "mode", "seed", "strategy", "run_dir")
_AXES = (("classes", "normal_class"), ("methods", "method"), ("modes", "mode"), ("seeds", "seed"),
         ("strategies", "strategy"))
_DEFAULT_LEVEL = 0.95
NOT_LISTED, UNFINISHED, NOT_VALIDATED = "—", "— (unfinished)", "— (not validated)"


class CampaignError(ValueError):
    """A campaign directory that cannot be read: no manifest, a corrupt one, or a run directory that disagrees."""


@dataclass
class CampaignSearch:
    """One search of the manifest and, once its run directory has a config, the run as the analysis reads it."""

    id: str
    normal_class: int
    method: str
    mode: str
    seed: int
    strategy: str
    run_dir: str  # as the manifest has it: relative to the campaign directory
    path: Path  # the run directory itself
    run: Run | None  # None: the driver has not created it yet

    @property
    def finished(self) -> bool:
        return self.run is not None and self.run.finished

    @property
    def status(self) -> str:
        return "finished" if self.finished else "unfinished"

    @property
    def state(self) -> str:
        """``finished``, ``running``, ``stopped``, ``unknown`` (see :attr:`Run.state`) or ``not started``."""
        return "not started" if self.run is None else self.run.state

    @property
    def progress(self) -> str:
        """One line: the run's own status line, or that it has no run directory yet."""
        if self.run is None:
            return f"not started: {self.path} holds no config.yaml yet"
        return self.run.status()

    @property
    def top(self) -> dict[str, Any] | None:
        """The top finalist (rank 1 of the validated hall of fame) of a finished search."""
        if not self.finished or not self.run.summary.get("top"):
            return None
        return self.run.summary["top"][0]

    @property
    def cell(self) -> tuple:
        return (self.method, self.mode, self.strategy, self.seed)


def read_manifest(campaign_dir: str | Path) -> dict[str, Any]:
    """The manifest, checked: a ``CampaignError`` naming the file when it is missing or malformed."""
    path = Path(campaign_dir) / MANIFEST
    if not path.is_file():
        raise CampaignError(f"{path}: no campaign manifest; a campaign directory holds {MANIFEST}, "
                            "written by the campaign driver when the campaign starts")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CampaignError(f"{path}: not a readable JSON manifest ({err})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("searches"), list):
        raise CampaignError(f"{path}: a manifest is a JSON object with a list 'searches'")
    grid = manifest.get("grid", {})
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise CampaignError(f"{path}: 'grid' must be an object of lists (classes, methods, modes, seeds, strategies)")
    seen: set[str] = set()
    searches = []
    for i, entry in enumerate(manifest["searches"]):
        missing = [k for k in _KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise CampaignError(f"{path}: search {i} lacks {', '.join(missing)}")
        try:
            typed = {**entry, **{k: int(entry[k]) for k in ("normal_class", "seed")},
                     **{k: str(entry[k]) for k in ("id", "method", "mode", "strategy", "run_dir")}}
        except (TypeError, ValueError) as err:
            raise CampaignError(f"{path}: search {i} ({entry['id']!r}): normal_class and seed must be integers "
                                f"({err})") from err
        if typed["id"] in seen:
            raise CampaignError(f"{path}: search id {typed['id']!r} appears twice")
        seen.add(typed["id"])
        searches.append(typed)
    return {**manifest, "searches": searches}


def _check_agrees(manifest_path: Path, entry: dict[str, Any], run: Run) -> None:
    """The run directory must be the search the manifest says it is."""
    actual = {"normal_class": run.normal_class, "method": run.method, "mode": run.mode, "seed": run.config.run.seed,
              "strategy": run.strategy}
    wrong = [f"{k} {entry[k]!r} but its config.yaml says {v!r}" for k, v in actual.items() if entry[k] != v]
    if wrong:
        raise CampaignError(f"{manifest_path}: search {entry['id']!r} ({run.path}) has " + "; ".join(wrong))


def load_campaign(campaign_dir: str | Path) -> tuple[dict[str, Any], list[CampaignSearch]]:
    """The manifest and every search it lists, in its order, each loaded as far as it got."""
    campaign_dir = Path(campaign_dir)
    manifest = read_manifest(campaign_dir)
    searches, cells = [], {}
    for entry in manifest["searches"]:
        path = campaign_dir / entry["run_dir"]
        run = None
        if (path / "config.yaml").is_file():
            try:
                run = load_run(path)
            except (OSError, ValueError) as err:  # a corrupt summary.json, generations.csv, config, ...
                raise CampaignError(f"{path}: search {entry['id']!r} of {campaign_dir / MANIFEST} cannot be "
                                    f"read ({type(err).__name__}: {err})") from err
            _check_agrees(campaign_dir / MANIFEST, entry, run)
        search = CampaignSearch(entry["id"], entry["normal_class"], entry["method"], entry["mode"], entry["seed"],
                                entry["strategy"], entry["run_dir"], path, run)
        key = (search.normal_class, *search.cell)
        if key in cells:
            raise CampaignError(f"{campaign_dir / MANIFEST}: searches {cells[key]!r} and {search.id!r} are the same "
                                "grid cell (class, method, mode, strategy, seed)")
        cells[key] = search.id
        searches.append(search)
    return manifest, searches


def _float(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan


def results_frame(searches: Sequence[CampaignSearch]) -> pd.DataFrame:
    """One row per search: what it is, whether it finished, and its top finalist's numbers (AUC as a fraction)."""
    names = {s.normal_class: s.run.summary.get("class_name") for s in searches if s.finished}
    lines = []
    for s in searches:
        summary = s.run.summary if s.finished else {}
        top = s.top or {}
        ci = top.get("validated_ci95") or (None, None)
        vs = top.get("vs_random") or {}
        vs_ci = vs.get("ci95") or (None, None)
        panel = summary.get("random_panel") or {}
        lines.append({
            "id": s.id, "normal_class": s.normal_class, "class_name": names.get(s.normal_class),
            "method": s.method, "mode": s.mode, "seed": s.seed, "strategy": s.strategy,
            "status": s.status, "state": s.state, "progress": s.progress,
            "top_indices": " ".join(map(str, top["indices"])) if top else None,
            "validated_fitness": _float(top.get("validated_fitness")),
            "validated_ci_low": _float(ci[0]), "validated_ci_high": _float(ci[1]),
            "validated_seeds": top.get("validated_seeds"),
            "validation_level": (summary.get("validation") or {}).get("level"),
            "search_fitness": _float(top.get("search_fitness")),
            "random_panel_images": panel.get("images"), "random_panel_mean": _float(panel.get("mean")),
            "random_percentile": _float(top.get("random_percentile")),
            "vs_random_difference": _float(vs.get("difference")),
            "vs_random_ci_low": _float(vs_ci[0]), "vs_random_ci_high": _float(vs_ci[1]),
            "distinguishable": top.get("distinguishable"),
            "trainings": summary["evaluations"] if s.finished else (len(s.run.rows) if s.run else 0),
            "wall_seconds": _float(summary.get("wall_seconds")),
            "run_dir": s.run_dir,
            "report": (Path(s.run_dir) / REPORT).as_posix() if (s.path / REPORT).is_file() else None,
        })
    frame = pd.DataFrame(lines, columns=list(lines[0]) if lines else None)
    for column in ("validated_seeds", "random_panel_images", "trainings", "seed", "normal_class"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    if "distinguishable" in frame:
        frame["distinguishable"] = frame["distinguishable"].astype("boolean")
    for column in ("class_name", "top_indices", "report"):
        if column in frame:
            frame[column] = frame[column].astype("string")
    return frame


def _axis(grid: dict[str, Any], name: str, field: str, searches: Sequence[CampaignSearch]) -> list:
    """The grid's values of one axis in its order, then any value only a search has."""
    values = list(grid.get(name) or [])
    for s in searches:
        if getattr(s, field) not in values:
            values.append(getattr(s, field))
    return values


def _column_label(method: str, mode: str, strategy: str, seed: int, strategies: int, seeds: int) -> str:
    label = f"{method.upper()} {mode}"
    label += f" {strategy}" if strategies > 1 else ""
    return label + (f" seed {seed}" if seeds > 1 else "")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _interval(lo: float, hi: float, signed: bool = False) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    f = "{:+.1f}" if signed else "{:.1f}"
    return f" [{f.format(100 * lo)}, {f.format(100 * hi)}]"


def _true(value: Any) -> bool:
    return value is not None and not pd.isna(value) and bool(value)


def _cell(row: pd.Series) -> str:
    """``84.4 [81.3, 87.5]; vs random -4.6 [-7.7, -1.5]`` (``~rand``: not distinguishable)."""
    if row["status"] != "finished":
        return UNFINISHED
    value = row["validated_fitness"]
    if not math.isfinite(value):
        return NOT_VALIDATED
    text = _pct(value) + _interval(row["validated_ci_low"], row["validated_ci_high"])
    if math.isfinite(row["vs_random_difference"]):
        text += (f"; vs random {100 * row['vs_random_difference']:+.1f}"
                 + _interval(row["vs_random_ci_low"], row["vs_random_ci_high"], signed=True)
                 + ("" if _true(row["distinguishable"]) else " ~rand"))
    return text


def _levels(frame: pd.DataFrame) -> list[float]:
    finished = frame[frame["status"] == "finished"] if len(frame) else frame
    return sorted({float(v) for v in finished.get("validation_level", []) if v is not None and not pd.isna(v)})


def _mean_cell(values: list[float], classes: int, level: float) -> str:
    """The mean over classes with a Student-t interval over the class values, and how many classes it is."""
    count = f"{len(values)} of {classes} classes"
    if not values:
        return f"{NOT_LISTED} (0 of {classes} classes)"
    mean, lo, hi = mean_ci(values, level)
    if len(values) == 1:
        return f"{_pct(mean)} ({count}; no interval from one class)"
    return f"{_pct(mean)}{_interval(lo, hi)} ({count})"


def _count_phrase(values: Sequence[Any], noun: str) -> str:
    found = sorted({int(v) for v in values if v is not None and not pd.isna(v)})
    if not found:
        return f"no {noun}"
    if len(found) == 1:
        return f"{found[0]} {noun}"
    return f"{found[0]} to {found[-1]} {noun} (per search in {RESULTS})"


def campaign_table(frame: pd.DataFrame, grid: dict[str, Any],
                   searches: Sequence[CampaignSearch]) -> tuple[pd.DataFrame, list[str]]:
    """The combined table (index: class labels then ``mean``; cells: text) and the footnote lines under it."""
    classes = _axis(grid, "classes", "normal_class", searches)
    methods, modes, seeds, strategies = (_axis(grid, name, field, searches) for name, field in _AXES[1:])
    names = {}
    if len(frame):
        names = {int(c): n for c, n in zip(frame["normal_class"], frame["class_name"]) if not pd.isna(n)}
    rows = [f"{c} ({names[c]})" if c in names and str(names[c]) != str(c) else str(c) for c in classes]
    levels = _levels(frame)
    level = levels[0] if len(levels) == 1 else _DEFAULT_LEVEL
    by_cell = {(int(r["normal_class"]), r["method"], r["mode"], r["strategy"], int(r["seed"])): r
               for _, r in frame.iterrows()}
    columns: dict[str, list[str]] = {}
    for method in methods:
        for mode in modes:
            for strategy in strategies:
                for seed in seeds:
                    label = _column_label(method, mode, strategy, seed, len(strategies), len(seeds))
                    cells, values = [], []
                    for c in classes:
                        r = by_cell.get((c, method, mode, strategy, seed))
                        cells.append(NOT_LISTED if r is None else _cell(r))
                        if r is not None and r["status"] == "finished" and math.isfinite(r["validated_fitness"]):
                            values.append(float(r["validated_fitness"]))
                    columns[label] = cells + [_mean_cell(values, len(classes), level)]
    table = pd.DataFrame(columns, index=pd.Index([*rows, "mean"], name="class"))

    finished = frame[frame["status"] == "finished"] if len(frame) else frame
    pct = f"{100 * level:g}%"
    own_levels = ", ".join(f"{100 * v:g}%" for v in levels)
    level_note = (f"{pct} Student-t confidence interval" if len(levels) <= 1 else
                  f"Student-t confidence interval at each search's own level ({own_levels})")
    seeds_used = _count_phrase(finished.get("validated_seeds", []), "fresh seeds")
    panel = _count_phrase([v for v in finished.get("random_panel_images", []) if not pd.isna(v) and v > 0],
                          "random corpus images")
    unfinished = [r["id"] for _, r in frame.iterrows() if r["status"] != "finished"] if len(frame) else []
    notes = [
        f"Cells: the validated test AUC in % of each search's top finalist (rank 1 of its hall of fame), its mean "
        f"over {seeds_used} that the search never trained on, with its {level_note} (docs/trust.md). "
        f"\"vs random\": its paired difference in % to the mean of the random panel ({panel} trained on the same "
        "seeds), with its interval at the same level, where the search has a panel; ~rand: that interval does not "
        "exclude 0 on the search's side (not distinguishable from a random image).",
        f"mean: the mean over the classes that have a validated value (\"k of N classes\"), with a {pct} "
        "Student-t interval over those class values (k - 1 degrees of freedom: the classes are the sample; each "
        "cell's own seed uncertainty is not added).",
        f"{NOT_LISTED}: no such search in the manifest; {UNFINISHED}: listed, no summary.json yet"
        + (f" ({len(unfinished)} of {len(frame)}: {', '.join(unfinished)})" if unfinished else "")
        + f"; {NOT_VALIDATED}: finished without a validated fitness. Search fitness (biased in its own favour) "
        f"and every number at full precision: {RESULTS}.",
    ]
    return table, notes


def _markdown(table: pd.DataFrame, title: str, notes: Sequence[str]) -> str:
    header = [table.index.name, *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for name, row in table.iterrows():
        lines.append("| " + " | ".join([str(name), *row.tolist()]) + " |")
    return title + "\n\n" + "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def _href(campaign_dir: Path, search: CampaignSearch) -> str:
    """The search's report, relative to the campaign's report.html (URL-quoted)."""
    relative = os.path.relpath(search.path / REPORT, campaign_dir)
    return quote(Path(relative).as_posix())


def _report_html(campaign_dir: Path, manifest: dict[str, Any], searches: Sequence[CampaignSearch],
                 table: pd.DataFrame, notes: Sequence[str]) -> str:
    name = html.escape(str(manifest.get("name", campaign_dir.name)))
    done = sum(s.finished for s in searches)
    grid = manifest.get("grid") or {}
    grid_items = "".join(f"<li>{html.escape(k)}: {html.escape(', '.join(map(str, v)))}</li>" for k, v in grid.items())
    parts = [f"<h1>oesearch campaign: {name}</h1>",
             f"<p>created {html.escape(str(manifest.get('created', 'unknown')))}; {len(searches)} searches, "
             f"{done} finished, {len(searches) - done} unfinished; generated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>",
             f"<h2>Grid</h2><ul>{grid_items}</ul>"]
    if done < len(searches):
        parts.append(f'<div class="partial"><b>Partial results</b>: {len(searches) - done} of {len(searches)} '
                     "searches have no summary.json yet; rerun to update.</div>")
    parts.append("<h2>Validated AUC (%) of each search's top finalist (Table 3 layout, per class)</h2>"
                 + table.to_html(escape=True) + "".join(f"<p>{html.escape(n)}</p>" for n in notes))
    finished_runs = [s.run for s in searches if s.finished]
    compared = compare_table(finished_runs)
    if not compared.empty:
        parts.append("<h2>Search against validated fitness, mean over classes (Table 3 layout)</h2>"
                     "<p>search: the fitness the search optimised (biased in its own favour); validated: the same "
                     "sample re-scored on fresh seeds; runs: how many finished searches each cell averages.</p>"
                     + compared.to_html(float_format="%.1f", na_rep="n/a"))
    items = []
    for s in searches:
        what = html.escape(f"{s.id}: class {s.normal_class}, {s.method.upper()} {s.mode}, {s.strategy}, seed {s.seed}")
        if (s.path / REPORT).is_file():
            link = f'<a href="{html.escape(_href(campaign_dir, s))}">{html.escape(s.run_dir)}/{REPORT}</a>'
        else:
            link = f'<span class="missing">no {REPORT} yet in {html.escape(s.run_dir)}</span>'
        items.append(f'<li class="{s.status}">{what} [{html.escape(s.status)}]: {link}. {html.escape(s.progress)}</li>')
    parts.append("<h2>Searches</h2><ul>" + "".join(items) + "</ul>")
    parts.append(f"<h2>Regenerate</h2><pre>{html.escape(_regenerate(campaign_dir))}</pre>")
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>oesearch campaign {name}</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _regenerate(campaign_dir: Path) -> str:
    return ("python -c \"from pathlib import Path; from oesearch.analysis.campaign import write_campaign_outputs; "
            f"write_campaign_outputs(Path({str(campaign_dir)!r}))\"")


def write_campaign_outputs(campaign_dir: Path) -> dict[str, Path]:
    """Read the manifest and every search's run directory; write table.md, table.csv, results.parquet and
    report.html into ``campaign_dir`` (each atomically, after all are computed); return them by name.

    Unfinished searches are rows with ``status`` ``unfinished`` and cells ``— (unfinished)``; a missing or
    malformed manifest, or a run directory that is not the search the manifest says, raises ``CampaignError``.
    """
    campaign_dir = Path(campaign_dir)
    manifest, searches = load_campaign(campaign_dir)
    frame = results_frame(searches)
    table, notes = campaign_table(frame, manifest.get("grid") or {}, searches)
    done = sum(s.finished for s in searches)
    title = (f"Campaign {manifest.get('name', campaign_dir.name)}: validated test AUC in % of the top finalist "
             f"per normal class and (method, mode), as in the paper's Table 3; {done} of {len(searches)} searches "
             "finished.")
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    contents: dict[str, bytes] = {
        TABLE_MD: _markdown(table, title, notes).encode(),
        TABLE_CSV: table.to_csv().encode(),
        RESULTS: parquet.getvalue(),
        CAMPAIGN_REPORT: _report_html(campaign_dir, manifest, searches, table, notes).encode(),
    }
    written = {}
    for name, data in contents.items():
        path = campaign_dir / name
        atomic_write_bytes(path, data)
        written[name] = path
    return written
