"""Faults inside a real search: an evaluation that raises, one whose loss is NaN, one that hangs.

The search runs in this process on a private Ray instance, so the test can
also read Ray's metrics endpoint and compare the counters with the journal.

The hang blocks on a file the test creates only after the run, so it is a hang
however slow the machine; ``eval_timeout`` is derived from one ordinary
training timed here, first, on the same (possibly loaded) machine, so ordinary
trainings are never killed as hung.
"""

from __future__ import annotations

import math
import re
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import torch

import faulty_worker
from conftest import tiny_config
from oesearch.config import config_from_dict
from oesearch.results import RunDir
from oesearch.search.evolution import initial_indices
from oesearch.search.fitness import job_key
from oesearch.search.fitness import Job
from oesearch.experiments.search import prepare, run_search
from oesearch.search.seeds import search_seeds
from oesearch.training.settings import worker_spec
from oesearch.distributed.fitness_worker import FitnessWorkerBase

MAX_RETRIES = 1
TIMEOUT_OVER_TRAINING = 10  # a training under the search's 2 workers may run several times slower than alone
MIN_EVAL_TIMEOUT = 8.0  # a floor for very short trainings: 16x one of 0.5 s; under load the 10x above dominates


def measured_eval_timeout(config, data) -> float:
    """A timeout far above an ordinary training's time, as measured now on this machine."""
    threads = torch.get_num_threads()
    try:
        worker = FitnessWorkerBase(data.task, worker_spec(config))  # one thread, as in a Ray worker
        job = Job(config.data.normal_class, (0,), 0, "search", 0, 0)
        start = time.perf_counter()
        worker.evaluate(job, data.corpus.images[[0]])
        return max(MIN_EVAL_TIMEOUT, TIMEOUT_OVER_TRAINING * (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    base = tiny_config(cache_dir, population=6, generations=2) | {
        "run": {"workers": 2, "seed": 3, "max_retries": MAX_RETRIES, "address": "local"}}
    data = prepare(config_from_dict(base), log=lambda _: None)
    eval_timeout = measured_eval_timeout(config_from_dict(base), data)
    config = config_from_dict(base | {"run": {**base["run"], "eval_timeout": eval_timeout}})
    first = [int(i) for i in initial_indices(config.run.seed, len(data.corpus))[:3]]  # generation 0, slots 0-2
    faults = {"raise": first[0], "nan": first[1], "hang": first[2]}
    ray.cloudpickle.register_pickle_by_value(faulty_worker)  # workers cannot import the tests folder
    ray.init(address="local", include_dashboard=False, _system_config={"metrics_report_interval_ms": 500},
             logging_level="ERROR")
    try:
        work = tmp_path_factory.mktemp("faults")
        rundir = RunDir.create(work, "faulty")
        release = work / "release-hung-evaluations"
        worker = faulty_worker.faulty_worker_class({faults["raise"]}, {faults["nan"]}, {faults["hang"]}, release)
        try:
            summary = run_search(config, rundir, data=data, log=lambda _: None, progress=False, worker_class=worker)
        finally:
            release.touch()  # a hung evaluation the dispatcher failed to kill would end now, not at shutdown
        yield config, faults, rundir, summary
    finally:
        ray.shutdown()


def _rows_for(rows: list[dict], index: int) -> list[dict]:
    return [r for r in rows if r["indices"] == [index]]


@pytest.mark.parametrize("fault, reason", [
    ("raise", r"evaluation raised: RuntimeError\('injected failure for index \d+'\)"),
    ("nan", r"non-finite loss"),
    ("hang", r"timed out after {eval_timeout:g}s"),
])
def test_each_fault_is_retried_then_recorded_with_its_reason(faulty_run, fault: str, reason: str) -> None:
    config, faults, rundir, _ = faulty_run
    reason = reason.replace("{eval_timeout:g}", re.escape(f"{config.run.eval_timeout:g}"))
    rows = _rows_for(rundir.journal_rows(), faults[fault])
    assert sorted(r["seed"] for r in rows) == sorted(search_seeds(config)), "one row per seed, none lost or doubled"
    for row in rows:
        assert row["status"] == "failed" and row["auc"] is None
        assert re.search(reason, row["reason"]), row["reason"]
        assert row["attempts"] == MAX_RETRIES + 1
        assert f"(attempt {MAX_RETRIES + 1} of {MAX_RETRIES + 1})" in row["reason"]


def test_the_search_goes_on_and_failed_samples_cannot_win(faulty_run) -> None:
    config, faults, rundir, summary = faulty_run
    rows = rundir.journal_rows()
    keys = [job_key(r["normal_class"], r["indices"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)), "every evaluation is journaled exactly once"
    assert {r["generation"] for r in rows if r["purpose"] == "search"} == set(range(config.search.generations + 1))
    failed = {r["indices"][0] for r in rows if r["status"] != "ok"}
    assert failed == set(faults.values()), "only the injected faults fail"
    winners = {i for entry in summary["top"] for i in entry["indices"]}
    assert not winners & failed and all(math.isfinite(e["search_fitness"]) for e in summary["top"])
    assert summary["failed_evaluations"] == len(faults) * config.search.repetitions


def _scrape(run_id: str) -> dict[str, float]:
    """Our counters with this run's tag, from the node's Prometheus endpoint."""
    node = ray.nodes()[0]
    text = urllib.request.urlopen(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics",
                                  timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        match = re.match(r"ray_(oesearch_\w+?)(?:_total)?\{(.*)\} (\S+)$", line)
        if match and f'run_id="{run_id}"' in match.group(2):
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(3))
    return values


def test_metrics_read_back_match_the_journal(faulty_run) -> None:
    config, _, rundir, _ = faulty_run
    rows = rundir.journal_rows()
    expected = {
        "oesearch_evaluations_done": sum(r["status"] == "ok" for r in rows),
        "oesearch_evaluations_failed": sum(r["status"] != "ok" for r in rows),
        "oesearch_generation": config.search.generations,
        "oesearch_evaluation_seconds_count": sum(r["seconds"] is not None for r in rows),
    }
    deadline, seen = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        seen = _scrape(rundir.path.name)
        if all(seen.get(k) == v for k, v in expected.items()):
            break
        time.sleep(0.5)
    assert {k: seen.get(k) for k in expected} == expected
    search = [r["auc"] for r in rows if r["purpose"] == "search" and r["status"] == "ok"]
    assert min(search) <= seen["oesearch_worst_fitness"] <= seen["oesearch_best_fitness"] <= max(search)


def test_a_benchmark_mirrors_to_storage_and_reports_metrics(faulty_run, tmp_path: Path, cache_dir: Path) -> None:
    """The benchmark runs on the search's run context: its directory is mirrored to run.storage (a file:// URI
    here) byte for byte, and its trainings are counted in the Ray metrics under its own run id."""
    from oesearch.experiments.benchmark import BenchDir, prepare_benchmark, run_benchmark

    bucket = tmp_path / "bucket"
    config = config_from_dict({
        "data": {"cache_dir": str(cache_dir)},
        "train": {"epochs": 1, "milestones": [], "batch_size": 32},
        "benchmark": {"classes": [8], "methods": ["hsc", "bce"], "seeds": 2, "oe_sizes": [1]},
        "run": {"workers": 2, "storage": f"file://{bucket}", "out": str(tmp_path / "runs")},
    })
    benchdir = BenchDir.create(tmp_path / "runs", "benchmark-embedded")
    frame = run_benchmark(config, benchdir, prepare_benchmark(config, log=lambda _: None), log=lambda _: None,
                          progress=False)
    local = {p.name: p.read_bytes() for p in benchdir.path.iterdir() if p.is_file()}
    assert {"config.yaml", "results.jsonl", "results.parquet", "results.csv", "table.md"} <= set(local)
    assert {p.name: p.read_bytes() for p in (bucket / benchdir.path.name).iterdir()} == local
    rows = benchdir.journal_rows()
    assert len(rows) == len(frame) == 4
    expected = {"oesearch_evaluations_done": sum(r["status"] == "ok" for r in rows),
                "oesearch_evaluation_seconds_count": len(rows)}
    deadline, seen = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        seen = _scrape(benchdir.path.name)
        if all(seen.get(k) == v for k, v in expected.items()):
            break
        time.sleep(0.5)
    assert {k: seen.get(k) for k in expected} == expected
