"""Which Ray the search runs on, said in one line, and a private instance that dies with its driver.

The rule (Ray's own, so that ``ray submit`` and ``ray job submit`` need no flag):

1. ``--address`` / ``run.address``: ``local`` starts a private instance,
   ``auto`` or ``HOST:PORT`` joins that cluster;
2. else ``RAY_ADDRESS``;
3. else the cluster ``ray start`` last recorded on this machine
   (``/tmp/ray/ray_current_cluster``: what a head node started by
   ``ray up``/``ray start`` has, and what ``ray submit`` relies on);
4. else a private instance.

Joining is printed with where the address came from, so a run that joined a
cluster nobody meant it to is visible in its first lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import ray

__all__ = ["ClusterInfo", "ClusterLost", "connect", "cluster_info", "current_cluster"]

_WATCHDOG = Path(__file__).with_name("watchdog.py")


class ClusterLost(RuntimeError):
    """The Ray cluster stopped serving the run; the message says how to resume."""


@dataclass(frozen=True)
class ClusterInfo:
    address: str  # the GCS address
    joined: bool  # False: a private instance this driver started
    source: str  # where the address came from
    nodes: int
    cpus: float
    gpus: float

    def line(self) -> str:
        size = f"{self.nodes} node{'s' * (self.nodes != 1)}, {self.gpus:g} GPUs, {self.cpus:g} CPUs"
        if self.joined:
            return (f"ray: joined the cluster at {self.address} ({self.source}): {size}; "
                    "--address local runs on a private instance instead")
        return f"ray: started a private instance at {self.address} ({self.source}): {size}; it ends with this run"

    def where(self) -> str:
        return f"the Ray cluster at {self.address}" if self.joined else f"the private Ray instance at {self.address}"


def _target(address: str | None) -> tuple[str | None, str]:
    """(address to join, or None for a private instance; why), following the rule above."""
    from ray._private import services

    if address:
        if address == "local":
            return None, "--address local"
        how = "--address auto" if address == "auto" else "--address"
        return address, how
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return (None, "RAY_ADDRESS=local") if env == "local" else (env, "RAY_ADDRESS")
    recorded = services.find_bootstrap_address(None)
    if recorded:
        return recorded, "recorded by `ray start` in /tmp/ray/ray_current_cluster; no --address or RAY_ADDRESS given"
    return None, "no --address, RAY_ADDRESS or cluster started by `ray start` on this machine"


def connect(address: str | None, log=None) -> ClusterInfo | None:
    """Join or start Ray by the rule above; say which in one line through ``log``.

    Returns None when Ray was already initialised by the caller (a test, a notebook).
    """
    global _current
    if ray.is_initialized():
        return None
    target, source = _target(address)
    try:
        ray.init(address=target if target is not None else "local", log_to_driver=True, configure_logging=True,
                 logging_level="WARNING")
    except ConnectionError as err:
        raise ClusterLost(
            f"could not connect to the Ray cluster at {target} ({source}): {err}. If that cluster has shut down, "
            "run on a private instance with --address local, or clear the record with `ray stop`; otherwise "
            "check the address.") from None
    info = _current = cluster_info(joined=target is not None, source=source)
    if not info.joined:
        _start_watchdog()
    if log is not None:
        log(info.line())
    return info


def current_cluster() -> ClusterInfo | None:
    """What :func:`connect` joined or started in this process (None if Ray was started by the caller)."""
    if _current is not None and ray.is_initialized() and ray.get_runtime_context().gcs_address == _current.address:
        return _current
    return None


_current: ClusterInfo | None = None


def cluster_info(joined: bool, source: str) -> ClusterInfo:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    address = ray.get_runtime_context().gcs_address
    return ClusterInfo(address, joined, source, len(nodes), float(total.get("CPU", 0)), float(total.get("GPU", 0)))


def _start_watchdog() -> None:
    """A small process that kills this driver's private Ray instance if the driver dies without
    ``ray.shutdown`` (a SIGKILL): otherwise Ray's agents outlive it for minutes."""
    node = ray._private.worker._global_node
    roots = [str(p.process.pid) for procs in node.all_processes.values() for p in procs if p.process is not None]
    # The pipe's write end stays in this process only: its end of file is the driver's death.
    watchdog = subprocess.Popen([sys.executable, str(_WATCHDOG), str(os.getpid()), *roots], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    _watchdogs.append(watchdog)  # keeps the pipe open for the driver's lifetime


_watchdogs: list[subprocess.Popen] = []
