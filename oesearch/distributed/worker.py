"""What every worker actor shares: its device, its identity, its thread count and its readiness answer."""

from __future__ import annotations

import os
import socket
from typing import Any

import ray
import torch

__all__ = ["WorkerBase", "assigned_device", "worker_identity"]


def assigned_device() -> tuple[torch.device, dict[str, float]]:
    """The device this worker process trains on (a GPU if Ray gave it one) and Ray's resources for it."""
    assigned = ray.get_runtime_context().get_assigned_resources() if ray.is_initialized() else {}
    return torch.device("cuda" if assigned.get("GPU") and torch.cuda.is_available() else "cpu"), assigned


def worker_identity() -> dict[str, str]:
    """Where this process runs: host:pid and the Ray node (for the journal and the tests)."""
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    return {"worker": f"{socket.gethostname()}:{os.getpid()}", "node": node[:12]}


class WorkerBase:
    """A worker's device and identity; subclasses load their data in ``__init__`` and answer ``evaluate``.

    The :class:`~oesearch.distributed.dispatch.Dispatcher` feeds a worker only once ``ready()`` has
    answered, so a subclass finishes loading before it returns from ``__init__``.
    """

    pack: int = 1  # jobs this worker trains in one call (see Dispatcher's ``pack``)

    def __init__(self) -> None:
        self.device, self.assigned = assigned_device()
        if self.device.type == "cpu" and ray.is_initialized():
            # One thread per reserved CPU: oversubscribing cores slows every worker.
            torch.set_num_threads(max(1, int(self.assigned.get("CPU", 1))))
        self.identity = worker_identity()

    def ready(self) -> dict[str, Any]:
        """Answered once the data is on the device; the dispatcher feeds only ready workers."""
        return {**self.identity, "pid": os.getpid(), "pack": self.pack}

    def stamp(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with where it ran: the device, host:pid and node."""
        return {**row, "device": str(self.device), **self.identity}
