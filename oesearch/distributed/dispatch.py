"""Evaluation on Ray: a pool of long-lived worker actors fed through ``ray.wait``.

The :class:`Dispatcher` keeps every *ready* worker busy with a short queue of
jobs, consumes results as they finish, and survives faults without losing or
double-counting an evaluation:

- a worker process or its node dies: the worker is replaced in its slot, the
  job it was running is retried, the jobs queued behind it are resubmitted;
- an evaluation raises, or returns a failed row (a NaN loss): it is retried;
- an evaluation runs past ``eval_timeout``: its worker is killed and replaced,
  and the job retried.

Every job is retried at most ``max_retries`` times; one that still fails is
handed back as a failed row with its last reason.  Each job reaches ``on_row``
exactly once.  Any actor class with ``ready()`` and ``evaluate(job, *payload)``
can be dispatched (the benchmarks use a sleeping one), and any job that has a
``name`` and a ``failed_row()`` (:class:`DispatchJob`): the search's fitness
:class:`~oesearch.search.fitness.Job`, or a benchmark :class:`~oesearch.sweep.cells.Cell`.
The dispatcher reads only a row's ``status`` and ``reason`` and adds ``attempts``;
what else a row holds is the job's business.

With ``pack`` K > 1 (or ``None``: the K each worker reports in ``ready()``),
up to K pending jobs go to a worker as one ``evaluate_batch(jobs, payloads)``
call that trains them as one packed program.  A packed call that raises, hangs
or loses its worker retries each of its jobs; a failed row retries only its
job.  With K = 1 every call is one ``evaluate``, exactly as without packing.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Protocol

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from oesearch.distributed.scheduler import FifoQueue, JobQueue

__all__ = ["DispatchJob", "Dispatcher", "WorkersLost", "plan_workers"]

log = logging.getLogger(__name__)

IN_FLIGHT_PER_WORKER = 2  # one running, one queued: no idle gap between jobs
_STALL_LOG_SECONDS = 60.0  # how often to say so while no worker is ready (e.g. the autoscaler is adding nodes)
_POLL_SECONDS = 0.02  # while a campaign's searches may add jobs: how soon a free worker sees them


def plan_workers(workers: int | None, gpus_per_worker: float, wait_seconds: float = 900.0,
                 log: Callable[[str], None] = print) -> tuple[int, dict[str, Any], str]:
    """How many workers, with which resource request, and on what kind of device.

    Without an explicit count, it is what the live nodes can host *at once*: per
    node, GPU shares limited by its CPUs (each worker holds one CPU).  An
    explicit count larger than that leaves the rest pending, which is how an
    autoscaling cluster is asked for more nodes.  While no node can host a
    worker at all (a CPU-only head whose GPU workers are still booting), it
    waits for one, up to ``wait_seconds``, so that the device kind is known.
    """
    deadline = time.monotonic() + wait_seconds
    said = False
    while True:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        has_gpu = any(r.get("GPU", 0) > 0 for r in nodes)
        if has_gpu:
            options: dict[str, Any] = {"num_cpus": 1, "num_gpus": gpus_per_worker}
            fit = sum(min(int(r.get("GPU", 0) / gpus_per_worker + 1e-9), int(r.get("CPU", 0))) for r in nodes)
        else:
            options = {"num_cpus": 1}
            fit = sum(int(r.get("CPU", 0)) for r in nodes)
        if fit > 0:
            return workers or fit, options, "gpu" if has_gpu else "cpu"
        if time.monotonic() > deadline:
            raise RuntimeError(f"no node of the Ray cluster can host a worker after {wait_seconds:.0f}s "
                               "(the head has no CPUs for workers, and no worker node joined)")
        if not said:
            log("waiting for worker nodes to join the cluster (no node can host a worker yet)")
            said = True
        time.sleep(2.0)


class WorkersLost(RuntimeError):
    """No worker can be started any more (the cluster is gone or has no room)."""


class DispatchJob(Protocol):
    """What the dispatcher needs of a job: a label for the dashboard and the logs, and its row."""

    @property
    def name(self) -> str: ...

    def failed_row(self) -> dict[str, Any]:
        """The row of this job when it failed without an answer (``status`` failed; the dispatcher sets ``reason``)."""
        ...



@dataclass(eq=False)
class _Flight:
    job: DispatchJob  # for a packed call: its first job (names it in logs)
    attempt: int  # 0 for the first try
    ref: ray.ObjectRef
    slot: int
    batch: Optional[list[tuple[DispatchJob, int]]] = None  # a packed call's (job, attempt) pairs; None: one job

    @property
    def items(self) -> list[tuple[DispatchJob, int]]:
        return self.batch if self.batch is not None else [(self.job, self.attempt)]


@dataclass(eq=False)
class _Slot:
    actor: Any
    ready_ref: Optional[ray.ObjectRef]  # pending readiness probe; None once ready
    queue: deque = field(default_factory=deque)  # flights in submission order; the head is running
    head_since: float = 0.0  # when the head job started running (as the driver sees it)
    info: dict = field(default_factory=dict)  # what ready() answered: node, pid
    start_failures: int = 0
    retired: bool = False  # failed to start too often while others work: left empty

    @property
    def usable(self) -> bool:
        return self.ready_ref is None and not self.retired


class Dispatcher:
    """Runs jobs on a pool of worker actors and hands back rows as they finish."""

    def __init__(
        self,
        actor_class: Any,
        actor_args: tuple,
        payload: Callable[[DispatchJob], tuple],
        count: int,
        options: dict[str, Any],
        max_retries: int = 2,
        eval_timeout: float | None = None,
        name: str = "oesearch",
        max_start_failures: int = 3,
        pack: int | None = 1,
    ) -> None:
        self.actor_class = actor_class
        self.actor_args = actor_args
        self.payload = payload
        self.options = options
        self.max_retries = max_retries
        self.eval_timeout = eval_timeout
        self.name = name
        self.max_start_failures = max_start_failures
        self.pack = pack
        self.replaced = 0  # workers started to replace dead or hung ones
        self.retries = 0  # job attempts beyond the first
        self.slots = [self._new_slot(i) for i in range(count)]

    # --- workers ---------------------------------------------------------------------------
    def _new_slot(self, i: int, start_failures: int = 0) -> _Slot:
        label = f"{self.name}-worker-{i}" + (f"-r{self.replaced}" if self.replaced else "")
        actor = self.actor_class.options(name=label, **self.options).remote(*self.actor_args)
        return _Slot(actor=actor, ready_ref=actor.ready.remote(), start_failures=start_failures)

    def _replace(self, i: int, kill: bool, start_failed: bool = False) -> None:
        old = self.slots[i]
        if kill:
            ray.kill(old.actor, no_restart=True)
        failures = old.start_failures + 1 if start_failed else 0
        if failures >= self.max_start_failures:
            if not any(s.usable for s in self.slots):
                raise WorkersLost(f"workers fail to start ({failures} times in a row); see the worker logs above")
            log.warning("worker slot %d failed to start %d times; going on without it", i, failures)
            old.retired, old.ready_ref = True, None
            return
        self.replaced += 1
        self.slots[i] = self._new_slot(i, failures)

    def wait_ready(self, timeout: float | None = None) -> int:
        """Block until every worker is ready (or ``timeout``); return how many are."""
        probes = [s.ready_ref for s in self.slots if s.ready_ref is not None]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=timeout)
        for i, slot in enumerate(self.slots):
            if slot.ready_ref in ready:
                self._on_ready(i)
        return self.ready_count

    def _on_ready(self, i: int) -> None:
        slot = self.slots[i]
        try:
            slot.info = ray.get(slot.ready_ref)
            slot.ready_ref = None
        except RayError as err:
            log.warning("worker %d failed to start (%s); starting another", i, type(err).__name__)
            self._replace(i, kill=False, start_failed=True)

    def _pack_of(self, slot: _Slot) -> int:
        return self.pack if self.pack is not None else max(1, int(slot.info.get("pack", 1)))

    @property
    def ready_count(self) -> int:
        return sum(s.usable for s in self.slots)

    # --- the loop ----------------------------------------------------------------------------
    def run(self, jobs: Iterable[DispatchJob], on_row: Callable[[dict[str, Any]], None]) -> None:
        """Evaluate ``jobs``, calling ``on_row`` once per job as soon as its final row exists."""
        self.serve(FifoQueue(jobs, on_row))

    def serve(self, queue: JobQueue) -> None:
        """Run ``queue``'s jobs until it is empty and closed; each final row goes to ``queue.finished``.

        While the queue is open (a campaign's searches are still adding generations), a free worker
        takes new jobs within :data:`_POLL_SECONDS` of their arrival.
        """
        pending = queue
        flights: dict[ray.ObjectRef, _Flight] = {}
        last_progress = time.monotonic()

        def submit() -> bool:
            usable = [i for i, s in enumerate(self.slots) if s.usable]
            i = min(usable, key=lambda i: len(self.slots[i].queue))
            slot = self.slots[i]
            k = self._pack_of(slot)
            if k > 1:  # in a generation's tail, spread the rest over the idle workers
                idle = sum(1 for j in usable if not self.slots[j].queue) or len(usable)
                k = min(k, len(pending), max(1, math.ceil(len(pending) / idle)))
            batch = pending.take(k)
            if not batch:  # another thread's search closed and dropped its jobs
                return False
            if len(batch) == 1:
                job, attempt = batch[0]
                ref = slot.actor.evaluate.options(name=job.name).remote(job, *self.payload(job))
                flight = _Flight(job, attempt, ref, i)
            else:
                jobs = [job for job, _ in batch]
                ref = slot.actor.evaluate_batch.options(name=f"packed{len(jobs)}:{jobs[0].name}").remote(
                    jobs, [self.payload(job) for job in jobs])
                flight = _Flight(jobs[0], batch[0][1], ref, i, batch=batch)
            if not slot.queue:
                slot.head_since = time.monotonic()
            slot.queue.append(flight)
            flights[ref] = flight
            return True

        def fill() -> None:
            # Idle workers first.  A second job is queued behind a running one only while plenty of
            # work is left: in a generation's tail it would wait there while another worker idles.
            while len(pending):
                usable = [s for s in self.slots if s.usable]
                calls = math.ceil(len(pending) / max(self._pack_of(s) for s in usable)) if usable else 0
                if not any(not s.queue for s in usable) and not (
                        calls >= len(usable) and any(len(s.queue) < IN_FLIGHT_PER_WORKER for s in usable)):
                    return
                if not submit():
                    return

        def retry_or_fail(job: DispatchJob, attempt: int, reason: str, row: dict[str, Any] | None = None) -> None:
            if attempt < self.max_retries:
                self.retries += 1
                pending.put_back([(job, attempt + 1)])
                return
            if row is None:
                row = job.failed_row()
            row["reason"] = f"{reason} (attempt {attempt + 1} of {self.max_retries + 1})"[:2000]
            finish(job, attempt, row)

        def finish(job: DispatchJob, attempt: int, row: dict[str, Any]) -> None:
            row["attempts"] = attempt + 1
            pending.finished(job, row)

        def lose_slot(i: int, reason: str, kill: bool) -> None:
            """The worker in slot ``i`` is gone: retry its running job, requeue the rest untouched."""
            slot = self.slots[i]
            queued = list(slot.queue)
            for flight in queued:
                flights.pop(flight.ref, None)
            self._replace(i, kill=kill)
            pending.put_back([item for flight in queued[1:] for item in flight.items])
            if queued:
                for job, attempt in queued[0].items:
                    retry_or_fail(job, attempt, reason)

        while len(pending) or flights or pending.open:
            fill()
            probes = {s.ready_ref: i for i, s in enumerate(self.slots) if s.ready_ref is not None}
            waiting = list(flights) + list(probes)
            if not waiting:  # nothing runs or starts: sleep until a search adds jobs (or the last one closes)
                pending.wait(_STALL_LOG_SECONDS)
                continue
            timeout = self._wait_timeout()
            if pending.open and not len(pending):  # a search may add a generation at any moment
                timeout = _POLL_SECONDS if timeout is None else min(timeout, _POLL_SECONDS)
            done, _ = ray.wait(waiting, num_returns=1, timeout=timeout)
            now = time.monotonic()
            if not done:
                self._kill_hung(now, lose_slot)
                if not flights and probes and now - last_progress > _STALL_LOG_SECONDS:
                    log.warning("no worker is ready yet (%d starting); waiting for resources", len(probes))
                    last_progress = now
                continue
            ref = done[0]
            if ref in probes:
                self._on_ready(probes[ref])
                continue
            last_progress = now
            flight = flights[ref]
            try:
                result = ray.get(ref)
            except RayActorError as err:
                # The worker (or its node) died: every flight it held is handled here, at once.
                lose_slot(flight.slot, f"worker died: {type(err).__name__}: {err}".splitlines()[0], False)
                continue
            except RayTaskError as err:
                result = None
                reason = f"evaluation raised: {err.cause!r}" if err.cause is not None else str(err).splitlines()[0]
            except RayError as err:  # e.g. the result object was lost with a node: the worker may be fine
                result = None
                reason = f"result lost: {type(err).__name__}: {err}".splitlines()[0]
            del flights[ref]
            slot = self.slots[flight.slot]
            slot.queue.remove(flight)
            slot.head_since = now
            items = flight.items
            rows = [None] * len(items) if result is None else [result] if flight.batch is None else list(result)
            if len(rows) != len(items):  # a malformed answer must not lose jobs
                rows, reason = [None] * len(items), f"packed call returned {len(rows)} rows for {len(items)} jobs"
            for (job, attempt), row in zip(items, rows):
                if row is None:
                    retry_or_fail(job, attempt, reason)
                elif row.get("status") != "ok":
                    retry_or_fail(job, attempt, row.get("reason") or "failed", row)
                else:
                    finish(job, attempt, row)

    def _wait_timeout(self) -> float | None:
        """Until the earliest running job would pass ``eval_timeout``; stall checks otherwise."""
        heads = [s.head_since for s in self.slots if s.queue]
        if self.eval_timeout is None or not heads:
            return _STALL_LOG_SECONDS if self.ready_count == 0 else None
        return max(0.0, min(heads) + self.eval_timeout - time.monotonic()) + 0.05

    def _kill_hung(self, now: float, lose_slot: Callable[[int, str, bool], None]) -> None:
        if self.eval_timeout is None:
            return
        for i, slot in enumerate(self.slots):
            if slot.queue and now - slot.head_since > self.eval_timeout:
                log.warning("%s ran past %.0fs; killing its worker", slot.queue[0].job.name, self.eval_timeout)
                lose_slot(i, f"timed out after {self.eval_timeout:g}s", True)

    def shutdown(self) -> None:
        for slot in self.slots:
            if not slot.retired:
                ray.kill(slot.actor, no_restart=True)
