"""The composition layer: what every kind of run needs around its jobs, built in one place.

A search, a benchmark, ``evaluate`` and ``signal`` differ in *what* they train;
they share everything around it, and :func:`run_context` builds that once:

- the run directory's ``config.yaml`` (written once; a resumed run keeps its own);
- the mirror to ``run.storage`` when it is a URI;
- the Ray connection and the worker plan (``run.workers``, ``run.gpus_per_worker``);
- the worker's shared data in the object store (``ray.put`` once; every worker maps it);
- the :class:`~oesearch.distributed.dispatch.Dispatcher`;
- the journal hook (fsynced row, then the Ray metrics);
- shutdown, and a cluster that stops serving turned into :class:`ClusterLost`
  with the exact ``--resume`` command that continues.

Each root is then a thin function: build its jobs, run them through
``ctx.dispatcher.run(jobs, ctx.journal)``, write its outputs.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import ray
import yaml

from oesearch.config import Config, config_to_dict
from oesearch.distributed.cluster import ClusterInfo, ClusterLost, cluster_info, connect, current_cluster
from oesearch.distributed.dispatch import Dispatcher, WorkersLost, plan_workers
from oesearch.distributed.pool import SharedPool
from oesearch.distributed.ray_metrics import RunMetrics
from oesearch.results.rundir import RunDir
from oesearch.results.storage import Mirror, is_uri

__all__ = ["RunContext", "run_context", "make_dispatcher", "write_config", "stopped_message", "RUN_COMMAND"]

RUN_COMMAND = "python oesearch/run.py"  # how a user continues a run: ``RUN_COMMAND <subcommand> --resume DIR``


def write_config(config: Config, rundir: RunDir) -> bool:
    """``config.yaml`` of a new run (True); a run directory that has one keeps it (False)."""
    if rundir.file("config.yaml").exists():
        return False
    rundir.write_text("config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return True


def make_dispatcher(config: Config, worker_class: Any, shared: Any, args: tuple, payload: Callable[[Any], tuple],
                    name: str, log: Callable[[str], None], pack: int | None = None,
                    max_workers: int | None = None) -> tuple[Dispatcher, str]:
    """Workers sized to the cluster, each built as ``worker_class(shared, *args)``; and their device kind.

    ``shared`` goes into the object store once and every worker maps it; ``args`` travel by value.
    ``payload(job)`` is what each call carries besides the job.  ``pack``: jobs per call (None: ``run.pack``,
    where ``auto`` lets each worker say). ``max_workers`` caps the pool (e.g. at the number of jobs).
    """
    r = config.run
    count, options, kind = plan_workers(r.workers, r.gpus_per_worker, log=log)
    if max_workers is not None:
        count = max(1, min(count, max_workers))
    if pack is None:
        pack = None if r.pack == "auto" else r.pack
    dispatcher = Dispatcher(worker_class, (ray.put(shared), *args), payload, count, options,
                            max_retries=r.max_retries, eval_timeout=r.eval_timeout, name=name, pack=pack)
    return dispatcher, kind


def stopped_message(cluster: ClusterInfo | None, rundir: RunDir, err: BaseException, command: str) -> str:
    """What happened to the cluster and the exact command (``command --resume RUN_DIR``) that continues the run."""
    rows = rundir.journal_rows()
    state = rundir.load_checkpoint(log=lambda _: None)
    done = f"checkpoint after generation {state.generation}" if state is not None else "no checkpoint yet"
    where = cluster.where() if cluster is not None else "the Ray cluster"
    return (f"{where} stopped serving this run ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            f"Nothing finished is lost: {len(rows)} evaluations are in {rundir.file(rundir.journal_name)} "
            f"({done}). Continue it on a private Ray instance on this machine with: "
            f"{command} --resume {rundir.path} --address local "
            "(or give --address of a live cluster instead of local).")


@dataclass
class RunContext:
    """A run's directory, workers and bookkeeping, as :func:`run_context` built them."""

    config: Config
    rundir: RunDir
    dispatcher: Dispatcher
    device_kind: str
    metrics: RunMetrics
    mirror: Mirror | None
    cluster: ClusterInfo | None
    run_jobs: Callable[[Any, Callable[[dict[str, Any]], None]], None]  # the dispatcher's, or a shared pool's

    @property
    def workers(self) -> int:
        return len(self.dispatcher.slots)

    def journal(self, row: dict[str, Any]) -> None:
        """A finished job: its row fsynced to the journal, then counted in the Ray metrics."""
        self.rundir.append(row)
        self.metrics.record_row(row)

    def sync(self) -> None:
        """Copy the run directory to ``run.storage`` (a URI), if there is one."""
        if self.mirror is not None:
            self.mirror.sync()


def mirror_for(config: Config, rundir: RunDir) -> Mirror | None:
    storage = config.run.storage
    return Mirror(storage, rundir.path) if storage and is_uri(storage) else None


@contextmanager
def run_context(config: Config, rundir: RunDir, *, worker_class: Any, shared: Any, args: tuple = (),
                payload: Callable[[Any], tuple] = lambda job: (), method: str, mode: str, command: str,
                log: Callable[[str], None] = print, pack: int | None = None,
                max_workers: int | None = None, pool: SharedPool | None = None) -> Iterator[RunContext]:
    """Connect, start the workers and yield the :class:`RunContext`; close and shut down however it ends.

    With ``pool`` (a campaign's :class:`~oesearch.distributed.pool.SharedPool`) the run starts no workers
    of its own: its jobs join the pool's queue under the run directory's name, and the pool's owner
    shuts the workers down.

    ``method`` and ``mode`` tag the Ray metrics (with the run id); ``command`` is the subcommand line a
    user resumes with (e.g. ``python oesearch/run.py benchmark``). A cluster that stops serving the run
    becomes :class:`ClusterLost`, whose message holds that command.
    """
    write_config(config, rundir)
    mirror = mirror_for(config, rundir)
    if pool is None:
        connect(config.run.address, log)
    cluster = current_cluster() or cluster_info(joined=True, source="Ray initialised by the caller")
    if pool is None:
        dispatcher, kind = make_dispatcher(config, worker_class, shared, args, payload,
                                           f"oesearch-{rundir.path.name}", log, pack=pack, max_workers=max_workers)
        run_jobs, metrics = dispatcher.run, RunMetrics(rundir.path.name, method, mode)
    else:
        dispatcher, kind = pool.dispatcher, pool.device_kind
        run_jobs, metrics = pool.run_jobs_for(rundir.path.name), RunMetrics(rundir.path.name, method, mode, pool.name)
    ctx = RunContext(config, rundir, dispatcher, kind, metrics, mirror, cluster, run_jobs)
    rundir.journal_rows()  # a resumed run says which journal lines it had to skip
    for problem in rundir.dropped:
        log(f"warning: {rundir.file(rundir.journal_name)}: {problem}; skipped it, so that evaluation runs again")
    try:
        yield ctx
    except (WorkersLost, ray.exceptions.RaySystemError, ConnectionError) as err:
        rundir.close()
        raise ClusterLost(stopped_message(cluster, rundir, err, command)) from err
    finally:
        rundir.close()
        try:
            if pool is None:
                dispatcher.shutdown()
        except Exception:  # noqa: BLE001  a cluster that went away cannot kill its actors; nothing to do
            pass
