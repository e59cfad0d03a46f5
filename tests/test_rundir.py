"""Durable run-directory writes: the journal survives a kill mid-line, checkpoints are atomic."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from oesearch.results.rundir import RunDir, atomic_write_text, read_journal, to_json


def row(i: int) -> dict:
    return {"purpose": "search", "generation": 0, "individual": i, "indices": [i], "seed": 1, "auc": i / 10}


def test_journal_drops_a_torn_last_line_and_appends_after_it(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    run.append(row(1))
    run.append(row(2))
    run.close()
    journal = run.file("journal.jsonl")
    with open(journal, "ab") as f:  # a kill in the middle of writing row 3
        f.write(b'{"purpose": "search", "gen')
    assert [r["individual"] for r in read_journal(journal)] == [1, 2]

    resumed = RunDir(run.path)  # a new process opening the same run
    resumed.append(row(3))
    resumed.close()
    lines = journal.read_bytes().split(b"\n")
    assert [json.loads(x)["individual"] for x in lines if x] == [1, 2, 3]


def test_non_finite_values_become_null(tmp_path: Path) -> None:
    assert json.loads(to_json({"a": math.inf, "b": [math.nan, 1.5]})) == {"a": None, "b": [None, 1.5]}


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "x")
    assert run.load_checkpoint() is None
    state = {"generation": 3, "rng": (3, (1, 2, 3), None)}
    run.save_checkpoint(state)
    assert run.load_checkpoint() == state


def test_existing_requires_a_run_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        RunDir.existing(tmp_path)


def test_atomic_writes_respect_the_umask(tmp_path: Path) -> None:
    """Run files are shared with colleagues and web servers: not the 0600 that mkstemp gives."""
    import os

    from oesearch.results.rundir import _UMASK, atomic_write_text

    atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o666 & ~_UMASK
    assert _UMASK == os.umask(_UMASK)
