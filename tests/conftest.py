"""Shared fixtures: a tiny search config and a decoded-data cache shared by the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUN_PY = REPO / "oesearch" / "run.py"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("oesearch-cache")


def tiny_config(cache_dir: Path, **search: object) -> dict:
    """The embedded experiment shrunk to seconds: small population, short training."""
    return {
        "name": "tiny",
        "data": {"cache_dir": str(cache_dir)},
        "train": {"epochs": 2, "milestones": [1], "batch_size": 32},
        "search": {
            "population": 6,
            "generations": 3,
            "pool": 400,
            "k_nearest": 8,
            "repetitions": 2,
            "hall_of_fame": 3,
            "validation_seeds": 2,
            **search,
        },
        "run": {"workers": 2, "seed": 7},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(args: list[str], cwd: Path, script: Path = RUN_PY, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the search script as a user would, in its own process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    return subprocess.run([sys.executable, str(script), "--no-progress", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    return subprocess.Popen([sys.executable, str(RUN_PY), "--no-progress", *args], cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    time.sleep(1.0)
