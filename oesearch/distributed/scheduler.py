"""Which job a free worker runs next: one search's jobs in order, or many searches' jobs fairly.

The :class:`~oesearch.distributed.dispatch.Dispatcher` owns the workers and the faults; a *queue*
owns the jobs: which is next, where a retried one goes back, and who is told of a finished row.

- :class:`FifoQueue` is one search's (or one benchmark's) batch of jobs, in order.
- :class:`FairQueue` is a campaign's: many searches add batches while others run, each
  waiting at its own generation barrier.  A free worker takes a job of the live search
  with the **fewest trainings started** (ties: the search added first), so every search
  advances at the same pace and one search's barrier is hidden by the others' work.
  When a worker trains several jobs in one packed call, the call takes the jobs of
  searches that share the first one's task (``job.task``: the normal class and method),
  each taken by the same rule.

The order in which jobs run never feeds back into a search: each search draws its next
generation from its own seeded generators and the rows of its own jobs, whenever those
arrive.  :func:`simulate_campaign` runs this same queue on simulated time, to measure the
policy on more workers than a machine holds.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Optional, Protocol, Sequence

import numpy as np

__all__ = ["Item", "JobQueue", "FifoQueue", "FairQueue", "task_of", "simulate_campaign", "search_durations",
           "CampaignSimulation"]

Item = tuple[Any, int]  # (job, attempt): attempt 0 is the first try


def task_of(job: Any) -> Hashable:
    """The task a job trains (jobs of one task can share a packed call); None: the worker's only one."""
    return getattr(job, "task", None)


class JobQueue(Protocol):
    """What the dispatcher asks of the jobs it runs."""

    def __len__(self) -> int:
        """Jobs waiting for a worker now."""
        ...

    @property
    def open(self) -> bool:
        """Whether more jobs may still be added (a search between two generations)."""
        ...

    def take(self, k: int) -> list[Item]:
        """Up to ``k`` (at least one) waiting jobs that can run as one call."""
        ...

    def put_back(self, items: Sequence[Item]) -> None:
        """Jobs to run again before anything else of theirs (a retry, or jobs queued on a lost worker)."""
        ...

    def finished(self, job: Any, row: dict[str, Any]) -> None:
        """A job's final row (exactly once per job)."""
        ...

    def wait(self, timeout: float) -> None:
        """Block until jobs are added or the queue closes (or ``timeout`` seconds pass)."""
        ...


class FifoQueue:
    """One batch of jobs, in order; every final row goes to ``on_row``."""

    open = False

    def __init__(self, jobs: Iterable[Any], on_row: Callable[[dict[str, Any]], None]) -> None:
        self._pending: deque[Item] = deque((job, 0) for job in jobs)
        self._on_row = on_row

    def __len__(self) -> int:
        return len(self._pending)

    def take(self, k: int) -> list[Item]:
        return [self._pending.popleft() for _ in range(min(k, len(self._pending)))]

    def put_back(self, items: Sequence[Item]) -> None:
        self._pending.extendleft(reversed(items))

    def finished(self, job: Any, row: dict[str, Any]) -> None:
        self._on_row(row)

    def wait(self, timeout: float) -> None:  # nothing is ever added
        return


@dataclass(eq=False)
class _Search:
    name: str
    order: int
    pending: deque = field(default_factory=deque)
    started: int = 0  # trainings handed to a worker (first attempts), the fairness count
    outstanding: int = 0  # jobs of the current batch without a final row
    on_row: Optional[Callable[[dict[str, Any]], None]] = None
    on_done: Optional[Callable[[], None]] = None
    closed: bool = False


