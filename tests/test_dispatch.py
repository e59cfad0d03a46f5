"""The dispatcher on its own, with small actor classes: what it does when workers cannot start."""

from __future__ import annotations

import pytest
import ray

from oesearch.distributed.dispatch import Dispatcher
from oesearch.search.fitness import Job


@ray.remote
class NeverStarts:
    def __init__(self) -> None:
        raise RuntimeError("CUDA error: out of memory")

    def ready(self) -> dict:
        return {}


@ray.remote
class Echo:
    def ready(self) -> dict:
        return {}

    def evaluate(self, job: Job) -> dict:
        return job.row(auc=0.5, status="ok", reason=None, seconds=0.0)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_workers_that_never_start_give_a_clear_error_not_a_hang(local_ray) -> None:
    dispatcher = Dispatcher(NeverStarts, (), lambda job: (), 2, {"num_cpus": 0}, max_start_failures=2,
                            name="never-starts")
    with pytest.raises(RuntimeError, match="fail to start"):
        dispatcher.run([Job(0, (1,), 0, "search", 0, 0)], lambda row: None)
    assert dispatcher.replaced == 2, "each slot was given one more try before giving up"


def test_every_job_reaches_on_row_once_in_any_order(local_ray) -> None:
    jobs = [Job(0, (i,), s, "search", 0, i) for i in range(20) for s in (1, 2)]
    seen = []
    dispatcher = Dispatcher(Echo, (), lambda job: (), 3, {"num_cpus": 0}, name="echo")
    dispatcher.run(jobs, seen.append)
    dispatcher.shutdown()
    assert sorted((tuple(r["indices"]), r["seed"]) for r in seen) == sorted((j.indices, j.seed) for j in jobs)
    assert all(r["attempts"] == 1 for r in seen)


