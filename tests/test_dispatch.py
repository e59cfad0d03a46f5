"""The dispatcher on its own, with small actor classes: what it does when workers cannot start."""

from __future__ import annotations

import pytest
import ray

from oesearch.search.dispatch import Dispatcher
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