class FairQueue:
    """Many searches' jobs; the live search with the fewest trainings started goes first.

    Each search adds one batch at a time (:meth:`add`: a generation, a rescore, a validation
    round) and waits for it; its rows go to the batch's ``on_row``, then ``on_done`` once the
    batch is complete.  Thread-safe: searches add from their own threads while the
    dispatcher takes from its own.
    """

    def __init__(self) -> None:
        self._searches: dict[str, _Search] = {}
        self._owner: dict[int, _Search] = {}  # id(job) -> its search, while the job is waiting or running
        self._changed = threading.Condition()

    # --- the searches' side ----------------------------------------------------------------
    def register(self, name: str) -> None:
        """A search that will add jobs; the queue stays open until every registered search is closed."""
        with self._changed:
            if name in self._searches:
                raise ValueError(f"search {name!r} is registered twice")
            self._searches[name] = _Search(name, len(self._searches))

    def add(self, name: str, jobs: Sequence[Any], on_row: Callable[[dict[str, Any]], None],
            on_done: Callable[[], None]) -> None:
        """Queue search ``name``'s batch ``jobs``; ``on_done()`` once each has its final row."""
        with self._changed:
            search = self._searches[name]
            if search.closed:
                raise RuntimeError(f"search {name!r} is closed")
            if search.outstanding:
                raise RuntimeError(f"search {name!r} added a batch before its last one finished")
            if len({id(job) for job in jobs}) != len(jobs):  # its rows are counted by job: each once
                raise ValueError(f"search {name!r} added one job object twice in a batch")
            if not jobs:
                on_done()
                return
            search.on_row, search.on_done, search.outstanding = on_row, on_done, len(jobs)
            for job in jobs:
                self._owner[id(job)] = search
                search.pending.append((job, 0))
            self._changed.notify_all()

    def close(self, name: str) -> None:
        """Search ``name`` adds nothing more (it finished, or it stopped)."""
        with self._changed:
            search = self._searches[name]
            search.closed = True
            for job, _ in search.pending:  # a stopped search's waiting jobs are dropped, never run
                self._owner.pop(id(job), None)
            search.pending.clear()
            self._changed.notify_all()

    def started(self, name: str) -> int:
        """Trainings of search ``name`` handed to a worker so far."""
        return self._searches[name].started

    # --- the dispatcher's side -------------------------------------------------------------
    def __len__(self) -> int:
        with self._changed:
            return sum(len(s.pending) for s in self._searches.values())

    @property
    def open(self) -> bool:
        with self._changed:
            return not all(s.closed for s in self._searches.values())

    def _next(self, task: Hashable = None, any_task: bool = True) -> _Search | None:
        live = [s for s in self._searches.values() if s.pending and (any_task or task_of(s.pending[0][0]) == task)]
        return min(live, key=lambda s: (s.started, s.order), default=None)

    def take(self, k: int) -> list[Item]:
        with self._changed:
            first = self._next()
            if first is None:
                return []
            task = task_of(first.pending[0][0])
            items: list[Item] = []
            search: _Search | None = first
            while search is not None and len(items) < k:
                job, attempt = search.pending.popleft()
                search.started += attempt == 0
                items.append((job, attempt))
                search = self._next(task, any_task=False)
            return items

    def put_back(self, items: Sequence[Item]) -> None:
        with self._changed:
            for job, attempt in reversed(items):
                search = self._owner.get(id(job))
                if search is not None and not search.closed:
                    search.pending.appendleft((job, attempt))
            self._changed.notify_all()

    def finished(self, job: Any, row: dict[str, Any]) -> None:
        with self._changed:
            search = self._owner.pop(id(job), None)
        if search is None or search.closed:
            return
        search.on_row(row)  # outside the lock: it journals (fsync)
        with self._changed:
            search.outstanding -= 1
            done = search.outstanding == 0
        if done:
            search.on_done()

    def wait(self, timeout: float) -> None:
        with self._changed:
            if not any(s.pending for s in self._searches.values()) and self.open:
                self._changed.wait(timeout)


# --- the same policy on simulated time -------------------------------------------------------------------


@dataclass
class CampaignSimulation:
    """What :func:`simulate_campaign` measured."""

    workers: int
    searches: int
    trainings: int
    busy: float  # worker-seconds spent training
    wall: float  # simulated seconds from the first job to the last row

    @property
    def efficiency(self) -> float:
        return self.busy / (self.workers * self.wall) if self.wall > 0 else 0.0


@dataclass(eq=False)
class _SimJob:
    search: int
    seconds: float
    task: Hashable = None


def search_durations(generations: Sequence[int], mean_seconds: float, cv: float, seed: int,
                     search: int) -> list[np.ndarray]:
    """One search's training times per generation: gamma with mean ``mean_seconds`` and coefficient of
    variation ``cv`` (constant for cv 0), from a generator of its own seeded by (``seed``, ``search``)."""
    rng = np.random.default_rng([seed, search])
    if cv <= 0:
        return [np.full(int(n), mean_seconds) for n in generations]
    shape = 1.0 / cv**2
    return [rng.gamma(shape, mean_seconds / shape, int(n)) for n in generations]


def simulate_campaign(workers: int, generations: Sequence[Sequence[int]], mean_seconds: float, cv: float,
                      seed: int) -> CampaignSimulation:
    """A discrete-event run of :class:`FairQueue` over ``workers`` workers with no dispatch overhead.

    ``generations[s]`` lists search ``s``'s trainings per generation; a generation is a barrier (the
    next one is added when its last row arrives, as a search does).  Each training lasts what
    :func:`search_durations` draws for its search, so no duration depends on the schedule.  The queue, its
    fairness rule and its batch bookkeeping are the ones the dispatcher uses; only the clock is simulated.
    """
    durations = [search_durations(g, mean_seconds, cv, seed, s) for s, g in enumerate(generations)]
    queue = FairQueue()
    names = [f"s{i}" for i in range(len(generations))]
    next_generation = [0] * len(generations)
    for name in names:
        queue.register(name)

    def add_generation(s: int) -> None:
        g = next_generation[s]
        if g == len(generations[s]):
            queue.close(names[s])
            return
        next_generation[s] += 1
        jobs = [_SimJob(s, float(t)) for t in durations[s][g]]
        queue.add(names[s], jobs, on_row=lambda row: None, on_done=lambda: add_generation(s))

    for s in range(len(generations)):
        add_generation(s)
    now, busy, trainings = 0.0, 0.0, 0
    running: list[tuple[float, int, _SimJob]] = []  # (finish time, tie-break, job)
    free = workers
    counter = 0
    while True:
        while free > 0 and len(queue):
            (job, _), = queue.take(1)
            heapq.heappush(running, (now + job.seconds, counter, job))
            counter += 1
            free -= 1
            busy += job.seconds
            trainings += 1
        if not running:
            break
        now, _, job = heapq.heappop(running)
        free += 1
        queue.finished(job, {"status": "ok"})
    return CampaignSimulation(workers, len(generations), trainings, busy, now)
