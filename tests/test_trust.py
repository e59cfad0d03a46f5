"""Findings you can trust, through the real stack: the signal, the race, the random panel, rescore, `oesearch signal`.

Every number in ``summary.json`` is recomputed here from the journal with scipy;
the runs are the tiny config (2-epoch trainings), nothing is faked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import RUN_PY, kill_group, run_cli, start_cli, tiny_config, write_config
from oesearch.cli import signal_main
from oesearch.results import read_journal

RACE = {"scheme": "race", "seeds": 2, "round_seeds": 2, "max_seeds": 6, "random_panel": 5, "level": 0.95}


def race_config(cache_dir: Path, **search: object) -> dict:
    """The tiny search with every trust option on: the race, the random panel, and rescored survivors."""
    return tiny_config(cache_dir, hall_of_fame=2, validation=RACE, rescore="survivors", rescore_seeds=1, **search)


def aucs_by_seed(rows: list[dict], indices: list[int], purpose: str) -> dict[int, float]:
    return {r["seed"]: r["auc"] for r in rows if r["purpose"] == purpose and sorted(r["indices"]) == sorted(indices)}


@pytest.fixture(scope="module")
def race_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    work = tmp_path_factory.mktemp("race")
    config = write_config(work / "race.yaml", race_config(cache_dir))
    result = run_cli(["--config", str(config), "--mode", "worst", "--out", str(work / "runs")], cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signal (generation 0" in result.stdout and "race round 1" in result.stdout
    return Path(result.stdout.strip().splitlines()[-1])


def test_signal_is_generation_zeros_anova(race_run: Path) -> None:
    summary = json.loads((race_run / "summary.json").read_text())
    rows = [r for r in read_journal(race_run / "journal.jsonl") if r["purpose"] == "search" and r["generation"] == 0]
    seeds = summary["search_seeds"]
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r["indices"]), {})[r["seed"]] = r["auc"]
    matrix = np.array([[g[s] for s in seeds] for g in groups.values()])
    k = matrix.shape[1]
    f = stats.f_oneway(*matrix).statistic  # one-way ANOVA with images as groups: F = MSB / MSW
    icc = max(0.0, (f - 1) / (f + k - 1))
    msw = matrix.var(axis=1, ddof=1).mean()
    sig = summary["signal"]
    assert (sig["images"], sig["seeds"]) == matrix.shape == (6, 2)
    assert sig["icc"] == pytest.approx(icc, abs=1e-4)
    assert sig["seed_sd"] == pytest.approx(np.sqrt(msw), abs=1e-4)
    assert sig["reliability"] == pytest.approx(2 * icc / (1 + icc), abs=1e-4)  # Spearman-Brown, 2 seeds


def test_race_top_and_panel_recomputed_from_the_journal(race_run: Path) -> None:
    summary = json.loads((race_run / "summary.json").read_text())
    rows = read_journal(race_run / "journal.jsonl")
    validation_seeds = summary["validation"]["seeds"]
    assert len(validation_seeds) == RACE["max_seeds"] and not set(validation_seeds) & set(summary["search_seeds"])

    # The race started from the top 2 x hall_of_fame by search fitness (worst mode: the lowest means).
    search = {}
    for r in rows:
        if r["purpose"] == "search":
            search.setdefault(tuple(sorted(r["indices"])), []).append(r["auc"])
    ranked = sorted((np.mean(v), k) for k, v in search.items() if len(v) >= 2)  # rescored ones have more
    raced = {tuple(sorted(r["indices"])) for r in rows if r["purpose"] == "validate"}
    assert raced == {k for _, k in ranked[:4]}
    # Each raced candidate got a prefix of the validation seeds, in rounds of 2 after the first 2.
    for key in raced:
        got = aucs_by_seed(rows, list(key), "validate")
        assert sorted(got) == sorted(validation_seeds[: len(got)]) and len(got) in (2, 4, 6)

    # The panel: the first 5 images of generation 0, on the seeds the top entries used (a panel image that was
    # also raced has those trainings already: the cache answers them, so they are validate rows).
    slots = {r["individual"]: tuple(r["indices"]) for r in rows if r["purpose"] == "search" and r["generation"] == 0}
    panel_images = [slots[i] for i in range(RACE["random_panel"])]
    panel_rows = [r for r in rows if r["purpose"] == "panel"]
    used = max(e["validated_seeds"] for e in summary["top"])
    assert {tuple(r["indices"]) for r in panel_rows} <= set(panel_images)
    assert sorted({r["seed"] for r in panel_rows}) == sorted(validation_seeds[:used])
    fresh = [r for r in rows if r["purpose"] in ("validate", "panel")]
    panel = {img: {r["seed"]: r["auc"] for r in fresh if tuple(sorted(r["indices"])) == tuple(sorted(img))}
             for img in panel_images}
    panel_means = [np.mean([panel[i][s] for s in validation_seeds[:used]]) for i in panel_images]
    assert summary["validation"]["trainings"] == len([r for r in rows if r["purpose"] == "validate"])
    assert summary["validation"]["panel_trainings"] == 5 * used
    rp = summary["random_panel"]
    assert (rp["images"], rp["seeds"]) == (5, used)
    assert rp["mean"] == pytest.approx(np.mean(panel_means), abs=1e-12)
    assert rp["sd"] == pytest.approx(np.std(panel_means, ddof=1), abs=1e-12)

    top = summary["top"]
    means = [e["validated_fitness"] for e in top]
    survivors = [e for e in top if e["race"] == "survived"]
    assert [e["validated_fitness"] for e in survivors] == sorted(e["validated_fitness"] for e in survivors)
    assert top[: len(survivors)] == survivors, "survivors rank before dropped candidates"
    for entry in top:
        got = aucs_by_seed(rows, entry["indices"], "validate")
        seeds = validation_seeds[: len(got)]
        x = np.array([got[s] for s in seeds])
        assert entry["validated_seeds"] == len(x)
        assert entry["validated_fitness"] == pytest.approx(x.mean(), abs=1e-12)
        lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
        assert entry["validated_ci95"] == pytest.approx([lo, hi], abs=1e-9)
        # Paired with the panel on the same seeds: the share of panel images it is below (worst mode) ...
        others = [i for i in panel_images if sorted(i) != sorted(entry["indices"])]
        own = np.array([[panel[i][s] for s in seeds] for i in others])
        share = np.mean([(x.mean() < m) + 0.5 * (x.mean() == m) for m in own.mean(axis=1)])
        assert entry["random_percentile"] == pytest.approx(share, abs=1e-12)
        # ... and its per-seed difference to the panel mean, with a t CI (scipy's one-sample test).
        d = x - own.mean(axis=0)
        ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
        assert entry["vs_random"]["difference"] == pytest.approx(d.mean(), abs=1e-12)
        assert entry["vs_random"]["ci95"] == pytest.approx([ci.low, ci.high], abs=1e-9)
        assert entry["distinguishable"] == bool(ci.high < 0)
    assert means  # the hall of fame is not empty


def test_a_driver_killed_in_the_race_resumes_to_the_same_result(race_run: Path, tmp_path: Path,
                                                                cache_dir: Path) -> None:
    config = write_config(tmp_path / "race.yaml", race_config(cache_dir))
    out = tmp_path / "runs"
    proc = start_cli(["--config", str(config), "--mode", "worst", "--out", str(out)], cwd=tmp_path,
                     log=tmp_path / "killed.log")
    deadline, killed = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        journals = list(out.glob("*/journal.jsonl")) if out.exists() else []
        rows = read_journal(journals[0]) if journals else []
        if any(r["purpose"] == "validate" for r in rows):
            os.kill(proc.pid, signal.SIGKILL)
            killed = journals[0].parent
            break
        time.sleep(0.02)
    kill_group(proc)
    assert killed is not None, (tmp_path / "killed.log").read_text()
    assert not (killed / "summary.json").exists(), "the kill must land inside the validation"
    result = run_cli(["--resume", str(killed)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = json.loads((killed / "summary.json").read_text())
    full = json.loads((race_run / "summary.json").read_text())
    for key in ("top", "random_panel", "signal", "validation"):
        assert resumed[key] == full[key]
    keys = [(tuple(sorted(r["indices"])), r["seed"]) for r in read_journal(killed / "journal.jsonl")]
    assert len(keys) == len(set(keys)), "nothing trained twice across the kill"


def test_rescore_survivors_fitness_is_the_mean_over_all_its_seeds(race_run: Path) -> None:
    summary = json.loads((race_run / "summary.json").read_text())
    rows = read_journal(race_run / "journal.jsonl")
    base = set(summary["search_seeds"])
    extra = [r for r in rows if r["purpose"] == "search" and r["seed"] not in base]
    assert extra and all(r["generation"] >= 1 for r in extra), "survivors were trained on more seeds"
    for entry in summary["top"]:
        got = aucs_by_seed(rows, entry["indices"], "search")
        assert base <= set(got)
        assert entry["search_fitness"] == pytest.approx(np.mean(list(got.values())), abs=1e-12)


def run_signal(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    return subprocess.run([sys.executable, str(RUN_PY), "signal", "--no-progress", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_signal_command_prints_the_anova_of_its_journal(race_run: Path, tmp_path: Path, cache_dir: Path) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_config(cache_dir))
    result = run_signal(["--config", str(config), "--images", "5", "--seeds", "3", "--out", str(tmp_path / "runs")],
                        tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    line = json.loads(result.stdout.strip().splitlines()[-1])
    run_dir = next(Path(line) for line in result.stdout.splitlines() if "-signal-c8-" in line and Path(line).is_dir())
    assert "signal (48" not in result.stdout and "signal (5 images x 3 seeds)" in result.stdout
    assert json.loads((run_dir / "signal.json").read_text())["icc"] == line["icc"]
    rows = read_journal(run_dir / "journal.jsonl")
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r["indices"]), {})[r["seed"]] = r["auc"]
    matrix = np.array([list(g.values()) for g in groups.values()])
    assert matrix.shape == (5, 3) and (line["images"], line["seeds"]) == (5, 3)
    f = stats.f_oneway(*matrix).statistic
    icc = max(0.0, (f - 1) / (f + 2))
    assert line["icc"] == pytest.approx(icc, abs=1e-4)
    assert line["image_sd"] == pytest.approx(np.sqrt(max(0.0, (matrix.mean(axis=1).var(ddof=1) * 3
                                                               - matrix.var(axis=1, ddof=1).mean()) / 3)), abs=1e-4)
    assert line["reliability"] == pytest.approx(2 * icc / (1 + icc), abs=1e-4)  # the config's 2 repetitions
    # The images are the search's own generation 0 with the same run seed, the seeds its repetition seeds.
    race = read_journal(race_run / "journal.jsonl")
    gen0 = [tuple(r["indices"]) for r in race if r["purpose"] == "search" and r["generation"] == 0]
    assert set(groups) < set(gen0)
    summary = json.loads((race_run / "summary.json").read_text())
    assert set(summary["search_seeds"]) < {r["seed"] for r in rows}  # the search's 2 seeds, then the next one


def test_signal_command_refuses_a_single_seed(tmp_path: Path, cache_dir: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_config(cache_dir))
    code = signal_main(["--config", str(config), "--seeds", "1", "--out", str(tmp_path / "runs")])
    assert code == 2 and "at least 2" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_report_and_hall_of_fame_show_the_evidence(race_run: Path) -> None:
    summary = json.loads((race_run / "summary.json").read_text())
    html = (race_run / "report.html").read_text()
    sig = summary["signal"]
    assert "<h2>Signal</h2>" in html and f"ICC {sig['icc']:.3f}" in html
    assert f"reliability {sig['reliability']:.3f}" in html
    top = summary["top"][0]
    lo, hi = top["validated_ci95"]
    assert f"[{lo:.4f}, {hi:.4f}]" in html  # the runs table's CI column
    hof = pd.read_csv(race_run / "hall_of_fame.csv")
    assert list(hof["validated_seeds"]) == [e["validated_seeds"] for e in summary["top"]]
    assert hof["vs_random_ci95_lo"].tolist() == pytest.approx([e["vs_random"]["ci95"][0] for e in summary["top"]])
