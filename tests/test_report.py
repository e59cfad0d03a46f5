"""``oesearch report``: the HTML report of finished runs, and the live view of a run killed mid-generation."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import RUN_PY
from oesearch.analysis import journal_generation_stats, load_run
from oesearch.cli import report_main
from oesearch.results import read_journal

IMG = re.compile(r"<img\b[^>]*>")


def report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``run.py report ...`` in its own process, as a user runs it."""
    return subprocess.run([sys.executable, str(RUN_PY), "report", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def images_of(html: str) -> list[str]:
    tags = IMG.findall(html)
    assert all('src="data:image/png;base64,' in t for t in tags), "every image is embedded"
    return tags


def test_partial_run_from_journal_and_checkpoint(killed_run: Path, analysis_runs) -> None:
    run = load_run(killed_run)
    rows = read_journal(killed_run / "journal.jsonl")
    assert not run.finished
    assert run.state == "stopped", "its driver was killed"
    assert run.status() == (f"stopped at generation 2 of 3: 2 finished, {len(rows)} trainings so far "
                            f"(resume with python oesearch/run.py --resume {killed_run})")

    # Generations 0 and 1 (from the checkpoint) equal the uninterrupted run's: same seed, same search.
    finished = pd.read_csv(analysis_runs[("hsc", "worst", "evolution")] / "generations.csv")
    columns = ["gen", "new", "cached", "failed", "min", "mean", "max", "std", "unique", "hof"]
    pd.testing.assert_frame_equal(run.logbook[columns].reset_index(drop=True), finished[columns].iloc[:2],
                                  check_dtype=False, atol=1e-12)
    stats = journal_generation_stats(run)
    assert list(stats["new"]) == [*finished["new"][:2], sum(r["generation"] == 2 for r in rows)]

    # The hall of fame so far, by hand: individuals with both seeds, lowest mean AUC first.
    aucs: dict[tuple, list[float]] = {}
    for r in rows:
        aucs.setdefault(tuple(sorted(r["indices"])), []).append(r["auc"])
    ranked = sorted((sum(v) / 2, k) for k, v in aucs.items() if len(v) == 2)[:3]
    assert [tuple(t["indices"]) for t in run.hall_of_fame] == [k for _, k in ranked]
    assert [t["search_fitness"] for t in run.hall_of_fame] == pytest.approx([f for f, _ in ranked], abs=1e-12)
    assert all(math.isnan(t["validated_fitness"]) for t in run.hall_of_fame)  # not validated yet
    assert len(run.genealogy["generations"]) == 2


def test_report_of_a_killed_run_says_partial(killed_run: Path, tmp_path: Path) -> None:
    result = report(str(killed_run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = Path(result.stdout.strip().splitlines()[-1])
    assert out == killed_run / "report.html"
    html = out.read_text()
    assert "Partial results" in html and load_run(killed_run).status() in html
    assert len(images_of(html)) == 4  # grid, fitness curves, diversity, genealogy


def test_report_from_the_journal_alone(killed_run: Path, tmp_path: Path) -> None:
    """Killed before its first checkpoint: the journal is all there is, and still a report."""
    copy = tmp_path / killed_run.name
    shutil.copytree(killed_run, copy)
    (copy / "checkpoint.pkl").unlink()
    (copy / "report.html").unlink(missing_ok=True)
    run = load_run(copy)
    assert run.logbook.empty and run.genealogy is None
    assert [t["indices"] for t in run.hall_of_fame] == [t["indices"] for t in load_run(killed_run).hall_of_fame]
    assert report_main([str(copy)]) == 0
    html = (copy / "report.html").read_text()
    assert f"stopped at generation 2 of 3: 0 finished, {len(run.rows)} trainings so far (resume with " in html
    assert len(images_of(html)) == 4


def test_search_writes_its_report(analysis_runs) -> None:
    for path in analysis_runs.values():
        html = (path / "report.html").read_text()
        assert "Partial results" not in html
        assert load_run(path).status() in html
        assert f"oesearch report {path}" in html  # how to regenerate it


def test_report_of_several_runs(analysis_runs, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    paths = [str(p) for p in analysis_runs.values()]
    assert report_main(paths) == 0
    html = (tmp_path / "oesearch-report.html").read_text()
    assert len(images_of(html)) == 5  # grid, curves, diversity, genealogy, evolution vs random
    assert "Best OE (random search)" in html
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html), "no external resources"


def test_report_never_overwrites_another_runs_files(analysis_runs, tmp_path: Path, capsys) -> None:
    first, second = list(analysis_runs.values())[:2]
    summary = (first / "summary.json").read_bytes()
    assert report_main([str(second), "--out", str(first / "summary.json")]) == 2
    assert report_main([str(first), str(second), "--out", str(first / "report.html")]) == 2
    assert "only its own single-run report.html" in capsys.readouterr().err
    assert (first / "summary.json").read_bytes() == summary
    assert report_main([str(tmp_path)]) == 2  # not a run directory
    assert "not a run directory" in capsys.readouterr().err


def test_resumed_run_keeps_populations_and_survives_a_failed_report(killed_run: Path, analysis_runs,
                                                                     tmp_path: Path) -> None:
    """Resume a copy of the killed run where report.html cannot be written (a folder is in its way):
    the search still ends well, with a warning, and its populations equal the uninterrupted run's."""
    copy = tmp_path / killed_run.name
    shutil.copytree(killed_run, copy)
    (copy / "report.html").unlink(missing_ok=True)
    (copy / "report.html").mkdir()
    result = subprocess.run([sys.executable, str(RUN_PY), "--no-progress", "--resume", str(copy)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "RAY_ADDRESS": "local"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning: could not write report.html" in result.stdout
    assert Path(result.stdout.strip().splitlines()[-1]) == copy
    uninterrupted = analysis_runs[("hsc", "worst", "evolution")]
    resumed = json.loads((copy / "genealogy.json").read_text())
    assert resumed == json.loads((uninterrupted / "genealogy.json").read_text())
    assert len(resumed["generations"]) == 4
    assert json.loads((copy / "summary.json").read_text())["top"] == json.loads((uninterrupted / "summary.json").read_text())["top"]
