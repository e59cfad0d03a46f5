"""Campaigns on a real multi-node localhost Ray cluster: each search as if alone, a killed driver, a lost node.

One campaign of four tiny searches (two classes x HSC x best and worst) runs uninterrupted through the
command line; every other test compares its own run with that one, search by search: the journal (less
where and how long each training ran) and the hall of fame.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import RUN_PY, kill_group, start_cli, tiny_config, write_config
from test_cluster import gpu_node_cluster, raylet_pid, remove_machine, wait_for
from oesearch.config import ConfigError, config_from_dict
from oesearch.experiments.campaign import campaign_cells, check_manifest, search_config
from oesearch.results import read_journal

WHERE = {"seconds", "worker", "node", "device"}  # where and how long a training ran: the only fields that may differ
RESUME = re.compile(r"with: (python oesearch/run.py campaign) --resume (\S+) --address local")


def campaign_config(cache_dir: Path) -> dict:
    raw = tiny_config(cache_dir, population=6, generations=1, hall_of_fame=2)
    raw["train"].update(epochs=3, milestones=[2])  # trainings long enough to be caught running
    raw["run"] = {"seed": 5, "gpus_per_worker": 1.0, "max_retries": 2}  # one worker per fake GPU
    raw["campaign"] = {"classes": [0, 1], "methods": ["hsc"], "modes": ["best", "worst"]}
    return raw


def normalised(rows: list[dict]) -> list[str]:
    return sorted(json.dumps({k: v for k, v in r.items() if k not in WHERE}, sort_keys=True) for r in rows)


def searches_of(campaign: Path) -> dict[str, Path]:
    manifest = json.loads((campaign / "manifest.json").read_text())
    return {entry["id"]: campaign / entry["run_dir"] for entry in manifest["searches"]}


def assert_same_searches(campaign: Path, reference: Path, drop: set[str] = frozenset()) -> None:
    """Search by search: equal journals (less ``WHERE`` and ``drop``) and byte-identical halls of fame."""
    ours, theirs = searches_of(campaign), searches_of(reference)
    assert list(ours) == list(theirs)
    for name, path in ours.items():
        a = [{k: v for k, v in r.items() if k not in drop} for r in read_journal(path / "journal.jsonl")]
        b = [{k: v for k, v in r.items() if k not in drop} for r in read_journal(theirs[name] / "journal.jsonl")]
        assert normalised(a) == normalised(b), name
        assert (path / "hall_of_fame.csv").read_bytes() == (theirs[name] / "hall_of_fame.csv").read_bytes(), name


def assert_exactly_once(run_dir: Path) -> list[dict]:
    """No training journaled twice, none failed, and every hall-of-fame entry validated."""
    rows = read_journal(run_dir / "journal.jsonl")
    keys = [(r["purpose"], tuple(sorted(r["indices"])), r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)), f"{run_dir.name}: an evaluation was journaled twice"
    assert all(r["status"] == "ok" for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {k[1] for k in keys if k[0] == "validate"} == {tuple(sorted(t["indices"])) for t in summary["top"]}
    return rows


def only_campaign(parent: Path) -> Path:
    (path,) = parent.iterdir()
    return path


def cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(RUN_PY), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs and three one-'GPU' worker nodes on localhost, shared by this module's campaigns."""
    with gpu_node_cluster(3) as made:
        yield made


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, Path]:
    """The campaign run once through the command line, start to end: (its directory, its config file)."""
    work = tmp_path_factory.mktemp("campaign")
    config = write_config(work / "campaign.yaml", campaign_config(cache_dir))
    result = cli(["campaign", "--no-progress", "--config", str(config), "--out", str(work / "runs"),
                  "--address", cluster[0].address], cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    campaign = only_campaign(work / "runs")
    assert result.stdout.strip().splitlines()[-1] == str(campaign)
    assert "campaign: 4 searches on 3 gpu workers" in result.stdout
    return campaign, config


def test_the_grid_defaults_to_table_3_and_checks_its_classes(cache_dir: Path) -> None:
    config = config_from_dict(tiny_config(cache_dir))
    cells = campaign_cells(config, class_count=10)
    assert [c.id for c in cells[:4]] == ["c0-hsc-best-s7", "c0-hsc-worst-s7", "c0-bce-best-s7", "c0-bce-worst-s7"]
    assert len(cells) == 10 * 2 * 2 and len({c.task for c in cells}) == 20, "a task per class and method"
    one = search_config(config, cells[3])
    assert (one.data.normal_class, one.train.method, one.search.mode, one.run.seed) == (0, "bce", "worst", 7)
    wider = config_from_dict(tiny_config(cache_dir) | {"campaign": {"classes": [2], "seeds": [1, 2],
                                                                     "strategies": ["evolution", "random"]}})
    assert [c.id for c in campaign_cells(wider, 10)][:4] == ["c2-hsc-best-s1", "c2-hsc-best-s2",
                                                             "c2-hsc-best-s1-random", "c2-hsc-best-s2-random"]
    with pytest.raises(ConfigError, match="campaign.classes: class 10 is out of range; the normal data has 10"):
        campaign_cells(config_from_dict(tiny_config(cache_dir) | {"campaign": {"classes": [10]}}), 10)
    with pytest.raises(ConfigError, match="campaign.modes"):
        config_from_dict(tiny_config(cache_dir) | {"campaign": {"modes": ["best", "best"]}})


def test_every_search_equals_the_same_search_run_alone(uninterrupted, cluster, tmp_path: Path) -> None:
    campaign, _ = uninterrupted
    status = json.loads((campaign / "status.json").read_text())
    assert status["finished"] == status["total"] == 4 and status["failed"] == 0
    # Each search alone, from the config.yaml it wrote, as `oesearch search --config` runs it (less the report):
    # four drivers at once, each with one worker of its own (how many workers a search has changes no result).
    script = (
        "import sys\nfrom pathlib import Path\nfrom oesearch.config import load_config\n"
        "from oesearch.experiments.search import run_search\nfrom oesearch.results import RunDir\n"
        "config = load_config(Path(sys.argv[2]) / 'config.yaml', [f'run.address={sys.argv[1]}', 'run.workers=1'])\n"
        "run_search(config, RunDir.create(Path('alone'), Path(sys.argv[2]).name), log=lambda _: None, progress=False)\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    drivers = [subprocess.Popen([sys.executable, "-c", script, cluster[0].address, str(path)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for path in searches_of(campaign).values()]
    for driver in drivers:
        output, _ = driver.communicate(timeout=600)
        assert driver.returncode == 0, output
    alone = {p.name.split("-", 2)[2]: p for p in (tmp_path / "alone").iterdir()}  # <date>-<time>-<search id>
    assert sorted(alone) == sorted(searches_of(campaign))
    for path in searches_of(campaign).values():
        single = alone[path.name]
        mine, theirs = read_journal(path / "journal.jsonl"), read_journal(single / "journal.jsonl")
        assert len(mine) > 0 and normalised(mine) == normalised(theirs), path.name
        assert (path / "hall_of_fame.csv").read_bytes() == (single / "hall_of_fame.csv").read_bytes(), path.name
    for path in searches_of(campaign).values():
        assert_exactly_once(path)


def running_training(roots: list[int]) -> int | None:
    """The pid of a worker process under ``roots`` training a job of generation 1 or later, or of the validation."""
    for root in roots:
        for proc in psutil.Process(root).children(recursive=True):
            try:
                if LATER.match(" ".join(proc.cmdline())):
                    return proc.pid
            except psutil.Error:
                continue
    return None


LATER = re.compile(r"ray::(?:packed\d+:)?fitness\[(?:g[1-9]\d*|val) ")


def test_a_killed_campaign_driver_resumes_to_the_uninterrupted_result_despite_a_lost_node(
        uninterrupted, cluster, tmp_path: Path) -> None:
    """The driver is SIGKILLed midway; its resume loses a node midway: the campaign ends as the uninterrupted one.

    Last of this module's cluster tests: it takes a node of the shared cluster away.
    """
    reference, config = uninterrupted
    head, workers = cluster
    out, log = tmp_path / "runs", tmp_path / "driver.log"
    proc = start_cli(["--config", str(config), "--out", str(out), "--address", head.address], cwd=tmp_path,
                     log=log, ray_address=None, command="campaign")

    def midway() -> bool:  # generation 1 has begun somewhere, and some search is not finished
        journals = list(out.glob("*/searches/*/journal.jsonl")) if out.exists() else []
        rows = [r for j in journals for r in read_journal(j)]
        return any((r["generation"] or 0) >= 1 for r in rows) and len(list(out.glob("*/searches/*/summary.json"))) < 4

    try:
        wait_for(midway, 300, "a campaign midway", proc, log)
        (driver,) = psutil.Process(proc.pid).children()
        driver.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == 2, log.read_text()
    finally:
        kill_group(proc) if proc.poll() is None else None
    campaign = only_campaign(out)
    text = log.read_text()
    assert "was killed by SIGKILL" in text and "the journals of" in text, text
    _, named = RESUME.search(text).groups()
    assert Path(named) == campaign and not all((p / "summary.json").exists() for p in searches_of(campaign).values())
    before = sum(len(read_journal(p / "journal.jsonl")) for p in searches_of(campaign).values())

    log = tmp_path / "resume.log"
    proc = start_cli(["--resume", str(campaign), "--address", head.address], cwd=tmp_path, log=log,
                     ray_address=None, command="campaign")
    try:
        pid = wait_for(lambda: running_training([raylet_pid(n) for n in workers]), 300, "a training of the resume",
                       proc, log)
        victim = next(n for n in workers if raylet_pid(n) in {p.pid for p in psutil.Process(pid).parents()})
        remove_machine(head, victim)
        assert proc.wait(timeout=600) == 0, log.read_text()
    finally:
        kill_group(proc) if proc.poll() is None else None
    assert "] resuming: " in log.read_text(), "a search continued from its journal"
    assert_same_searches(campaign, reference, drop={"attempts"})
    rows = []
    for path in searches_of(campaign).values():
        rows += assert_exactly_once(path)
    assert len(rows) > before, "the resume trained what the killed driver had not"
    assert any(r["attempts"] > 1 for r in rows), "the training lost with the node ran again"
    assert len({r["node"] for r in rows}) == 3, "every node trained, the lost one before it went"


def test_a_resume_refuses_another_config_and_a_foreign_manifest(uninterrupted, capsys) -> None:
    campaign, config = uninterrupted
    from oesearch.cli import main

    assert main(["campaign", "--resume", str(campaign), "--config", str(config)]) == 2
    assert "drop --config/--set/--seed" in capsys.readouterr().err
    cells = campaign_cells(config_from_dict(campaign_config(Path("unused"))), 10)
    check_manifest(campaign, cells)  # its own grid: accepted
    with pytest.raises(ConfigError, match="lists searches"):
        check_manifest(campaign, cells[:2])


def test_a_campaign_worker_holds_every_task_once_and_trains_each_as_a_single_search_worker(cache_dir: Path) -> None:
    import pickle

    import torch

    from oesearch.distributed.fitness_worker import FitnessWorkerBase
    from oesearch.experiments.campaign import prepare_campaign
    from oesearch.search.fitness import Job

    raw = campaign_config(cache_dir)
    raw["campaign"] = {"classes": [0, 4], "methods": ["hsc", "bce"], "modes": ["worst"]}
    plan = prepare_campaign(config_from_dict(raw), log=lambda _: None)
    assert sorted(plan.tasks) == ["c0-bce", "c0-hsc", "c4-bce", "c4-hsc"]
    tasks = pickle.loads(pickle.dumps(plan.tasks))  # as the object store hands them to a worker
    assert tasks["c0-hsc"] is tasks["c0-bce"], "one object per class"
    assert tasks["c0-hsc"].test is tasks["c4-hsc"].test, "one test set for every class"
    threads = torch.get_num_threads()
    try:
        worker = FitnessWorkerBase(tasks, plan.specs)
        assert worker.tasks["c0-hsc"].data is worker.tasks["c0-bce"].data
        assert worker.tasks["c0-hsc"].data.test is worker.tasks["c4-hsc"].data.test
        assert worker.tasks["c0-hsc"].data.train is not worker.tasks["c4-hsc"].data.train
        images = plan.data["c4-bce-worst-s5"].corpus.images
        for name in ("c4-bce", "c0-hsc"):
            cell = next(c for c in plan.cells if c.task == name)
            alone = FitnessWorkerBase(plan.data[cell.id].task, plan.specs[name])
            job = Job(cell.normal_class, (17,), 3, "search", 0, 0)
            row = worker.evaluate(Job(cell.normal_class, (17,), 3, "search", 0, 0, name), images[[17]])
            assert row["auc"] == alone.evaluate(job, images[[17]])["auc"], name
        with pytest.raises(KeyError, match="not 'c9-hsc'"):
            worker.evaluate(Job(9, (17,), 3, "search", 0, 0, "c9-hsc"), images[[17]])
    finally:
        torch.set_num_threads(threads)


def test_the_analysis_reads_a_campaign_as_its_searches(uninterrupted) -> None:
    from oesearch.analysis import find_runs

    campaign, _ = uninterrupted
    searches = sorted(searches_of(campaign).values())
    assert find_runs([campaign]) == searches
    assert find_runs(root=campaign.parent) == searches, "under runs/: the searches, not the campaign directory"