@ray.remote
class PackedEcho:
    """Packed calls with injected faults: job (0, seed 1) fails once; a call holding (5, seed 1) raises once."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()

    def ready(self) -> dict:
        return {"pack": 3}

    def evaluate(self, job: Job) -> dict:
        return job.row(auc=0.5, status="ok", reason=None, seconds=0.0, k=1)

    def evaluate_batch(self, jobs: list[Job], payloads: list[tuple]) -> list[dict]:
        keys = [(job.indices[0], job.seed) for job in jobs]
        if (5, 1) in keys and (5, 1) not in self.seen:
            self.seen.add((5, 1))
            raise RuntimeError("injected packed failure")
        rows = []
        for job, key in zip(jobs, keys):
            failed = key == (0, 1) and key not in self.seen
            self.seen.add(key)
            rows.append(job.row(auc=None if failed else 0.5, status="failed" if failed else "ok",
                                reason="non-finite loss" if failed else None, seconds=0.0, k=len(jobs)))
        return rows


def test_packed_calls_keep_exactly_once_and_retry_per_job(local_ray) -> None:
    jobs = [Job(0, (i,), s, "search", 0, i) for i in range(10) for s in (1, 2)]
    seen = []
    # pack=None: each worker's own K (3, from ready()); one worker, so the packing is deterministic.
    dispatcher = Dispatcher(PackedEcho, (), lambda job: (job.indices[0],), 1, {"num_cpus": 0}, name="packed", pack=None)
    dispatcher.run(jobs, seen.append)
    dispatcher.shutdown()
    assert sorted((tuple(r["indices"]), r["seed"]) for r in seen) == sorted((j.indices, j.seed) for j in jobs)
    assert all(r["status"] == "ok" for r in seen)
    assert max(r["k"] for r in seen) == 3 and all(r["k"] <= 3 for r in seen)
    attempts = {(r["indices"][0], r["seed"]): r["attempts"] for r in seen}
    assert attempts[(0, 1)] == 2 and attempts[(0, 2)] == 1  # the failed row retried its job only
    # Calls: [(0,1) (0,2) (1,1)], [(1,2) (2,1) (2,2)] (queued behind), then the retried (0,1) goes
    # first: [(0,1) (3,1) (3,2)], [(4,1) (4,2) (5,1)] raises: each of its three jobs is retried once.
    assert {key for key, a in attempts.items() if a == 2} == {(0, 1), (4, 1), (4, 2), (5, 1)}
    assert dispatcher.retries == 4


def test_real_workers_pack_jobs_and_match_unpacked_trainings(local_ray) -> None:
    from oesearch.data.embedded import load_digits_split, load_natural_patches
    from oesearch.data.splits import one_vs_rest
    from oesearch.distributed.fitness_worker import FitnessWorker
    from oesearch.training.settings import WorkerSpec
    from oesearch.training import PreparedTask, TrainSettings, make_objective, train_and_evaluate

    task = one_vs_rest(load_digits_split("train"), load_digits_split("test"), 8)
    corpus = load_natural_patches().images
    spec = WorkerSpec("hsc", "pseudo_huber", TrainSettings(epochs=2, lr=1e-2, milestones=(1,), batch_size=32))
    jobs = [Job(8, (i,), s, "search", 0, i) for i in (3, 500, 4000) for s in (11, 12)]
    payload = lambda job: (corpus[list(job.indices)],)  # noqa: E731
    seen = []
    dispatcher = Dispatcher(FitnessWorker, (ray.put(task), spec), payload, 2, {"num_cpus": 1}, name="real-packed", pack=3)
    dispatcher.run(jobs, seen.append)
    dispatcher.shutdown()
    assert len(seen) == len(jobs) and all(r["status"] == "ok" and r["attempts"] == 1 for r in seen)
    assert {r["worker"] for r in seen} and all(r["seconds"] > 0 for r in seen)
    prepared = PreparedTask.from_arrays(task.train, task.test, task.test_anomalous)
    for row in seen:  # each packed candidate against its own unpacked training, in this process
        single = train_and_evaluate(prepared, corpus[row["indices"]], make_objective("hsc"), spec.settings, row["seed"])
        assert abs(row["auc"] - single.auc) < 0.01, (row, single.auc)


def test_a_search_with_run_pack_trains_its_jobs_packed(local_ray, tmp_path, cache_dir) -> None:
    from collections import Counter

    from conftest import tiny_config
    from oesearch.config import config_from_dict
    from oesearch.results import RunDir
    from oesearch.experiments.search import prepare, run_search

    config = config_from_dict(tiny_config(cache_dir, population=4, generations=1)
                              | {"run": {"workers": 1, "seed": 7, "pack": 4}})
    data = prepare(config, log=lambda _: None)
    rundir = RunDir.create(tmp_path, "packed")
    run_search(config, rundir, data=data, log=lambda _: None, progress=False)
    rows = rundir.journal_rows()
    assert rows and all(r["status"] == "ok" and r["attempts"] == 1 for r in rows)
    gen0 = [r for r in rows if r["purpose"] == "search" and r["generation"] == 0]
    assert len(gen0) == 8  # 4 individuals x 2 seeds, each journaled once
    # One worker, K = 4: generation 0 is two packed calls, whose rows share the call's time per job.
    assert max(Counter(r["seconds"] for r in gen0).values()) >= 4


@ray.remote
class TaskRecorder:
    """Packs 4; each row says which tasks its call held."""

    def ready(self) -> dict:
        return {"pack": 4}

    def evaluate(self, job: Job) -> dict:
        return job.row(auc=0.5, status="ok", reason=None, seconds=0.0, call=[(job.task, job.normal_class)])

    def evaluate_batch(self, jobs: list[Job], payloads: list[tuple]) -> list[dict]:
        call = [(j.task, j.normal_class) for j in jobs]
        return [job.row(auc=0.5, status="ok", reason=None, seconds=0.0, call=call) for job in jobs]


def test_a_shared_pool_packs_jobs_of_one_task_across_searches(local_ray) -> None:
    """Searches a and b share task t1, c has t2: a packed call holds one task, and a's and b's jobs share calls."""
    from oesearch.distributed.pool import SharedPool

    dispatcher = Dispatcher(TaskRecorder, (), lambda job: (), 1, {"num_cpus": 0}, name="tasks", pack=None)
    pool = SharedPool(dispatcher, "cpu", "test")
    rows: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
    task = {"a": "t1", "b": "t1", "c": "t2"}
    owner = {"a": 0, "b": 1, "c": 2}  # the normal class tells the searches' jobs apart

    def search(name: str):
        def body() -> int:
            run_jobs = pool.run_jobs_for(name)
            for generation in range(2):  # two barriers each
                run_jobs([Job(owner[name], (i,), generation, "search", generation, i, task[name]) for i in range(6)],
                         rows[name].append)
            return len(rows[name])
        return body

    assert pool.run({name: search(name) for name in rows}) == {"a": 12, "b": 12, "c": 12}
    dispatcher.shutdown()
    for name, got in rows.items():
        assert sorted((r["generation"], r["indices"][0]) for r in got) == [(g, i) for g in range(2) for i in range(6)]
        assert all({t for t, _ in r["call"]} == {task[name]} for r in got), "a call holds jobs of one task"
    assert max(len(r["call"]) for r in rows["a"] + rows["b"]) == 4
    assert any({c for _, c in r["call"]} == {0, 1} for r in rows["a"]), "a and b, of one task, shared a call"


def test_a_search_that_raises_stops_alone_and_the_others_finish(local_ray) -> None:
    from oesearch.distributed.pool import SharedPool

    dispatcher = Dispatcher(Echo, (), lambda job: (), 2, {"num_cpus": 0}, name="raises")
    pool = SharedPool(dispatcher, "cpu", "test")

    def good() -> int:
        seen: list[dict] = []
        for generation in range(3):
            pool.run_jobs_for("good")([Job(0, (i,), 1, "search", generation, i) for i in range(5)], seen.append)
        return len(seen)

    def bad() -> None:
        pool.run_jobs_for("bad")([Job(0, (9,), 1, "search", 0, 0)], lambda row: None)
        raise ValueError("this search's own bug")

    results = pool.run({"good": good, "bad": bad})
    dispatcher.shutdown()
    assert results["good"] == 15
    assert isinstance(results["bad"], ValueError) and str(results["bad"]) == "this search's own bug"
