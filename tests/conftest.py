"""Shared fixtures: a tiny search config and a decoded-data cache shared by the session."""

from __future__ import annotations

import contextlib
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
# The CIFAR-10 JPEG archive of ../shared/data (slow tests skip without it).
CIFAR_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
if not CIFAR_ARCHIVE.exists():  # a worktree next to the main checkout, or the shared folder elsewhere
    CIFAR_ARCHIVE = Path(os.environ.get("OESEARCH_SHARED_DATA", "/work/shared/data")) / "cifar10-jpeg.tar.gz"


def unpack_cifar(dest: Path) -> Path:
    """``dest/cifar10-jpeg/{train,test}/<class>/NNNN.jpg``, or a skip when the archive is absent."""
    import tarfile

    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR_ARCHIVE} (see ../shared/data/README.md; "
                    "set OESEARCH_SHARED_DATA to the folder that holds cifar10-jpeg.tar.gz)")
    with tarfile.open(CIFAR_ARCHIVE) as archive:
        archive.extractall(dest, filter="data")
    root = dest / "cifar10-jpeg"
    assert (root / "train").is_dir() and (root / "test").is_dir()
    return root


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
            "validation": {"scheme": "fixed", "seeds": 2, "random_panel": 0},
            **search,
        },
        "run": {"workers": 2, "seed": 7},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


# "local": always a fresh Ray instance of the test's own. Without an address Ray joins the last cluster that
# `ray start` left on this machine, whoever started it.
def run_cli(args: list[str], cwd: Path, script: Path = RUN_PY, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the search script as a user would, in its own process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    return subprocess.run([sys.executable, str(script), "--no-progress", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(args: list[str], cwd: Path, log: Path, ray_address: str | None = "local",
              command: str | None = None) -> subprocess.Popen:
    """Start the search script (or its subcommand ``command``) in a session of its own; ``ray_address=None``:
    no RAY_ADDRESS, as for a user."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray_address}
    if ray_address is None:
        env.pop("RAY_ADDRESS")
    head = [command] if command else []
    return subprocess.Popen([sys.executable, str(RUN_PY), *head, "--no-progress", *args], cwd=cwd, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_at_generation(args: list[str], cwd: Path, out: Path, generation: int, log: Path,
                       timeout: float = 240) -> tuple[Path | None, list[dict] | None]:
    """Start a search and SIGKILL it once a training of ``generation`` is journaled (that generation has
    begun and is not finished); return its run directory and the journal rows seen at the kill."""
    from oesearch.results import read_journal

    proc = start_cli(args, cwd=cwd, log=log)
    deadline = time.time() + timeout
    journals, killed_rows = [], None
    while time.time() < deadline and proc.poll() is None:
        journals = list(out.glob("*/journal.jsonl")) if out.exists() else []
        rows = read_journal(journals[0]) if journals else []
        if any(r["generation"] == generation for r in rows):
            os.kill(proc.pid, signal.SIGKILL)
            killed_rows = rows
            break
        time.sleep(0.02)
    kill_group(proc)
    return (journals[0].parent if journals else None), killed_rows


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    time.sleep(1.0)


@pytest.fixture(scope="session")
def killed_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """The analysis fixture's HSC worst search, SIGKILLed once generation 2 has begun (read it, or copy it
    before changing it: the report and robustness tests share it)."""
    work = tmp_path_factory.mktemp("killed")
    config = write_config(work / "tiny.yaml", tiny_config(cache_dir))
    run_dir, rows = kill_at_generation(["--config", str(config), "--method", "hsc", "--mode", "worst",
                                        "--out", str(work / "runs")], cwd=work, out=work / "runs", generation=2,
                                       log=work / "killed.log")
    assert rows is not None, (work / "killed.log").read_text()
    assert not (run_dir / "summary.json").exists()
    return run_dir


# The runs the analysis views compare: HSC and BCE, best and worst, and a random search (Appendix D).
ANALYSIS_RUNS = (("hsc", "best", "evolution"), ("bce", "best", "evolution"), ("hsc", "worst", "evolution"),
                 ("bce", "worst", "evolution"), ("hsc", "best", "random"))


@pytest.fixture(scope="session")
def analysis_runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[tuple[str, str, str], Path]:
    """Five tiny finished searches, run by the real CLI in one process (one Ray start), by (method, mode, strategy)."""
    work = tmp_path_factory.mktemp("analysis")
    config = write_config(work / "tiny.yaml", tiny_config(cache_dir))
    calls = [["--no-progress", "--config", str(config), "--out", str(work / "runs"),
              "--method", method, "--mode", mode, "--strategy", strategy] for method, mode, strategy in ANALYSIS_RUNS]
    # One private Ray instance for all five (each command would start and stop one of its own).
    script = ("import ray\nfrom oesearch.cli import main\nray.init(address='local', num_cpus=2, include_dashboard=False)\n"
              f"for args in {calls!r}:\n    assert main(args) == 0, args\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    result = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = {}
    for path in sorted((work / "runs").iterdir()):
        c = yaml.safe_load((path / "config.yaml").read_text())
        runs[(c["train"]["method"], c["search"]["mode"], c["search"]["strategy"])] = path
    assert set(runs) == set(ANALYSIS_RUNS)
    return runs


@contextlib.contextmanager
def ray_address_record_restored():
    """Undo what ``ray.cluster_utils.Cluster`` does to ``/tmp/ray/ray_current_cluster``.

    Cluster writes its head's address there "for convenience in unit testing",
    so that every later ``ray.init()`` on this machine without an address, a
    user's search included, joins it; once the test cluster is gone that record
    points at nothing.  Put back what was there, unless someone else has since
    written it.
    """
    from ray._private.utils import get_ray_address_file

    record = Path(get_ray_address_file(None))
    before = record.read_text() if record.exists() else None
    written = []
    try:
        yield written.append  # the test names the address its cluster wrote
    finally:
        now = record.read_text().strip() if record.exists() else None
        if now is not None and now in written:
            if before is None:
                record.unlink(missing_ok=True)
            else:
                record.write_text(before)
