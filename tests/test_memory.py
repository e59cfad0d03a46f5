"""Packing sizes itself from evidence: the memory model against measured peaks, and an OOM that halves K."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import ray
import torch

import faulty_worker
from conftest import tiny_config
from oesearch.config import config_from_dict
from oesearch.distributed.dispatch import Dispatcher
from oesearch.search.fitness import Job
from oesearch.experiments.search import prepare
from oesearch.training.settings import worker_spec
from oesearch.training import PreparedTask, TrainSettings, make_objective
from oesearch.training.memory import COMPUTE_CAP, candidate_bytes, measured_peak_bytes, pack_size, scoring_chunk
from oesearch.training.packed import train_packed

rng = np.random.default_rng(11)


def _cifar_sized_task(n: int = 128, n_test: int = 48) -> PreparedTask:
    images = rng.integers(0, 256, size=(n + n_test, 32, 32, 3)).astype(np.uint8)
    anomalous = np.r_[np.zeros(n_test // 2, bool), np.ones(n_test - n_test // 2, bool)]
    return PreparedTask.from_arrays(images[:n], images[n:], anomalous)


TASK = _cifar_sized_task()


@pytest.mark.parametrize("k, batch, dedup", [(1, 64, False), (4, 64, False), (4, 64, True)])
def test_memory_model_within_25_percent_of_the_measured_peak(k: int, batch: int, dedup: bool) -> None:
    """A whole packed training (build, steps, test pass) on the CPU, measured by PyTorch's memory profiler."""
    settings = TrainSettings(epochs=1, batch_size=batch, milestones=(), dedup=dedup)
    oes = [rng.integers(0, 256, size=(1, 32, 32, 3)).astype(np.uint8) for _ in range(k)]
    objective = make_objective("hsc")
    peak = measured_peak_bytes(lambda: train_packed(TASK, oes, objective, settings, list(range(k))))
    rows = batch + 1 if dedup else 2 * batch  # one OE image: one distinct OE row per step
    model = k * candidate_bytes(TASK.image_shape, rows, test_rows=min(len(TASK.test), scoring_chunk(k))).total
    assert 0.75 * peak <= model <= 1.25 * peak, (model / 2**20, peak / 2**20)


def test_pack_size_caps() -> None:
    gib = 2**30
    assert pack_size(100 * gib, 400 * 2**20) == COMPUTE_CAP  # memory would allow ~200: compute saturates first
    assert pack_size(100 * gib, 400 * 2**20, jobs=5) == 5
    assert pack_size(1 * gib, 400 * 2**20) == 2  # 80% of 1 GiB at 400 MiB each
    assert pack_size(0, 400 * 2**20) == 1
    assert scoring_chunk(1) == 1024 and scoring_chunk(8) == 128 and scoring_chunk(4096) == 1


@pytest.fixture(scope="module")
def search_data(cache_dir: Path):
    config = config_from_dict(tiny_config(cache_dir) | {"train": {"epochs": 1, "milestones": [1], "batch_size": 32}})
    return config, prepare(config, log=lambda _: None)


def _jobs(config, n: int) -> list[Job]:
    return [Job(config.data.normal_class, (i,), 100 + i, "search", 0, i) for i in range(n)]


def test_an_oom_halves_k_in_the_worker_and_keeps_it(search_data) -> None:
    config, data = search_data
    threads = torch.get_num_threads()
    try:
        worker = faulty_worker.oom_worker_class(max_pack=2)(data.task, worker_spec(config))
    finally:
        torch.set_num_threads(threads)
    jobs = _jobs(config, 6)
    payloads = [(data.corpus.images[list(j.indices)],) for j in jobs]
    rows = worker.evaluate_batch(jobs[:4], payloads[:4])
    assert [r["indices"] for r in rows] == [[0], [1], [2], [3]] and all(r["status"] == "ok" for r in rows)
    assert worker.attempts() == [4, 2, 2] and worker.packing() == {"pack": 1, "max_pack": 2, "oom_halvings": 1}
    rows = worker.evaluate_batch(jobs[4:], payloads[4:])  # the halved K is remembered: no second OOM
    assert [r["indices"] for r in rows] == [[4], [5]] and worker.attempts() == [4, 2, 2, 2]


def test_an_oom_through_the_dispatcher_completes_every_job_once_without_a_retry(search_data) -> None:
    config, data = search_data
    ray.cloudpickle.register_pickle_by_value(faulty_worker)  # workers cannot import the tests folder
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", num_cpus=1)
    try:
        images = data.corpus.images
        dispatcher = Dispatcher(ray.remote(faulty_worker.oom_worker_class(max_pack=2)), (ray.put(data.task),
                                worker_spec(config)), lambda job: (np.ascontiguousarray(images[list(job.indices)]),),
                                count=1, options={"num_cpus": 1}, max_retries=2, pack=4)
        rows: list[dict] = []
        jobs = _jobs(config, 8)
        dispatcher.run(jobs, rows.append)
        actor = dispatcher.slots[0].actor
        packing, attempts = ray.get(actor.packing.remote()), ray.get(actor.attempts.remote())
        dispatcher.shutdown()
    finally:
        ray.shutdown()
    assert sorted(r["indices"][0] for r in rows) == list(range(8))  # every job once
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in rows)
    assert dispatcher.retries == 0 and dispatcher.replaced == 0
    assert packing == {"pack": 1, "max_pack": 2, "oom_halvings": 1}  # pack: CPU's auto K
    assert attempts[0] == 4 and all(k <= 2 for k in attempts[1:]) and sum(attempts[1:]) == 8


def test_one_worker_per_gpu_by_default_once_packing_is_on() -> None:
    assert config_from_dict({}).run.gpus_per_worker == 0.25
    assert config_from_dict({"run": {"pack": "auto"}}).run.gpus_per_worker == 1.0
    assert config_from_dict({"run": {"pack": 8}}).run.gpus_per_worker == 1.0
    assert config_from_dict({"run": {"pack": "auto", "gpus_per_worker": 0.5}}).run.gpus_per_worker == 0.5


def test_tf32_with_compile_is_refused_with_the_reason() -> None:
    from oesearch.config import ConfigError

    with pytest.raises(ConfigError, match="pytorch#166387"):
        config_from_dict({"train": {"precision": "tf32", "compile": True}})
    with pytest.raises(ValueError, match="pytorch#166387"):
        TrainSettings(precision="tf32", compile=True)
    assert config_from_dict({"train": {"precision": "tf32"}}).train.dedup  # dedup is on by default


def test_the_test_pass_is_a_fixed_cost_not_one_per_candidate() -> None:
    from oesearch.training.packed import candidate_bytes_for

    settings = TrainSettings(batch_size=64)
    per, reserve = candidate_bytes_for(TASK, settings, head=False)
    estimate = candidate_bytes(TASK.image_shape, 65, 0)  # one OE image, de-duplicated: 64 + 1 rows
    assert per == estimate.state + estimate.train_step
    assert reserve == candidate_bytes(TASK.image_shape, 0, len(TASK.test)).test_pass
    per_dup, _ = candidate_bytes_for(TASK, TrainSettings(batch_size=64, dedup=False), head=False)
    assert per_dup > per  # the duplicated batch keeps twice the rows' activations
