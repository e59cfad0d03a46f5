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

from oesearch.data.splits import OneVsRest
from oesearch.distributed.worker import WorkerBase
from oesearch.methods import method
from oesearch.search.fitness import Job
from oesearch.training import NonFiniteLossError, PreparedTask, train_and_evaluate
from oesearch.training.clip import ClipSpec, cached_clip
from oesearch.training.packed import auto_pack, train_packed
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
        # Candidates this worker can train at once: its share of free GPU memory, 1 on CPU.
        share = float(self.assigned.get("GPU", 1) or 1)
        self.pack = max(1, int(auto_pack(self.device) * min(share, 1.0))) if info.packable else 1

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
        result = train_packed(self.task, [p[0] for p in payloads], self.objective, self.settings,
                              [job.seed for job in jobs])
        share = round((time.perf_counter() - start) / len(jobs), 4)
        rows = []
        for job, auc, failure in zip(jobs, result.aucs, result.failures):
            outcome = ({"auc": auc, "status": "ok", "reason": None} if failure is None
                       else {"auc": None, "status": "failed", "reason": f"non-finite loss: {failure}"})
            rows.append(self.stamp(job.row(**outcome, seconds=share)))
        return rows


FitnessWorkerBase = _FitnessWorker  # subclass this (then wrap with ray.remote) to change how a job is evaluated
FitnessWorker = ray.remote(_FitnessWorker)
