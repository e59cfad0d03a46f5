"""The fitness worker's own logic, run in-process (Ray only hosts it as an actor)."""

from __future__ import annotations

import numpy as np
import pytest

from oesearch.data.embedded import load_digits_split, load_natural_patches
from oesearch.data.splits import one_vs_rest
from oesearch.distributed.fitness_worker import _FitnessWorker
from oesearch.training.settings import WorkerSpec
from oesearch.search.fitness import Job
from oesearch.training import TrainSettings

JOURNAL_FIELDS = {"purpose", "generation", "individual", "indices", "seed", "normal_class", "auc", "seconds",
                  "worker", "device", "status", "reason"}


@pytest.fixture(scope="module")
def task_and_corpus():
    task = one_vs_rest(load_digits_split("train"), load_digits_split("test"), 8)
    return task, load_natural_patches().images


def worker(task, lr: float) -> _FitnessWorker:
    return _FitnessWorker(task, WorkerSpec("hsc", "pseudo_huber", TrainSettings(epochs=2, lr=lr, milestones=(1,), batch_size=32)))


def test_a_job_is_deterministic_and_journal_ready(task_and_corpus) -> None:
    task, corpus = task_and_corpus
    job = Job(8, (123,), 5, "search", 0, 3)
    w = worker(task, 1e-2)
    first, second = w.evaluate(job, corpus[[123]]), w.evaluate(job, corpus[[123]])
    assert set(first) >= JOURNAL_FIELDS
    assert first["status"] == "ok" and 0.0 <= first["auc"] <= 1.0
    assert first["auc"] == second["auc"], "same job, same seed: same AUC"
    assert first["indices"] == [123] and first["generation"] == 0 and first["individual"] == 3
    other = w.evaluate(Job(8, (123,), 6, "search", 0, 3), corpus[[123]])
    assert other["auc"] != first["auc"], "another seed trains another model"


def test_a_diverging_training_is_a_failed_row_not_a_crash(task_and_corpus) -> None:
    task, corpus = task_and_corpus
    row = worker(task, 1e20).evaluate(Job(8, (7,), 1, "search", 2, 0), corpus[[7]])
    assert row["status"] == "failed" and row["auc"] is None
    assert row["reason"].startswith("non-finite loss")


def test_job_names_are_readable() -> None:
    assert Job(8, (123456,), 1, "search", 12, 37).name == "fitness[g12 i37 idx=123456 s1]"
    assert Job(8, (5, 9), 2, "validate", None, 0).name == "fitness[val i0 idx=5,9 s2]"
    assert Job(8, (9, 5), 2, "search", 1, 0).key == (8, (5, 9), 2)


@pytest.mark.parametrize("method", ["focal", "dsad", "dsvdd"])
def test_worker_trains_the_new_objectives(task_and_corpus, method: str) -> None:
    task, corpus = task_and_corpus
    spec = WorkerSpec(method, "pseudo_huber", TrainSettings(epochs=2, lr=1e-2, milestones=(1,), batch_size=32),
                      focal_gamma=1.0, focal_alpha=0.25)
    w = _FitnessWorker(task, spec)
    assert w.objective.name == method and w.pack == 1  # centre objectives never pack; CPU packs 1 anyway
    if method == "focal":
        assert (w.objective.gamma, w.objective.alpha) == (1.0, 0.25)
    row = w.evaluate(Job(8, (11,), 3, "search", 0, 0), corpus[[11]])
    assert row["status"] == "ok" and 0.0 <= row["auc"] <= 1.0
