"""End-to-end searches through the real stack: Ray workers, FAISS, DEAP, real training.

Sizes are shrunk (population 6, 3 generations, 2-epoch trainings) so each run
takes seconds; nothing is faked.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import RUN_PY, kill_at_generation, run_cli, tiny_config, write_config
from oesearch.results import read_journal

IDENTITY = ("purpose", "generation", "individual", "seed", "normal_class", "status")


def journal_records(run_dir: Path) -> list[tuple]:
    """Journal rows without timing and placement, as a sorted list (order of arrival varies)."""
    rows = read_journal(run_dir / "journal.jsonl")
    return sorted(
        (tuple(r[k] for k in IDENTITY), tuple(r["indices"]), r["auc"]) for r in rows
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """One uninterrupted search, started from a copy of run.py alone in an empty folder."""
    work = tmp_path_factory.mktemp("standalone")
    script = work / "run.py"
    shutil.copy(RUN_PY, script)
    config = write_config(work / "tiny.yaml", tiny_config(cache_dir))
    result = run_cli(["--config", str(config), "--mode", "worst", "--out", str(work / "runs")], cwd=work, script=script)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert run_dir.parent == work / "runs", "the last line of output is the new run directory"
    return run_dir


def test_standalone_script_writes_every_output(finished_run: Path) -> None:
    expected = {"config.yaml", "journal.jsonl", "generations.csv", "hall_of_fame.csv", "genealogy.json",
                "checkpoint.pkl", "best.png", "worst.png", "summary.json", "report.html"}
    assert expected <= {p.name for p in finished_run.iterdir()}
    for png in ("best.png", "worst.png"):
        assert (finished_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_matches_journal(finished_run: Path) -> None:
    """Every number in summary.json recomputed from the journal rows."""
    summary = json.loads((finished_run / "summary.json").read_text())
    rows = read_journal(finished_run / "journal.jsonl")
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert {"method", "mode", "normal_class", "seed", "evaluations", "wall_seconds", "top"} <= set(summary)
    assert summary["evaluations"] == len(rows)
    assert summary["mode"] == "worst" and summary["seed"] == 7

    search = [r for r in rows if r["purpose"] == "search"]
    keys = [(tuple(sorted(r["indices"])), r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)), "no (individual, seed) is ever trained twice"
    seeds = sorted({r["seed"] for r in search})
    assert len(seeds) == config["search"]["repetitions"]

    def mean_auc(indices: list[int], purpose: str) -> float:
        aucs = [r["auc"] for r in rows if r["purpose"] == purpose and sorted(r["indices"]) == sorted(indices)]
        return float(np.mean(aucs))

    top = summary["top"]
    assert len(top) == config["search"]["hall_of_fame"]
    for entry in top:
        assert entry["search_fitness"] == pytest.approx(mean_auc(entry["indices"], "search"), abs=1e-12)
        assert entry["validated_fitness"] == pytest.approx(mean_auc(entry["indices"], "validate"), abs=1e-12)
    # Worst mode: rank 1 has the lowest search fitness, and no evaluated individual is lower.
    fitness = [e["search_fitness"] for e in top]
    assert fitness == sorted(fitness)
    by_individual = pd.DataFrame(search).assign(key=lambda f: f["indices"].map(lambda i: tuple(sorted(i))))
    means = by_individual.groupby("key")["auc"].agg(["mean", "count"])
    assert fitness[0] == pytest.approx(means[means["count"] == len(seeds)]["mean"].min(), abs=1e-12)

    generations = pd.read_csv(finished_run / "generations.csv")
    assert list(generations["gen"]) == list(range(config["search"]["generations"] + 1))
    assert generations["new"].sum() == len(search)
    hof = pd.read_csv(finished_run / "hall_of_fame.csv")
    assert [int(x) for x in hof["indices"].astype(str).str.split().str[0]] == [e["indices"][0] for e in top]


def test_genealogy_links_hall_of_fame_to_founders(finished_run: Path) -> None:
    genealogy = json.loads((finished_run / "genealogy.json").read_text())
    individuals = genealogy["individuals"]
    founders = [i for i, node in individuals.items() if not node["parents"]]
    assert len(founders) == 6  # the initial population
    for hof_id in genealogy["hall_of_fame"]:
        node, seen = str(hof_id), set()
        while individuals[node]["parents"]:  # walk back to a founder
            assert node not in seen
            seen.add(node)
            node = str(individuals[node]["parents"][0])
        assert node in founders


def test_kill_and_resume_matches_uninterrupted(finished_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    """SIGKILL the driver mid-generation, resume, and compare with the uninterrupted run."""
    config = write_config(tmp_path / "tiny.yaml", tiny_config(cache_dir))
    out = tmp_path / "runs"
    run_dir, killed_rows = kill_at_generation(["--config", str(config), "--mode", "worst", "--out", str(out)],
                                              cwd=tmp_path, out=out, generation=2, log=tmp_path / "killed.log")
    assert killed_rows is not None, (tmp_path / "killed.log").read_text()
    complete = journal_records(finished_run)
    assert len(read_journal(run_dir / "journal.jsonl")) < len(complete), "the kill must interrupt the run"

    result = run_cli(["--resume", str(run_dir)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]) == run_dir
    assert "resuming" in result.stdout

    assert journal_records(run_dir) == complete
    resumed = json.loads((run_dir / "summary.json").read_text())["top"]
    uninterrupted = json.loads((finished_run / "summary.json").read_text())["top"]
    assert resumed == uninterrupted


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = run_cli(["--resume", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 2
    assert "not a run directory" in result.stderr


def test_runs_never_overwrite_each_other(tmp_path: Path) -> None:
    from oesearch.results import RunDir

    first = RunDir.create(tmp_path, "same-label")
    second = RunDir.create(tmp_path, "same-label")
    assert first.path != second.path and first.path.exists() and second.path.exists()
