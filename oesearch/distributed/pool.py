"""One worker pool serving many searches at once: a campaign's execution owner.

Each search runs unchanged in a thread of its own; its ``run_jobs`` (what a single search
hands to its own :class:`~oesearch.distributed.dispatch.Dispatcher`) instead adds the batch
to the pool's :class:`~oesearch.distributed.scheduler.FairQueue` and waits for it.  The
calling thread runs the one dispatcher over that queue, so every fault rule of a single
search (retries, replaced workers, lost nodes, exactly-once rows) holds for each search.

A search that raises is recorded and closed; the others go on.  A dispatcher that stops
(its workers cannot be replaced, Ctrl-C) stops every search: each waiting one raises
:class:`PoolStopped`, and the dispatcher's error is raised to the caller.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Mapping, Sequence

from oesearch.distributed.dispatch import Dispatcher, WorkersLost
from oesearch.distributed.scheduler import FairQueue

__all__ = ["SharedPool", "PoolStopped"]

_JOIN_SECONDS = 60.0  # how long a stopped pool waits for its searches to close their run directories


class PoolStopped(WorkersLost):
    """The pool a search ran on stopped (its dispatcher raised); the search stops where it is."""


class SharedPool:
    """A :class:`Dispatcher` and the :class:`FairQueue` that its searches share."""

    def __init__(self, dispatcher: Dispatcher, device_kind: str, name: str) -> None:
        self.dispatcher = dispatcher
        self.device_kind = device_kind  # "gpu" or "cpu", as plan_workers found the cluster
        self.name = name  # the campaign's: tags its searches' metrics
        self.queue = FairQueue()
        self._stopped: BaseException | None = None

    @property
    def workers(self) -> int:
        return len(self.dispatcher.slots)

    def run_jobs_for(self, name: str) -> Callable[[Sequence[Any], Callable[[dict[str, Any]], None]], None]:
        """Search ``name``'s ``run_jobs(jobs, on_row)``: queue the batch, return once every job has its row."""

        def run_jobs(jobs: Sequence[Any], on_row: Callable[[dict[str, Any]], None]) -> None:
            done = threading.Event()
            self.queue.add(name, list(jobs), on_row, done.set)
            while not done.wait(0.5):
                if self._stopped is not None:
                    raise PoolStopped(f"the worker pool stopped: {type(self._stopped).__name__}: "
                                      f"{self._stopped}") from self._stopped

        return run_jobs

    def run(self, searches: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
        """Run every search (each a thread calling its function) to its end; return each one's result.

        A search that raised has its exception as its result.  When the dispatcher itself raises,
        the searches are stopped (they raise :class:`PoolStopped`) and the error propagates.
        """
        results: dict[str, Any] = {}
        for name in searches:
            self.queue.register(name)

        def body(name: str, search: Callable[[], Any]) -> None:
            try:
                results[name] = search()
            except BaseException as err:  # noqa: BLE001  recorded for the caller; the other searches go on
                results[name] = err
            finally:
                self.queue.close(name)

        threads = [threading.Thread(target=body, args=(name, search), name=f"search-{name}", daemon=True)
                   for name, search in searches.items()]
        for thread in threads:
            thread.start()
        try:
            self.dispatcher.serve(self.queue)
        except BaseException as err:
            self._stopped = err
            for thread in threads:
                thread.join(_JOIN_SECONDS)
            raise
        for thread in threads:
            thread.join()
        return results
