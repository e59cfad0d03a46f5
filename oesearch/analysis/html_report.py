"""``oesearch report RUN_DIR [RUN_DIR...]``: one self-contained HTML file with the notebooks' figures.

Every figure is embedded as a PNG data URI and the styles are inline, so the
file opens anywhere, offline, and can be mailed.  It works on a run still in
progress (from its journal and last checkpoint) and says the results are partial.
"""

from __future__ import annotations

import base64
import html
import sys
import time
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from oesearch.analysis.genealogy import genealogy_figure
from oesearch.analysis.plots import (best_worst_figures, diversity_figure, filter_view, fitness_curves,
                                     progress_figure)
from oesearch.analysis.runs import Run, load_run, run_images
from oesearch.analysis.tables import compare_table, runs_table
from oesearch.config import ConfigError
from oesearch.data import DataError
from oesearch.results.figures import png_bytes
from oesearch.results.rundir import atomic_write_text
from oesearch.search.statistics import RELIABLE

__all__ = ["build_report", "default_output", "write_report_command", "write_report"]

REPORT = "report.html"

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1400px; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
.partial { background: #fff3cd; border: 1px solid #e0c36c; padding: 0.6em 1em; }
pre { background: #f4f4f4; padding: 0.6em 1em; white-space: pre-wrap; word-break: break-all; }
"""


def _img(fig: Figure, alt: str) -> str:
    data = base64.b64encode(png_bytes(fig)).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def signal_section(runs: Sequence[Run]) -> str:
    """How much of each run's fitness is the image and how much the training seed (generation 0's ANOVA)."""
    lines = []
    for run in runs:
        signal = (run.summary or {}).get("signal")
        if not signal:
            continue
        reps = run.config.search.repetitions
        warn = "" if signal["reliability"] >= RELIABLE else " <b>below 0.5: the search mostly ranks seed luck</b>"
        lines.append(f"<li>{html.escape(run.path.name)}: image SD {signal['image_sd']:.4f}, seed SD "
                     f"{signal['seed_sd']:.4f}, ICC {signal['icc']:.3f} ({signal['images']} images x "
                     f"{signal['seeds']} seeds); a {reps}-seed fitness has reliability "
                     f"{signal['reliability']:.3f}{warn}</li>")
    if not lines:
        return ""
    return ("<h2>Signal</h2><p>From generation 0, a random sample of images on the search seeds: the ICC is the "
            "share of a training's AUC variance that the OE image explains; the reliability is that of a fitness "
            "averaged over the search's seeds (Spearman-Brown).</p><ul>" + "".join(lines) + "</ul>")


def build_report(runs: Sequence[Run], command: str) -> str:
    """The report's HTML for ``runs``; ``command`` is printed as the way to regenerate it."""
    parts = [f"<h1>oesearch report</h1><p>{len(runs)} run(s), generated {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>"]
    partial = [r for r in runs if not r.finished]
    if partial:
        items = "".join(f"<li>{html.escape(r.path.name)}: {html.escape(r.status())}</li>" for r in partial)
        parts.append(f'<div class="partial"><b>Partial results</b>: still running or stopped early; '
                     f"regenerate the report to see more.<ul>{items}</ul></div>")
    parts.append("<h2>Runs</h2>" + runs_table(runs).to_html(index=False, float_format="%.4f")
                 + "<p>validated: the top sample re-scored on fresh seeds, with its 95% CI; beats random: the share "
                 "of a panel of random corpus images, scored on the same seeds, that it beats in the run's direction; "
                 "vs random: its paired difference to the panel's mean, with a 95% CI.</p>")
    parts.append(signal_section(runs))
    table = compare_table(runs)
    if not table.empty:
        parts.append("<h2>Mean AUC (%) of the single best and worst OE sample (Table 3 layout)</h2>"
                     "<p>search: the fitness the search optimised; validated: the same sample re-scored on fresh seeds.</p>"
                     + table.to_html(float_format="%.1f", na_rep="n/a"))
    try:
        images = [run_images(r) for r in runs]
    except (DataError, FileNotFoundError) as err:  # e.g. synced results on a machine without the data
        images = None
        parts.append(f"<p><b>Images unavailable</b> ({html.escape(str(err))}); grids and thumbnails are left out.</p>")
    if images is not None:
        parts.append("<h2>Best and worst OE samples</h2>")
        parts += [_img(fig, "best and worst samples") for fig in best_worst_figures(runs, filtered=filter_view(runs))]
    parts.append("<h2>Fitness over generations</h2>" + _img(fitness_curves(runs), "fitness curves"))
    evolution = [(r, i) for r, i in zip(runs, images or [None] * len(runs)) if r.strategy == "evolution"]
    if evolution and images is not None:
        parts.append("<h2>Population diversity</h2>"
                     + _img(diversity_figure([r for r, _ in evolution], [i for _, i in evolution]), "diversity"))
    if evolution:
        corpora = [i.corpus if i else None for _, i in evolution]
        parts.append("<h2>Genealogy of the best individual</h2>"
                     + _img(genealogy_figure([r for r, _ in evolution], corpora), "genealogy"))
    if any(r.strategy == "random" for r in runs):
        parts.append("<h2>Evolution vs random search (Appendix D)</h2>" + _img(progress_figure(runs), "progress"))
    parts.append(f"<h2>Regenerate</h2><pre>{html.escape(command)}</pre>")
    body = "\n".join(parts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>oesearch report</title>'
            f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def default_output(run_dirs: Sequence[Path]) -> Path:
    """``RUN_DIR/report.html`` for one run; ``oesearch-report.html`` here for several (no run owns it)."""
    return Path(run_dirs[0]) / REPORT if len(run_dirs) == 1 else Path("oesearch-report.html")


def _check_output(out: Path, run_dirs: Sequence[Path]) -> None:
    """Never write over another run's files: inside a run directory, only that run's own single report."""
    folder = out.resolve().parent
    if not (folder / "config.yaml").is_file():
        return
    own = [Path(d).resolve() for d in run_dirs] == [folder] and out.name == REPORT
    if not own:
        raise FileExistsError(f"{out} is inside the run directory {folder}; only its own single-run "
                              f"{REPORT} is written there (choose --out elsewhere)")


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Load the runs, write the report atomically, return its path."""
    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out) if out is not None else default_output(run_dirs)
    _check_output(out, run_dirs)
    runs = [load_run(d) for d in run_dirs]
    command = "oesearch report " + " ".join(str(d) for d in run_dirs) + ("" if out == default_output(run_dirs) else f" --out {out}")
    atomic_write_text(out, build_report(runs, command))
    return out


def write_report_command(run_dirs: Sequence[str], out: str | None = None) -> int:
    """``oesearch report RUN_DIR... [--out FILE]``: write the report, print its path; a bad input exits 2."""
    try:
        path = write_report(run_dirs, out)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
