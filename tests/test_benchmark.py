"""``oesearch benchmark`` through the real stack (Ray workers, real training), shrunk to seconds.

The printed table is checked against numbers recomputed from results.csv with
pandas; a benchmark SIGKILLed mid-run resumes without redoing a cell and ends
with the uninterrupted run's results.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import RUN_PY, kill_group
from oesearch.config import TrainConfig
from oesearch.results import read_journal

METHODS = ["hsc", "bce", "focal", "dsad", "dsvdd"]
CLASSES = [0, 8]
SEEDS = 2


def shrunk(cache_dir: Path, out: Path) -> list[str]:
    """The embedded default benchmark, shrunk with --set: 2 classes, 2 seeds, 2-epoch trainings."""
    sets = [f"data.cache_dir={cache_dir}", f"benchmark.classes={CLASSES}", f"benchmark.seeds={SEEDS}",
            "train.epochs=2", "train.milestones=[1]", "train.batch_size=32", "run.workers=2", "run.seed=7"]
    return ["benchmark", "--no-progress", "--out", str(out)] + [a for s in sets for a in ("--set", s)]


def bench_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}


def run_bench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUN_PY), *args], cwd=cwd, env=bench_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, str]:
    """One uninterrupted benchmark on the shrunk embedded default: its directory and its stdout."""
    work = tmp_path_factory.mktemp("bench")
    result = run_bench(shrunk(cache_dir, work / "runs"), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    bench_dir = Path(result.stdout.strip().splitlines()[-1])
    assert bench_dir.parent == work / "runs" and bench_dir.name.endswith("-benchmark-embedded")
    return bench_dir, result.stdout


def printed_table(stdout: str) -> pd.DataFrame:
    """The markdown table the benchmark printed, as text cells indexed by the first column."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return pd.DataFrame([r[1:] for r in rows], index=[r[0] for r in rows], columns=header[1:])


def test_outputs_and_printed_table_match_results_csv(finished: tuple[Path, str]) -> None:
    bench_dir, stdout = finished
    assert {"config.yaml", "results.jsonl", "results.parquet", "results.csv", "table.md"} <= {
        p.name for p in bench_dir.iterdir()}
    results = pd.read_csv(bench_dir / "results.csv")
    assert len(results) == len(CLASSES) * len(METHODS) * 1 * SEEDS
    assert results["cell"].is_unique
    assert (results["status"] == "ok").all()
    assert results["auc"].between(0, 1).all()
    assert set(results["method"]) == set(METHODS) and set(results["class"]) == set(CLASSES)
    assert results["oe_all"].all() and (results["oe_images"] == 10712).all(), "full corpus as OE"
    assert results.groupby(["class", "method"]).size().eq(SEEDS).all()
    parquet = pd.read_parquet(bench_dir / "results.parquet")
    assert np.allclose(parquet["auc"], results["auc"])

    # Recompute every printed number from the CSV, independently of oesearch's table code.
    table = printed_table(stdout)
    assert list(table.columns) == METHODS
    assert list(table.index) == [str(c) for c in CLASSES] + ["mean"]  # digits' class names are "0".."9"
    for method in METHODS:
        class_means = []
        for cls in CLASSES:
            auc = results[(results["method"] == method) & (results["class"] == cls)]["auc"] * 100
            class_means.append(auc.mean())
            assert table.loc[str(cls), method] == f"{auc.mean():.1f} ± {auc.std(ddof=1):.2f}"
        means = pd.Series(class_means)
        assert table.loc["mean", method] == f"{means.mean():.1f} ± {means.std(ddof=1):.2f}"
    assert (bench_dir / "table.md").read_text().strip() in stdout


