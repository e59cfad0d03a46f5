"""``oesearch evaluate``: given OE images scored over N seeds through the search's workers and journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import RUN_PY, tiny_config, write_config
from oesearch.cli import evaluate_main
from oesearch.config import config_from_dict
from oesearch.data import load_corpus
from oesearch.results import read_journal
from oesearch.experiments.evaluate import evaluation_seeds
from oesearch.experiments.search import load_task
from oesearch.training.settings import worker_spec
from oesearch.training import PreparedTask, train_and_evaluate

INDICES = [11, 403, 2750]


def evaluate(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    return subprocess.run([sys.executable, str(RUN_PY), "evaluate", "--no-progress", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1500)  # a hang guard, not a timing check


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    work = tmp_path_factory.mktemp("evaluate")
    raw = tiny_config(cache_dir)
    raw["run"]["workers"] = 2
    config_path = write_config(work / "tiny.yaml", raw)
    result = evaluate(["--config", str(config_path), "--indices", *map(str, INDICES), "--seeds", "3",
                       "--out", str(work / "runs")], cwd=work)
    return work, raw, config_path, result


def test_evaluate_equals_train_and_evaluate_for_the_same_seeds(setup) -> None:
    work, raw, _, result = setup
    out = last_json(result)
    config = config_from_dict(raw)
    seeds = evaluation_seeds(config, 3)
    assert out["seeds"] == seeds and out["method"] == "hsc" and out["normal_class"] == 8
    assert [r["index"] for r in out["results"]] == INDICES
    # Recompute every AUC in this process with the plain trainer, on one thread as each worker trains.
    task = load_task(config)
    corpus = load_corpus(config.data.corpus, task.image_shape, config.data.cache_dir)
    spec = worker_spec(config)
    prepared = PreparedTask.from_arrays(task.train, task.test, task.test_anomalous)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for entry in out["results"]:
            direct = [train_and_evaluate(prepared, corpus.images[[entry["index"]]], spec.objective(), spec.settings,
                                         s).auc for s in seeds]
            assert entry["aucs"] == pytest.approx(direct, abs=1e-9)
            assert entry["auc_mean"] == pytest.approx(np.mean(direct), abs=1e-9)
            assert entry["auc_sd"] == pytest.approx(np.std(direct, ddof=1), abs=1e-9)
    finally:
        torch.set_num_threads(threads)
    # The journal holds each (image, seed) training exactly once, and evaluation.json the same results.
    run_dir, = (work / "runs").iterdir()
    rows = read_journal(run_dir / "journal.jsonl")
    assert sorted((r["indices"][0], r["seed"]) for r in rows) == sorted((i, s) for i in INDICES for s in seeds)
    assert {r["purpose"] for r in rows} == {"evaluate"}
    assert json.loads((run_dir / "evaluation.json").read_text())["results"] == out["results"]


def test_image_files_score_like_their_corpus_indices(setup, cache_dir: Path) -> None:
    work, raw, config_path, result = setup
    config = config_from_dict(raw)
    task = load_task(config)
    corpus = load_corpus(config.data.corpus, task.image_shape, config.data.cache_dir)
    files = []
    for i in INDICES[:2]:  # lossless PNGs of the corpus images, one of them 4x larger and in RGB
        path = work / f"oe-{i}.png"
        Image.fromarray(corpus.images[i][:, :, 0]).save(path)
        files.append(path)
    big = work / "oe-big.png"
    Image.fromarray(np.repeat(np.kron(corpus.images[INDICES[0]][:, :, 0], np.ones((4, 4), np.uint8))[:, :, None],
                              3, axis=2)).save(big)
    out = last_json(evaluate(["--config", str(config_path), "--images", *map(str, files), str(big), "--seeds", "3",
                              "--out", str(work / "runs-files")], cwd=work))
    by_index = {r["index"]: r["aucs"] for r in last_json(result)["results"]}
    assert [r["aucs"] for r in out["results"][:2]] == [by_index[i] for i in INDICES[:2]]
    assert [r["image"] for r in out["results"]] == [str(f) for f in (*files, big)]
    # The enlarged RGB copy is converted to grey and shrunk back (antialiased), close to but not the original.
    assert all(0 <= a <= 1 for a in out["results"][2]["aucs"])


def test_resume_trains_only_what_the_journal_lacks(setup) -> None:
    work, _, _, result = setup
    run_dir, = (work / "runs").iterdir()
    copy = work / "resumed"
    copy.mkdir()
    rows = (run_dir / "journal.jsonl").read_text().splitlines(keepends=True)
    for name in ("config.yaml", "evaluate.json"):
        (copy / name).write_text((run_dir / name).read_text())
    (copy / "journal.jsonl").write_text("".join(rows[:4]))  # as if killed after four trainings
    out = last_json(evaluate(["--resume", str(copy)], cwd=work))
    assert out["results"] == last_json(result)["results"]
    resumed = read_journal(copy / "journal.jsonl")
    assert len(resumed) == len(rows) and resumed[:4] == [json.loads(r) for r in rows[:4]]


def test_bad_requests_are_clear_errors(setup, capsys: pytest.CaptureFixture) -> None:
    # In the driver's own entry point (every one fails before Ray starts); the command line is the subprocess
    # path of the tests above.
    work, _, config_path, _ = setup
    for args, message in [
        (["--indices", "999999"], "out of range: the corpus has 10712 images"),
        (["--images", str(work / "missing.png")], "missing.png does not exist"),
        ([], "name the OE images to evaluate"),
        (["--indices", "3", "--seeds", "0"], "--seeds must be at least 1"),
    ]:
        code = evaluate_main(["--config", str(config_path), "--out", str(work / "bad"), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
    assert not (work / "bad").exists() or not any((work / "bad").iterdir()), "no run directory for a bad request"
