"""run.storage: a path receives run directories; a URI receives a mirror of each, kept current."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli, tiny_config, write_config
from oesearch.results.storage import run_parent


def test_a_storage_path_is_where_runs_are_created(tmp_path: Path) -> None:
    assert run_parent("runs", None) == Path("runs")
    assert run_parent("runs", str(tmp_path / "shared")) == tmp_path / "shared"
    assert run_parent("runs", "s3://bucket/runs") == Path("runs"), "a URI is mirrored, not written in place"


def test_a_storage_uri_holds_a_byte_identical_mirror(tmp_path: Path, cache_dir: Path) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_config(cache_dir, population=4, generations=1))
    mirror_root = tmp_path / "bucket"
    result = run_cli(["--config", str(config), "--out", str(tmp_path / "runs"), "--storage", f"file://{mirror_root}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    mirrored = mirror_root / run_dir.name
    local = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert {"journal.jsonl", "checkpoint.pkl", "summary.json", "config.yaml"} <= set(local)
    assert {p.name: p.read_bytes() for p in mirrored.iterdir()} == local
