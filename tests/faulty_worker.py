"""A fitness worker with real faults injected for chosen corpus indices (for the fault tests).

For ``raise_on`` the evaluation raises; for ``nan_on`` the real training runs
with a learning rate that makes its loss diverge; for ``hang_on`` it blocks
until the file ``release`` exists, which the test creates only after the run:
a hang that no amount of load can be mistaken for.  Every other job is the
real evaluation.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import ray

from oesearch.distributed.fitness_worker import FitnessWorkerBase


def faulty_worker_class(raise_on: set[int], nan_on: set[int], hang_on: set[int], release: Path | None = None):
    class FaultyWorker(FitnessWorkerBase):
        def evaluate(self, job, oe_images):
            first = job.indices[0]
            if first in raise_on:
                raise RuntimeError(f"injected failure for index {first}")
            if first in hang_on:
                while release is None or not Path(release).exists():  # blocks until the test says so
                    time.sleep(0.2)
                raise RuntimeError(f"hang for index {first} released by the test")
            if first in nan_on:
                normal_settings = self.settings
                self.settings = dataclasses.replace(normal_settings, lr=1e20)
                try:
                    return super().evaluate(job, oe_images)
                finally:
                    self.settings = normal_settings
            return super().evaluate(job, oe_images)

    return ray.remote(FaultyWorker)


def oom_worker_class(max_pack: int):
    """A worker whose packed trainings of more than ``max_pack`` jobs raise PyTorch's out-of-memory error.

    Every other packed training is the real one; ``attempts()`` lists the K of every packed call it tried.
    """

    class OomWorker(FitnessWorkerBase):
        tried: list[int]

        def _train_packed(self, jobs, payloads):
            self.__dict__.setdefault("tried", []).append(len(jobs))
            if len(jobs) > max_pack:
                import torch

                raise torch.OutOfMemoryError(f"injected: {len(jobs)} candidates do not fit (at most {max_pack})")
            return super()._train_packed(jobs, payloads)

        def attempts(self) -> list[int]:
            return list(self.__dict__.get("tried", []))

    return OomWorker
