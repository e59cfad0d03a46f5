"""Every failure a message, run status that tells the truth, and Ray that comes and goes cleanly (issue 16).

Each failure is a real CLI run (``python oesearch/run.py`` in its own
process): its exit code, its one-paragraph message, and the files it leaves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from oesearch.config import config_from_dict
from conftest import (RUN_PY, kill_group, ray_address_record_restored, run_cli, start_cli,
                      tiny_config, write_config)
from test_cluster import assert_exactly_once, only_run, wait_for
from oesearch.analysis import load_run
from oesearch.results import read_journal

RESUME = re.compile(r"with: (python oesearch/run\.py --resume (\S+) --address local) ")


def one_paragraph_error(stderr: str) -> str:
    """The last line of stderr: ``error: ...``, one paragraph, no traceback above it."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    return last


def resume_args(command: str) -> list[str]:
    """The printed ``python oesearch/run.py ...`` command as arguments of :func:`run_cli`."""
    assert command.startswith("python oesearch/run.py ")
    return command.split()[2:]


# --- an --out nobody can write to -------------------------------------------------------------------------------
@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A read-only file system (a tmpfs mounted ``ro``) where that is allowed, else a folder without write bits."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    if not mounted:
        folder.chmod(0o555)
    try:
        (folder / "probe").touch()
        pytest.skip("cannot make an unwritable folder here (root without mount rights)")
    except OSError:
        pass
    yield folder
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o755)