def start_bench(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(RUN_PY), *args], cwd=cwd, env=bench_env(), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_kill_and_resume_matches_uninterrupted(finished: tuple[Path, str], tmp_path: Path, cache_dir: Path) -> None:
    """SIGKILL the driver once a few cells are journaled, resume, compare with the uninterrupted run."""
    uninterrupted, _ = finished
    out = tmp_path / "runs"
    proc = start_bench(shrunk(cache_dir, out), cwd=tmp_path, log=tmp_path / "killed.log")
    deadline, killed_lines = time.time() + 240, None
    while time.time() < deadline and proc.poll() is None:
        journals = list(out.glob("*/results.jsonl")) if out.exists() else []
        if journals and len(read_journal(journals[0])) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            killed_lines = [line for line in journals[0].read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]
            break
        time.sleep(0.02)
    kill_group(proc)
    assert killed_lines is not None, (tmp_path / "killed.log").read_text()
    bench_dir = journals[0].parent
    assert not (bench_dir / "results.parquet").exists(), "the kill must interrupt the benchmark"
    before = read_journal(bench_dir / "results.jsonl")
    assert 3 <= len(before) < len(CLASSES) * len(METHODS) * SEEDS

    result = run_bench(["benchmark", "--no-progress", "--resume", str(bench_dir)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(result.stdout.strip().splitlines()[-1]) == bench_dir
    assert f"resuming: {len(before)} of" in result.stdout

    lines = (bench_dir / "results.jsonl").read_bytes().splitlines(keepends=True)
    assert lines[:len(killed_lines)] == killed_lines, "cells finished before the kill keep their original lines"
    rows = read_journal(bench_dir / "results.jsonl")
    keys = [row["cell"] for row in rows]
    assert len(keys) == len(set(keys)), "no cell is run twice"

    resumed = pd.read_csv(bench_dir / "results.csv").set_index("cell")
    complete = pd.read_csv(uninterrupted / "results.csv").set_index("cell")
    assert list(resumed.index) == list(complete.index)
    assert resumed["auc"].tolist() == complete["auc"].tolist(), "same AUCs on CPU as the uninterrupted run"
    assert resumed["seed"].tolist() == complete["seed"].tolist()


def test_resume_refuses_new_settings(finished: tuple[Path, str], tmp_path: Path) -> None:
    from oesearch.cli import main

    bench_dir, _ = finished
    assert main(["benchmark", "--resume", str(bench_dir), "--set", "benchmark.seeds=3"]) == 2
    assert main(["benchmark", "--resume", str(tmp_path)]) == 2  # not a benchmark directory


# --------------------------------------------------------------------------- config errors, before any work


@pytest.mark.parametrize("setting, message", [
    ("benchmark.protocol=one_vs_all", "benchmark.protocol: Input should be 'one_vs_rest', 'leave_one_class_out' or 'split'"),
    ("benchmark.classes=[0,12]", "benchmark.classes: class 12 is out of range; this dataset has 10 classes: 0=0, 1=1"),
    ("benchmark.oe_sizes=[16,20000]", "benchmark.oe_sizes: 20000 exceeds the OE corpus, which has 10712 images"),
    ("benchmark.methods=[hsc,svm]", "benchmark.methods.1: Input should be 'hsc', 'bce', "),  # train.method's choices
    ("benchmark.overrides={bce: {learning_rate: 0.1}}", "unknown train key(s) ['learning_rate']; valid keys: hsc_radial"),
    ("benchmark.overrides={dsvdd: {epochs: 4}}", f"benchmark.overrides.dsvdd: Value error, milestones {list(TrainConfig().milestones)} must lie in "
                                                 "[1, epochs=4]"),
    ("benchmark.seed=3", "unknown key 'benchmark.seed'; valid keys here: classes, methods"),
    ("benchmark.oe_sizes=[0]", "oe_sizes must be distinct positive integers and/or 'all'"),
])
def test_config_errors_are_clear_and_early(setting: str, message: str, tmp_path: Path, cache_dir: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    from oesearch.cli import main

    out = tmp_path / "runs"
    code = main(["benchmark", "--no-progress", "--out", str(out), "--set", f"data.cache_dir={cache_dir}",
                 "--set", setting])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert not out.exists(), "nothing is written before the config is valid"


def test_split_errors_name_the_limits(tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from oesearch.cli import main

    base = ["benchmark", "--out", str(tmp_path), "--set", f"data.cache_dir={cache_dir}", "--set",
            "benchmark.protocol=split"]
    assert main([*base, "--set", "benchmark.split_oe_classes=9"]) == 2
    assert "benchmark.split_oe_classes=9 leaves no anomaly class at test time" in capsys.readouterr().err
    assert main([*base, "--set", "benchmark.oe_sizes=[100000]"]) == 2
    assert "exceeds the split's OE classes" in capsys.readouterr().err


def test_cifar10_split_yaml_is_valid() -> None:
    """The shipped split config validates (its run is the slow test_benchmark_cifar.py)."""
    from conftest import REPO
    from oesearch.config import load_config

    config = load_config(REPO / "search_configs" / "cifar10_split.yaml")
    b = config.benchmark
    assert b.protocol == "split" and b.methods == ("hsc", "bce", "dsvdd") and len(b.classes) == 1
    assert config.data.normal.kind == "imagefolder"


def test_analysis_skips_benchmark_directories(tmp_path: Path) -> None:
    """Benchmarks write into the searches' runs/; the analysis' run discovery must not take them for searches."""
    from oesearch.analysis import find_runs

    for name in ("20261129-030206-benchmark-embedded", "20261129-030207-embedded-hsc-worst-c8-s0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("name: embedded\n")
    assert [p.name for p in find_runs([tmp_path])] == ["20261129-030207-embedded-hsc-worst-c8-s0"]
