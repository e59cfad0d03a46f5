"""The search on real multi-process and multi-node Ray clusters, with workers and nodes lost mid-run."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import psutil
import pytest

from conftest import kill_group, ray_address_record_restored, start_cli, tiny_config, write_config
from oesearch.results import read_journal
from oesearch.search.fitness import job_key

TITLE = re.compile(r"ray::fitness\[g(\d+) i(\d+) idx=([\d,]+) s(\d+)\]")


def wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{log.read_text()}" if log else ""))


def only_run(parent: Path) -> Path:
    (run_dir,) = parent.iterdir()
    return run_dir


def running_evaluation(generation: int, roots: list[int]):
    """(pid, indices, seed, generation) of a worker process under ``roots`` running a training of ``generation`` or later.

    Only descendants of ``roots`` count: other searches may run on the same machine.
    """
    for root in roots:
        for proc in psutil.Process(root).children(recursive=True):
            try:
                match = TITLE.match(" ".join(proc.cmdline()))
            except psutil.Error:
                continue
            if match and int(match.group(1)) >= generation:
                return proc.pid, [int(i) for i in match.group(3).split(",")], int(match.group(4)), int(match.group(1))
    return None


def raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def assert_exactly_once(run_dir: Path, config: dict) -> list[dict]:
    """Every evaluation the search needed is journaled once: no loss, no double count.

    Needed = every seed of every individual the search ever created (DEAP's
    genealogy), and the hall of fame's validation seeds.
    """
    import json

    rows = read_journal(run_dir / "journal.jsonl")
    keys = [(r["purpose"], tuple(sorted(r["indices"])), r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)), "an evaluation was journaled twice"
    summary = json.loads((run_dir / "summary.json").read_text())
    genealogy = json.loads((run_dir / "genealogy.json").read_text())
    created = {tuple(sorted(ind["indices"])) for ind in genealogy["individuals"].values()}
    seeds = summary["search_seeds"]
    search = {k for k in keys if k[0] == "search"}
    assert search == {("search", ind, s) for ind in created for s in seeds}
    gen0 = {k for k in search if any(r["generation"] == 0 and tuple(sorted(r["indices"])) == k[1] for r in rows)}
    assert len(gen0) == config["search"]["population"] * len(seeds)
    validated = {(k[1]) for k in keys if k[0] == "validate"}
    assert validated == {tuple(sorted(t["indices"])) for t in summary["top"]}
    assert all(r["status"] == "ok" for r in rows)
    return rows


def test_killed_worker_process_is_retried_and_counted_once(tmp_path: Path, cache_dir: Path) -> None:
    config = tiny_config(cache_dir, population=6, generations=3)
    config["train"].update(epochs=8, milestones=[6])  # trainings long enough to be caught running, even under load
    path = write_config(tmp_path / "tiny.yaml", config)
    log = tmp_path / "driver.log"
    proc = start_cli(["--config", str(path), "--out", str(tmp_path / "runs")], cwd=tmp_path, log=log)
    try:
        pid, indices, seed, _ = wait_for(lambda: running_evaluation(1, [proc.pid]), 240, "a training after generation 0", proc, log)
        psutil.Process(pid).kill()
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        kill_group(proc) if proc.poll() is None else None
    rows = assert_exactly_once(only_run(tmp_path / "runs"), config)
    killed = [r for r in rows if r["indices"] == indices and r["seed"] == seed and r["purpose"] == "search"]
    assert len(killed) == 1 and killed[0]["attempts"] == 2, "the killed training ran again, once"
    assert killed[0]["worker"] != f"{killed[0]['worker'].split(':')[0]}:{pid}"
    assert sum(r["attempts"] > 1 for r in rows) == 1, "jobs queued behind it were resubmitted without a charge"


@contextlib.contextmanager
def gpu_node_cluster(nodes: int = 3):
    """A head node with no CPUs (like cluster.yaml's) and ``nodes`` one-'GPU' worker nodes, all on localhost,
    quick to notice a lost node.

    The GPUs are a custom count of Ray's GPU resource: the workers train on
    CPU, but the search sizes and places them as GPU workers.
    """
    from ray.cluster_utils import Cluster

    with ray_address_record_restored() as wrote:
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": 0, "include_dashboard": False,
            "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                               "health_check_failure_threshold": 3}})
        wrote(cluster.address)
        workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(nodes)]
        cluster.wait_for_nodes()
        try:
            yield cluster, workers
        finally:
            cluster.shutdown()


@pytest.fixture
def three_gpu_nodes():
    with gpu_node_cluster(3) as made:
        yield made


def node_running(pid: int, nodes) -> object:
    """The cluster node whose raylet is an ancestor of process ``pid``."""
    ancestors = {p.pid for p in psutil.Process(pid).parents()}
    for node in nodes:
        if raylet_pid(node) in ancestors:
            return node
    raise AssertionError(f"process {pid} runs on none of the worker nodes")


def remove_machine(cluster, node) -> None:
    """Take a node away as a lost machine would go: its raylet and every process under it at once.

    (``Cluster.remove_node`` alone kills the raylet; the workers under it would
    keep serving direct actor calls until they notice, which no lost machine does.)
    """
    raylet = psutil.Process(raylet_pid(node))
    for child in raylet.children(recursive=True):
        child.kill()
    cluster.remove_node(node, allow_graceful=False)


def test_search_spreads_over_nodes_and_survives_losing_one(tmp_path: Path, cache_dir: Path, three_gpu_nodes) -> None:
    cluster, workers = three_gpu_nodes
    config = tiny_config(cache_dir, population=6, generations=3)
    config["train"].update(epochs=8, milestones=[6])
    config["run"] = {"seed": 11, "gpus_per_worker": 1.0, "max_retries": 2}  # workers: what the nodes hold
    path = write_config(tmp_path / "tiny.yaml", config)
    log = tmp_path / "driver.log"
    proc = start_cli(["--config", str(path), "--out", str(tmp_path / "runs"), "--address", cluster.address],
                     cwd=tmp_path, log=log)
    try:
        pid, _, _, removed_in = wait_for(lambda: running_evaluation(1, [raylet_pid(n) for n in workers]), 240,
                                         "a training after generation 0", proc, log)
        victim = node_running(pid, workers)
        remove_machine(cluster, victim)
        assert proc.wait(timeout=300) == 0, log.read_text()
    finally:
        kill_group(proc) if proc.poll() is None else None
    text = log.read_text()
    assert "3 gpu workers" in text, "one worker per fake GPU"
    assert f"ray: joined the cluster at {cluster.address} (--address): 4 nodes, 3 GPUs, 3 CPUs" in text, text
    rows = assert_exactly_once(only_run(tmp_path / "runs"), config)
    before = {r["node"] for r in rows if r["generation"] == 0}
    after = {r["node"] for r in rows if r["purpose"] == "validate" or r["generation"] > removed_in}
    assert len(before) == 3, "generation 0 spread over all three nodes"
    assert victim.node_id[:12] in before and victim.node_id[:12] not in after, "nothing ran on the removed node"
    assert len(after) == 2
    assert any(r["attempts"] > 1 for r in rows), "the training lost with the node ran again"


def test_a_cpu_only_head_waits_for_gpu_nodes_before_sizing_workers() -> None:
    """As with cluster.yaml right after `ray up`: the head has no CPUs for workers and GPU nodes are booting."""
    import threading

    import ray
    from ray.cluster_utils import Cluster

    from oesearch.distributed.dispatch import plan_workers

    with ray_address_record_restored() as wrote:
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
        wrote(cluster.address)
        ray.init(address=cluster.address, logging_level="ERROR")
        try:
            said, planned = [], []
            planner = threading.Thread(target=lambda: planned.append(plan_workers(None, 0.5, wait_seconds=120, log=said.append)))
            planner.start()
            time.sleep(3.0)
            assert planner.is_alive() and not planned, "nothing can host a worker yet: it waits"
            cluster.add_node(num_cpus=4, num_gpus=2)  # Ray starts nodes from the main thread only
            planner.join(timeout=120)
            assert planned[0] == (4, {"num_cpus": 1, "num_gpus": 0.5}, "gpu"), "2 GPUs / 0.5 each, 4 CPUs"
            assert said and "waiting for worker nodes" in said[0]
            assert plan_workers(None, 0.25) == (4, {"num_cpus": 1, "num_gpus": 0.25}, "gpu"), "8 shares, but 4 CPUs"
            assert plan_workers(12, 0.25)[0] == 12, "an explicit count may exceed the nodes: the rest wait for the autoscaler"
        finally:
            ray.shutdown()
            cluster.shutdown()