def test_unwritable_out_is_a_message_before_anything_starts(read_only_dir: Path, tmp_path: Path,
                                                             cache_dir: Path) -> None:
    config = write_config(tmp_path / "tiny.yaml", tiny_config(cache_dir))
    result = run_cli(["--config", str(config), "--out", str(read_only_dir / "runs")], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    message = one_paragraph_error(result.stderr)
    assert re.match(rf"error: cannot create a run directory under {re.escape(str(read_only_dir / 'runs'))}: "
                    r"(Read-only file system|Permission denied)\. Give a folder you can write to with --out DIR", message)
    assert "ray: " not in result.stdout, "it fails before starting Ray"
    assert list(read_only_dir.iterdir()) == []


# --- a disk that fills up mid-run -------------------------------------------------------------------------------
_FILL_AFTER = 5  # the injected variant: the 6th journal row finds the disk full

_INJECTED = """
import errno, os, sys
from oesearch.results.rundir import RunDir
append, written = RunDir.append, []
def full_after(self, row):
    if len(written) >= {n}:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    append(self, row)
    written.append(row)
RunDir.append = full_after
from oesearch.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def full_disk(tmp_path: Path):
    """(folder for --out, how): a 16 KiB tmpfs that the run fills, or, only where mounting is not allowed, an
    ``OSError(ENOSPC)`` injected into the journal's append."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0  # mounting needs root
    except FileNotFoundError:  # no mount command
        mounted = False
    if not mounted:
        yield folder, "injected"
        return
    try:
        yield folder, "tmpfs"
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_stops_with_a_message_and_loses_nothing(full_disk, tmp_path: Path, cache_dir: Path) -> None:
    folder, how = full_disk
    raw = tiny_config(cache_dir, generations=3)
    config = write_config(tmp_path / "tiny.yaml", raw)
    args = ["--no-progress", "--config", str(config), "--out", str(folder / "runs")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    command = [sys.executable, str(RUN_PY), *args] if how == "tmpfs" else \
        [sys.executable, "-c", _INJECTED.format(n=_FILL_AFTER), *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout + result.stderr
    message = one_paragraph_error(result.stderr)
    run_dir = only_run(folder / "runs")
    rows = read_journal(run_dir / "journal.jsonl")
    assert message.startswith("error: the disk is full"), message
    assert f"Nothing already written is lost: {len(rows)} finished evaluations are in {run_dir / 'journal.jsonl'}" in message
    assert message.endswith(f"then continue with: python oesearch/run.py --resume {run_dir}")
    if how == "injected":
        assert len(rows) == _FILL_AFTER
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config_from_dict(saved).search == config_from_dict(raw).search and saved["run"]["seed"] == raw["run"]["seed"]
    assert all(r["status"] == "ok" for r in rows)

    # What was written is enough to go on: on a disk with room, the resume completes the run exactly once.
    roomy = tmp_path / "roomy" / run_dir.name
    shutil.copytree(run_dir, roomy)
    resumed = run_cli(["--resume", str(roomy)], cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming: {len(rows)} finished evaluations in the journal" in resumed.stdout
    assert_exactly_once(roomy, raw)


# --- a corrupt checkpoint and a torn journal line ---------------------------------------------------------------
def test_corrupt_checkpoint_and_torn_journal_line_are_reported_and_replayed(
        killed_run: Path, tmp_path: Path, analysis_runs) -> None:
    run_dir = tmp_path / killed_run.name
    shutil.copytree(killed_run, run_dir)
    checkpoint = (run_dir / "checkpoint.pkl").read_bytes()
    truncated = checkpoint[: len(checkpoint) // 2]
    (run_dir / "checkpoint.pkl").write_bytes(truncated)
    journal = (run_dir / "journal.jsonl").read_bytes()
    complete = journal[: journal.rfind(b"\n") + 1]
    torn = b'{"purpose": "search", "generation": 2, "indi'
    (run_dir / "journal.jsonl").write_bytes(complete + torn)
    lines = complete.count(b"\n")

    result = run_cli(["--resume", str(run_dir)], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert (f"warning: {run_dir / 'checkpoint.pkl'} is unreadable (" in out
            and "moved it to checkpoint.pkl.corrupt-1 and replaying the run from the journal instead" in out), out
    assert (f"warning: {run_dir / 'journal.jsonl'}: line {lines + 1} is torn ({len(torn)} bytes without a newline: "
            "the driver was killed while writing it); skipped it, so that evaluation runs again") in out, out
    assert f"resuming: {lines} finished evaluations in the journal, checkpoint after generation none" in out

    # Nothing already written is lost: the bad checkpoint and the torn bytes are kept, the rows are untouched.
    assert (run_dir / "checkpoint.pkl.corrupt-1").read_bytes() == truncated
    assert (run_dir / "journal.jsonl.torn-1").read_bytes() == torn
    assert (run_dir / "journal.jsonl").read_bytes().startswith(complete)
    # The journal alone replays the search: the same result as the same search never interrupted.
    uninterrupted = json.loads((analysis_runs[("hsc", "worst", "evolution")] / "summary.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [(t["indices"], t["search_fitness"]) for t in summary["top"]] == \
        [(t["indices"], t["search_fitness"]) for t in uninterrupted["top"]]
    assert load_run(run_dir).status().startswith("finished: initial generation plus 3, ")


# --- configs and data that cannot be read -----------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00\x01 not text", r"error: cannot read the config file {path} \('utf-8' codec can't decode .*\); "
                                   r"give a readable YAML file$"),
    (b"search: {population: [6\n", r"error: {path} is not valid YAML at line 2, column 1: expected ',' or '\]', "
                                   r"but got '<stream end>'; fix the file or give another --config$"),
])
def test_unreadable_config_is_a_message(content: bytes, message: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    result = run_cli(["--config", str(path), "--out", str(tmp_path / "runs")], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.match(message.format(path=re.escape(str(path))), one_paragraph_error(result.stderr))
    assert not (tmp_path / "runs").exists()
    assert path.read_bytes() == content


def _image_tree(root: Path, classes: dict[str, int]) -> None:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((8, 8), (i * 37 + len(name) * 11) % 256, np.uint8), mode="L").save(
                root / name / f"{i}.png")


@pytest.mark.parametrize("train, test, message", [
    ({"ant": 3, "bee": 0}, {"ant": 2, "bee": 2},
     "error: 1 of the 2 class folders under {root}/train hold no images: {root}/train/bee. Every class needs "
     "images in every split: fill those folders, or remove them from every split so that the classes still match."),
    ({"ant": 3, "bee": 3}, {"ant": 2},
     "error: the train and test splits name different classes (only in train: bee). Each split needs the same "
     "class folders: add the missing ones, or remove the extra ones."),
])
def test_empty_or_missing_class_folder_is_named(train: dict, test: dict, message: str, tmp_path: Path,
                                                cache_dir: Path) -> None:
    root = tmp_path / "folders"
    _image_tree(root / "train", train)
    _image_tree(root / "test", test)
    config = write_config(tmp_path / "tiny.yaml", tiny_config(cache_dir))
    result = run_cli(["--config", str(config), "--out", str(tmp_path / "runs"), "--set", "data.normal.kind=imagefolder",
                      "--set", f"data.normal.path={root}", "--set", "data.normal_class=0"], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert one_paragraph_error(result.stderr) == message.format(root=root)
    assert not (tmp_path / "runs").exists()


# --- Ray: joined, lost, private, killed -------------------------------------------------------------------------
@pytest.fixture
def local_cluster():
    """A one-node cluster of its own on localhost, as ``ray start --head`` would make."""
    from ray.cluster_utils import Cluster

    with ray_address_record_restored() as wrote:
        cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 2, "include_dashboard": False})
        wrote(cluster.address)
        cluster.wait_for_nodes()
        yield cluster
        cluster.shutdown()


def _long_config(tmp_path: Path, cache_dir: Path) -> tuple[dict, Path]:
    raw = tiny_config(cache_dir, population=6, generations=3)
    raw["train"].update(epochs=8, milestones=[6])  # trainings long enough to be caught running, even under load
    return raw, write_config(tmp_path / "tiny.yaml", raw)


def _journal_has(out: Path, predicate) -> bool:
    journals = list(out.glob("*/journal.jsonl")) if out.exists() else []
    return bool(journals) and predicate(read_journal(journals[0]))


def test_losing_the_joined_cluster_names_it_and_the_resume_command_completes(
        local_cluster, tmp_path: Path, cache_dir: Path) -> None:
    raw, config = _long_config(tmp_path, cache_dir)
    log, out, address = tmp_path / "driver.log", tmp_path / "runs", local_cluster.address  # None once shut down
    proc = start_cli(["--config", str(config), "--out", str(out), "--address", address], cwd=tmp_path, log=log)
    try:
        wait_for(lambda: (out.exists() and list(out.glob("*/checkpoint.pkl"))), 300, "generation 0's checkpoint",
                 proc, log)
        local_cluster.shutdown()  # the cluster goes away under the running search
        assert proc.wait(timeout=300) == 2, log.read_text()
    finally:
        kill_group(proc) if proc.poll() is None else None
    text = log.read_text()
    assert f"ray: joined the cluster at {address} (--address): 1 node, 0 GPUs, 2 CPUs" in text, text
    message = one_paragraph_error(text)
    run_dir = only_run(out)
    rows = read_journal(run_dir / "journal.jsonl")
    assert f"while running on the Ray cluster at {address} " in message, message
    assert f"Nothing finished is lost: {len(rows)} evaluations are in {run_dir / 'journal.jsonl'}" in message
    command, named = RESUME.search(message).groups()
    assert Path(named) == run_dir

    resumed = run_cli(resume_args(command), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert re.search(r"^ray: started a private instance at \S+ \(--address local\): 1 node, 0 GPUs, \d+ CPUs; "
                     r"it ends with this run$", resumed.stdout, re.M), resumed.stdout
    assert_exactly_once(run_dir, raw)


def _ray_processes(driver: psutil.Process) -> dict[int, float]:
    """pid -> start time of every process under the driver (its private Ray instance and the watchdog)."""
    return {p.pid: p.create_time() for p in driver.children(recursive=True)}


def _alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _driver_of(proc: subprocess.Popen) -> psutil.Process:
    """The search's driver: the command line's child (the command line itself only supervises it)."""
    (driver,) = psutil.Process(proc.pid).children()
    return driver


def test_killed_driver_takes_its_private_ray_with_it(tmp_path: Path, cache_dir: Path) -> None:
    _, config = _long_config(tmp_path, cache_dir)
    log, out = tmp_path / "driver.log", tmp_path / "runs"
    proc = start_cli(["--config", str(config), "--out", str(out)], cwd=tmp_path, log=log)
    try:
        wait_for(lambda: _journal_has(out, lambda rows: len(rows) >= 2), 300, "two finished trainings", proc, log)
        driver = _driver_of(proc)
        ray_procs = _ray_processes(driver)
        names = " ".join(" ".join(psutil.Process(p).cmdline()) for p in ray_procs if _alive(p, ray_procs[p]))
        assert "raylet" in names and "gcs_server" in names and "dashboard_agent" in names, names
        run = load_run(only_run(out))
        assert run.state == "running" and run.status().startswith("running: generation "), run.status()
        assert f"(driver pid {driver.pid})" in run.status()

        driver.kill()
        assert proc.wait(timeout=60) == 2, log.read_text()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p, t) for p, t in ray_procs.items()):
            time.sleep(0.2)
        left = [p for p, t in ray_procs.items() if _alive(p, t)]
        assert not left, f"orphans: {[' '.join(psutil.Process(p).cmdline())[:80] for p in left]}"
    finally:
        kill_group(proc) if proc.poll() is None else None
    message = one_paragraph_error(log.read_text())
    assert message.startswith("error: the search's driver process was killed by SIGKILL while running on the "
                              "private Ray instance at "), message
    assert f"--resume {only_run(out)} --address local" in message
    assert load_run(only_run(out)).state == "stopped"


def test_killed_driver_leaves_a_joined_cluster_running(local_cluster, tmp_path: Path, cache_dir: Path) -> None:
    """No --address and no RAY_ADDRESS, as after `ray submit` on a head node: the recorded cluster is joined,
    the line says so, and killing the driver leaves that cluster as it was."""
    from ray._private import ray_constants

    _, config = _long_config(tmp_path, cache_dir)
    log, out = tmp_path / "driver.log", tmp_path / "runs"
    proc = start_cli(["--config", str(config), "--out", str(out)], cwd=tmp_path, log=log, ray_address=None)
    try:
        wait_for(lambda: _journal_has(out, lambda rows: len(rows) >= 2), 300, "two finished trainings", proc, log)
        assert (f"ray: joined the cluster at {local_cluster.address} (recorded by `ray start` in "
                "/tmp/ray/ray_current_cluster; no --address or RAY_ADDRESS given): 1 node, 0 GPUs, 2 CPUs; "
                "--address local runs on a private instance instead") in log.read_text(), log.read_text()
        driver = _driver_of(proc)
        assert not any("watchdog.py" in " ".join(p.cmdline()) for p in driver.children(recursive=True)), \
            "no watchdog for a cluster the search only joined"
        driver.kill()
        assert proc.wait(timeout=60) == 2, log.read_text()
    finally:
        kill_group(proc) if proc.poll() is None else None
    time.sleep(3.0)  # time a watchdog would have had
    head = local_cluster.head_node.all_processes
    for kind in (ray_constants.PROCESS_TYPE_GCS_SERVER, ray_constants.PROCESS_TYPE_RAYLET):
        assert head[kind][0].process.poll() is None, f"the cluster's {kind} was stopped"
    probe = subprocess.run([sys.executable, "-c", "import ray; ray.init(address=%r, logging_level='ERROR'); "
                            "print(sum(n['Alive'] for n in ray.nodes()))" % local_cluster.address],
                           capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip().splitlines()[-1] == "1", probe.stdout + probe.stderr
