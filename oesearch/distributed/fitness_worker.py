"""The fitness worker: a Ray actor that holds its task(s) on its device and trains candidates.

The normal training and test sets arrive once, through the object store, and
stay on the worker's device as uint8 pixels, normalised per batch.  A job carries only its
corpus image(s), its seed and (in a campaign, where one worker serves many searches) its task.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Hashable, Mapping

import numpy as np
import ray
import torch

from oesearch.data.splits import OneVsRest
from oesearch.distributed.worker import WorkerBase
from oesearch.methods import method
from oesearch.search.fitness import Job
from oesearch.training import NonFiniteLossError, PreparedTask, train_and_evaluate
from oesearch.training.clip import ClipSpec, cached_clip
from oesearch.training.execution import configure_device
from oesearch.training.memory import halved
from oesearch.training.packed import auto_pack, candidate_bytes_for, train_packed
from oesearch.training.settings import WorkerSpec
from oesearch.training.types import Objective, TrainSettings

__all__ = ["FitnessWorker", "FitnessWorkerBase", "LoadedTask"]


@dataclass
class LoadedTask:
    """One task as a worker holds it: the data on its device, the objective, the settings, its K."""

    data: PreparedTask
    objective: Objective
    settings: TrainSettings
    pack: int = 1


class _FitnessWorker(WorkerBase):
    """Trains candidates of one task, or of several (a campaign's), on one device; each is loaded once.

    ``task`` and ``spec`` are one task's data and worker spec, or mappings from task id (``Job.task``)
    to them; tasks that share one data object (one normal class under two methods) share its copy on
    the device.
    """

    def __init__(self, task: OneVsRest | Mapping[Hashable, OneVsRest],
                 spec: WorkerSpec | Mapping[Hashable, WorkerSpec]) -> None:
        super().__init__()
        tasks = task if isinstance(task, Mapping) else {None: task}
        specs = spec if isinstance(spec, Mapping) else {None: spec}
        if set(tasks) != set(specs):
            raise ValueError(f"tasks {sorted(map(str, tasks))} and worker specs {sorted(map(str, specs))} differ")
        on_device: dict[tuple[int, Any], PreparedTask] = {}  # (id(task), filter) -> its data on the device
        test_on_device: dict[int, torch.Tensor] = {}  # id(test images) -> their one copy on the device
        self.tasks = {name: self._load(tasks[name], specs[name], on_device, test_on_device) for name in tasks}
        self.pack = min(t.pack for t in self.tasks.values())
        self.max_pack: int | None = None  # K at most, once an out-of-memory error halved it (for the rest of the run)
        self.oom_halvings = 0

    def _load(self, task: OneVsRest, spec: WorkerSpec, on_device: dict[tuple[int, Any], PreparedTask],
              test_on_device: dict[int, torch.Tensor]) -> LoadedTask:
        info = method(spec.method)
        if info.clip and not isinstance(task, OneVsRest):
            raise ValueError(f"train.method {spec.method} prompts with the one normal class of a one-vs-rest task, "
                             f"got a {type(task).__name__}")
        key = (id(task), spec.filter)
        if key not in on_device:
            prepared = PreparedTask.from_arrays(task.train, task.test, task.test_anomalous, self.device, spec.filter)
            # A campaign's one-vs-rest tasks of one dataset pass one test array: one copy of it on the device.
            shared = test_on_device.setdefault(id(task.test), prepared.test)
            on_device[key] = prepared if shared is prepared.test else dataclasses.replace(prepared, test=shared)
        loaded = LoadedTask(on_device[key], spec.objective(getattr(task, "class_name", None)), spec.settings)
        if info.clip:  # load the model now, once per process, not inside a timed training
            clip = spec.clip or ClipSpec()
            cached_clip(clip.model, clip.weights, self.device)
        configure_device(self.device, spec.settings.cudnn_benchmark)
        # Candidates this worker can train at once: its share of free GPU memory by the memory model, 1 on CPU.
        share = float(self.assigned.get("GPU", 1) or 1)
        if info.packable:
            per_candidate, reserve = candidate_bytes_for(loaded.data, loaded.settings, loaded.objective.head)
            loaded.pack = max(1, int(auto_pack(self.device, per_candidate=per_candidate, reserve=reserve)
                                     * min(share, 1.0)))
        return loaded

    def loaded(self, job: Job | None = None) -> LoadedTask:
        """The task ``job`` trains (without a job: the worker's only task)."""
        name = getattr(job, "task", None) if job is not None else None
        if name not in self.tasks:
            if job is None and len(self.tasks) == 1:
                return next(iter(self.tasks.values()))
            raise KeyError(f"this worker holds tasks {sorted(map(str, self.tasks))}, not {name!r}")
        return self.tasks[name]

    # The single task's parts, as the tests and subclasses that change one setting read them.
    @property
    def task(self) -> PreparedTask:
        return self.loaded().data

    @property
    def objective(self) -> Objective:
        return self.loaded().objective

    @property
    def settings(self) -> TrainSettings:
        return self.loaded().settings

    @settings.setter
    def settings(self, value: TrainSettings) -> None:
        self.loaded().settings = value

    def evaluate(self, job: Job, oe_images: np.ndarray) -> dict[str, Any]:
        """Train and score one job; a diverged training is a failed row, not an exception."""
        start = time.perf_counter()
        try:
            t = self.loaded(job)
            result = train_and_evaluate(t.data, oe_images, t.objective, t.settings, job.seed)
            outcome = {"auc": result.auc, "status": "ok", "reason": None}
        except NonFiniteLossError as err:
            outcome = {"auc": None, "status": "failed", "reason": f"non-finite loss: {err}"}
        return self.stamp(job.row(**outcome, seconds=round(time.perf_counter() - start, 4)))

    def evaluate_batch(self, jobs: list[Job], payloads: list[tuple[np.ndarray]]) -> list[dict[str, Any]]:
        """Train ``jobs`` as one packed training (K = len(jobs)); one row per job, in order.

        A candidate that diverged is a failed row of its own; the others are unaffected.
        ``seconds`` is the call's wall time divided by K (each job's share).
        """
        start = time.perf_counter()
        aucs, failures = self._train_in_packs(jobs, payloads)
        share = round((time.perf_counter() - start) / len(jobs), 4)
        rows = []
        for job, auc, failure in zip(jobs, aucs, failures):
            outcome = ({"auc": auc, "status": "ok", "reason": None} if failure is None
                       else {"auc": None, "status": "failed", "reason": f"non-finite loss: {failure}"})
            rows.append(self.stamp(job.row(**outcome, seconds=share)))
        return rows

    def _train_in_packs(self, jobs: list[Job], payloads: list[tuple[np.ndarray]]
                        ) -> tuple[list[float | None], list[str | None]]:
        """Train ``jobs`` as one packed training; an out-of-memory error halves K and retries.

        The retry trains the same jobs again, in packs of the halved K (no job retry is
        counted: nothing about them failed), and the halved K caps every later call of
        this worker (``max_pack``; the K it reports for ``run.pack: auto`` too).
        """
        aucs: list[float | None] = []
        failures: list[str | None] = []
        i = 0
        while i < len(jobs):
            k = min(len(jobs) - i, self.max_pack or len(jobs))
            try:
                result = self._train_packed(jobs[i : i + k], payloads[i : i + k])
            except torch.OutOfMemoryError:
                if k == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.max_pack = halved(k)
                self.pack = min(self.pack, self.max_pack)
                self.oom_halvings += 1
                continue
            aucs += result.aucs
            failures += result.failures
            i += k
        return aucs, failures

    def _train_packed(self, jobs: list[Job], payloads: list[tuple[np.ndarray]]):
        """One packed training of ``jobs`` (the OOM tests override this to inject the error)."""
        t = self.loaded(jobs[0])  # the dispatcher packs jobs of one task only
        return train_packed(t.data, [p[0] for p in payloads], t.objective, t.settings, [job.seed for job in jobs])

    def packing(self) -> dict[str, int | None]:
        """The K it reports for ``run.pack: auto``, the cap an out-of-memory error set, and how often one did."""
        return {"pack": self.pack, "max_pack": self.max_pack, "oom_halvings": self.oom_halvings}


FitnessWorkerBase = _FitnessWorker  # subclass this (then wrap with ray.remote) to change how a job is evaluated
FitnessWorker = ray.remote(_FitnessWorker)
