"""Fitness evaluation on Ray: long-lived workers that hold the data, fed through ``ray.wait``.

Each :class:`FitnessWorker` actor receives the one-vs-rest task once (through
the object store) and keeps it on its device as normalised tensors.  A job
carries only its corpus image(s) and seed.  The :class:`Dispatcher` keeps every
worker busy with a small queue of jobs each, consumes results as they finish,
and resubmits a job whose worker died, a bounded number of times.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from oesearch.data.splits import OneVsRest
from oesearch.search.fitness import Job
from oesearch.training import NonFiniteLossError, PreparedTask, TrainSettings, make_objective, train_and_evaluate

__all__ = ["WorkerSpec", "FitnessWorker", "Dispatcher", "connect"]

_IN_FLIGHT_PER_WORKER = 2  # one running, one queued: no idle gap between jobs


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray instance."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, log_to_driver=True, configure_logging=True, logging_level="WARNING")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs besides the data: how to train and score."""

    method: str
    hsc_radial: str
    settings: TrainSettings


class _FitnessWorker:
    """Trains candidates for one task on one device; the task is loaded once."""

    def __init__(self, task: OneVsRest, spec: WorkerSpec) -> None:
        import torch

        assigned = ray.get_runtime_context().get_assigned_resources() if ray.is_initialized() else {}
        self.device = torch.device("cuda" if assigned.get("GPU") and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            # One thread per reserved CPU: oversubscribing cores slows every worker.
            torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
        self.task = PreparedTask.from_arrays(task.train, task.test, task.test_anomalous, self.device)
        self.objective = make_objective(spec.method, spec.hsc_radial)
        self.settings = spec.settings
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def evaluate(self, job: Job, oe_images: np.ndarray) -> dict[str, Any]:
        """Train and score one job; a diverged training is a failed row, not an exception."""
        start = time.perf_counter()
        try:
            result = train_and_evaluate(self.task, oe_images, self.objective, self.settings, job.seed)
            outcome = {"auc": result.auc, "status": "ok", "reason": None}
        except NonFiniteLossError as err:
            outcome = {"auc": None, "status": "failed", "reason": f"non-finite loss: {err}"}
        return job.row(
            **outcome,
            seconds=round(time.perf_counter() - start, 4),
            worker=self.worker,
            device=str(self.device),
        )


FitnessWorker = ray.remote(_FitnessWorker)


class Dispatcher:
    """Runs jobs on a pool of :class:`FitnessWorker` actors and hands back rows as they finish."""

    def __init__(
        self,
        task: OneVsRest,
        spec: WorkerSpec,
        corpus_images: np.ndarray,
        workers: int | None = None,
        gpus_per_worker: float = 0.25,
        max_retries: int = 2,
        name: str = "oesearch",
    ) -> None:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        if gpus > 0:
            count = workers or max(1, int(gpus / gpus_per_worker))
            options: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus_per_worker}
        else:
            count = workers or max(1, int(resources.get("CPU", 1)))
            options = {"num_cpus": 1}
        self.device_kind = "gpu" if gpus > 0 else "cpu"
        self.corpus_images = corpus_images
        self.max_retries = max_retries
        self._task_ref = ray.put(task)  # one copy in the object store, shared by every worker
        self._spec = spec
        self._options = options
        self._name = name
        self.replaced = 0
        self.workers = [self._start_worker(i) for i in range(count)]

    def _start_worker(self, slot: int) -> ray.actor.ActorHandle:
        label = f"{self._name}-worker-{slot}" + (f"-r{self.replaced}" if self.replaced else "")
        return FitnessWorker.options(name=label, **self._options).remote(self._task_ref, self._spec)

    def run(self, jobs: Iterable[Job], on_row: Callable[[dict[str, Any]], None]) -> None:
        """Evaluate ``jobs``, calling ``on_row`` with each finished row as soon as it arrives."""
        pending = deque(jobs)
        in_flight: dict[ray.ObjectRef, tuple[Job, int, int, Any]] = {}  # ref -> (job, slot, attempt, actor)
        load = [0] * len(self.workers)

        def submit(job: Job, attempt: int) -> None:
            w = min(range(len(self.workers)), key=load.__getitem__)
            oe = np.ascontiguousarray(self.corpus_images[list(job.indices)])
            ref = self.workers[w].evaluate.options(name=job.name).remote(job, oe)
            in_flight[ref] = (job, w, attempt, self.workers[w])
            load[w] += 1

        def fill() -> None:
            while pending and min(load) < _IN_FLIGHT_PER_WORKER:
                submit(pending.popleft(), 0)

        fill()
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            job, w, attempt, actor = in_flight.pop(ref)
            load[w] -= 1
            try:
                row = ray.get(ref)
            except (RayActorError, RayTaskError) as err:
                if isinstance(err, RayActorError) and self.workers[w] is actor:
                    # The worker process died: start a fresh one in its slot.
                    self.replaced += 1
                    self.workers[w] = self._start_worker(w)
                if attempt < self.max_retries:
                    submit(job, attempt + 1)
                    continue
                row = job.row(auc=None, status="failed", reason=f"{type(err).__name__} after {attempt + 1} attempts: {err}"[:2000],
                              seconds=None, worker=None, device=None)
            row["attempts"] = attempt + 1
            on_row(row)
            fill()

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
