"""The fitness worker: a Ray actor that holds one task on its device and trains candidates.

The normal training and test sets arrive once, through the object store, and
stay on the worker's device as uint8 pixels, normalised per batch.  A job carries only its
corpus image(s) and seed.
"""

from __future__ import annotations

import time
from typing import Any

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

__all__ = ["FitnessWorker", "FitnessWorkerBase"]


class _FitnessWorker(WorkerBase):
    """Trains candidates for one task on one device; the task is loaded once."""

    def __init__(self, task: OneVsRest, spec: WorkerSpec) -> None:
        super().__init__()
        info = method(spec.method)
        if info.clip and not isinstance(task, OneVsRest):
            raise ValueError(f"train.method {spec.method} prompts with the one normal class of a one-vs-rest task, "
                             f"got a {type(task).__name__}")
        self.task = PreparedTask.from_arrays(task.train, task.test, task.test_anomalous, self.device, spec.filter)
        self.objective = spec.objective(getattr(task, "class_name", None))
        if info.clip:  # load the model now, once per process, not inside a timed training
            clip = spec.clip or ClipSpec()
            cached_clip(clip.model, clip.weights, self.device)
        self.settings = spec.settings
        configure_device(self.device, spec.settings.cudnn_benchmark)
        # Candidates this worker can train at once: its share of free GPU memory by the memory model, 1 on CPU.
        share = float(self.assigned.get("GPU", 1) or 1)
        self.pack = 1
        if info.packable:
            per_candidate, reserve = candidate_bytes_for(self.task, self.settings, self.objective.head)
            self.pack = max(1, int(auto_pack(self.device, per_candidate=per_candidate, reserve=reserve)
                                   * min(share, 1.0)))
        self.max_pack: int | None = None  # K at most, once an out-of-memory error halved it (for the rest of the run)
        self.oom_halvings = 0

    def evaluate(self, job: Job, oe_images: np.ndarray) -> dict[str, Any]:
        """Train and score one job; a diverged training is a failed row, not an exception."""
        start = time.perf_counter()
        try:
            result = train_and_evaluate(self.task, oe_images, self.objective, self.settings, job.seed)
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
        return train_packed(self.task, [p[0] for p in payloads], self.objective, self.settings,
                            [job.seed for job in jobs])

    def packing(self) -> dict[str, int | None]:
        """The K it reports for ``run.pack: auto``, the cap an out-of-memory error set, and how often one did."""
        return {"pack": self.pack, "max_pack": self.max_pack, "oom_halvings": self.oom_halvings}


FitnessWorkerBase = _FitnessWorker  # subclass this (then wrap with ray.remote) to change how a job is evaluated
FitnessWorker = ray.remote(_FitnessWorker)
