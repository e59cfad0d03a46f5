"""The benchmark worker: a Ray actor that holds the stores of every class and trains cells.

The stores arrive once, through the object store (``ray.put`` by the driver),
as read-only shared memory.  A cell carries only its identity; the worker
derives the cell's task and OE with the pure functions of
:mod:`oesearch.sweep.cells` and trains with the search's own trainer
(:func:`~oesearch.training.train_and_evaluate`).  The prepared tasks of the
last few classes stay on the device (cells arrive class by class).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
import ray

from oesearch.distributed.worker import WorkerBase
from oesearch.sweep.cells import BenchData, BenchSetup, Cell, class_data, oe_index
from oesearch.training import NonFiniteLossError, PreparedTask, train_and_evaluate
from oesearch.training.clip import cached_clip

__all__ = ["BenchmarkWorkerBase", "BenchmarkWorker"]

_TASKS_KEPT = 2  # prepared classes kept on the device


class BenchmarkWorkerBase(WorkerBase):
    """Trains benchmark cells on one device (a plain class; :data:`BenchmarkWorker` is its Ray actor)."""

    def __init__(self, data: BenchData, setup: BenchSetup) -> None:
        super().__init__()
        self.data = data
        self.setup = setup
        self._tasks: OrderedDict[tuple, tuple[PreparedTask, Any]] = OrderedDict()
        for spec in setup.specs.values():  # CLIP loads now, once per process, not inside a timed training
            if spec.clip is not None:
                cached_clip(spec.clip.model, spec.clip.weights, self.device)

    def prepared(self, cell: Cell) -> tuple[PreparedTask, Any]:
        """The cell's task on the device (normalised by its normal training images) and its OE pool."""
        spec = self.setup.specs[cell.method]
        key = (cell.class_index, spec.filter)
        if key not in self._tasks:
            task, pool = class_data(self.setup, self.data, cell.class_index)
            prepared = PreparedTask.from_arrays(task.train, task.test, task.test_anomalous, self.device, spec.filter)
            self._tasks[key] = (prepared, pool)
            while len(self._tasks) > _TASKS_KEPT:
                self._tasks.popitem(last=False)
        self._tasks.move_to_end(key)
        return self._tasks[key]

    def oe_images(self, cell: Cell, pool) -> np.ndarray:
        """The cell's OE: the whole pool for size ``all``, else the drawn subset."""
        index = oe_index(self.setup, pool, cell)
        return pool.images if index is None else np.ascontiguousarray(pool.images[index])

    def evaluate(self, cell: Cell) -> dict[str, Any]:
        """Train and score one cell; a diverged training is a failed row, not an exception."""
        start = time.perf_counter()
        spec = self.setup.specs[cell.method]
        task, pool = self.prepared(cell)
        oe = self.oe_images(cell, pool)
        objective = spec.objective(self.setup.prompt_name or cell.class_name)
        try:
            result = train_and_evaluate(task, oe, objective, spec.settings, cell.seed)
            outcome = {"auc": result.auc, "status": "ok", "reason": None}
        except NonFiniteLossError as err:
            outcome = {"auc": None, "status": "failed", "reason": f"non-finite loss: {err}"}
        return self.stamp(cell.row(**outcome, seconds=round(time.perf_counter() - start, 4)))


BenchmarkWorker = ray.remote(BenchmarkWorkerBase)
