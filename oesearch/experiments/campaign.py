"""The campaign root: a grid of searches (classes x methods x modes x strategies x seeds) on one worker pool.

One driver, one pool of workers, one :class:`~oesearch.distributed.dispatch.Dispatcher`.  Every search
runs :func:`~oesearch.experiments.search.run_search` unchanged, in a thread of its own, and writes its own
run directory under ``CAMPAIGN_DIR/searches/<id>``: exactly what ``oesearch search`` with the same config
and seed writes.  Their generations interleave on the pool through the
:class:`~oesearch.distributed.scheduler.FairQueue`, so one search's barrier is hidden by the others' work.

The campaign directory holds ``config.yaml`` (the campaign's), ``manifest.json`` (its grid and searches,
written once), ``status.json`` (each search's state, rewritten atomically) and what the ``outputs`` hook
writes (the combined table, ``results.parquet``, ``report.html``).  ``--resume CAMPAIGN_DIR`` skips the
finished searches and resumes the others from their journals and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from oesearch.config import Config, ConfigError, config_from_dict, config_to_dict
from oesearch.data import OneVsRest, load_normal
from oesearch.distributed.cluster import ClusterLost, cluster_info, connect, current_cluster
from oesearch.distributed.dispatch import WorkersLost
from oesearch.distributed.fitness_worker import FitnessWorker
from oesearch.distributed.pool import PoolStopped, SharedPool
from oesearch.distributed.ray_metrics import CampaignMetrics
from oesearch.experiments.context import RUN_COMMAND, make_dispatcher, write_config
from oesearch.experiments.search import (Report, SearchData, check_against_data, image_payload, load_search_data,
                                         load_task, run_search)
from oesearch.results import RunDir
from oesearch.training.settings import WorkerSpec, worker_spec

__all__ = ["SearchCell", "campaign_cells", "search_config", "run_campaign", "CAMPAIGN_COMMAND", "MANIFEST", "check_manifest",
           "read_manifest", "prepare_campaign", "CampaignPlan"]

CAMPAIGN_COMMAND = f"{RUN_COMMAND} campaign"
MANIFEST = "manifest.json"
STATUS = "status.json"
SEARCHES = "searches"


@dataclass(frozen=True)
class SearchCell:
    """One search of the grid."""

    normal_class: int
    method: str
    mode: str
    strategy: str
    seed: int

    @property
    def id(self) -> str:
        """Its run directory's name, e.g. ``c3-hsc-worst-s7`` (``-random`` / ``-aging`` for those strategies)."""
        tail = "" if self.strategy == "evolution" else f"-{self.strategy}"
        return f"c{self.normal_class}-{self.method}-{self.mode}-s{self.seed}{tail}"

    @property
    def task(self) -> str:
        """The worker task its trainings use: searches of one class and method share one (and packed calls)."""
        return f"c{self.normal_class}-{self.method}"

    def entry(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self), "run_dir": f"{SEARCHES}/{self.id}"}


def campaign_cells(config: Config, class_count: int) -> list[SearchCell]:
    """The grid of ``config.campaign`` in class, method, mode, strategy, seed order; bad classes are a ConfigError."""
    c = config.campaign
    classes = tuple(range(class_count)) if c.classes == "all" else tuple(c.classes)
    for cls in classes:
        if not 0 <= cls < class_count:
            raise ConfigError(f"campaign.classes: class {cls} is out of range; the normal data has {class_count} "
                              f"classes (0 to {class_count - 1})")
    strategies = c.strategies or (config.search.strategy,)
    seeds = c.seeds or (config.run.seed,)
    return [SearchCell(cls, m, mode, s, seed) for cls in classes for m in c.methods for mode in c.modes
            for s in strategies for seed in seeds]


def search_config(config: Config, cell: SearchCell) -> Config:
    """The config of one search: the campaign's, with the cell's class, method, mode, strategy and seed."""
    raw = config_to_dict(config)
    raw.pop("campaign", None)  # a search's own config.yaml is the one `oesearch search` would write
    raw["data"]["normal_class"] = cell.normal_class
    raw["train"]["method"] = cell.method
    raw["search"]["mode"] = cell.mode
    raw["search"]["strategy"] = cell.strategy
    raw["run"]["seed"] = cell.seed
    try:
        return config_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"search {cell.id} of the campaign: {err}") from None


@dataclass
class CampaignPlan:
    """What a campaign runs: each search's config and data, the workers' tasks, the corpus."""

    cells: list[SearchCell]
    configs: dict[str, Config]
    data: dict[str, SearchData]
    tasks: dict[str, OneVsRest]
    specs: dict[str, WorkerSpec]


def prepare_campaign(config: Config, log: Callable[[str], None] = print) -> CampaignPlan:
    """Load the corpus and index once and every class's task, and check every search's config against them."""
    class_count = len(load_normal(config.data.normal, "train", config.data.cache_dir).class_names)
    cells = campaign_cells(config, class_count)
    configs = {cell.id: search_config(config, cell) for cell in cells}
    first = load_search_data(configs[cells[0].id], log)  # the corpus and its index, shared by every search
    by_class: dict[int, OneVsRest] = {}
    data, tasks, specs = {}, {}, {}
    for cell in cells:
        cfg = configs[cell.id]
        if cell.normal_class not in by_class:
            task = first.task if cell.normal_class == first.task.normal_class else load_task(cfg)
            if task.test.shape == first.task.test.shape and np.array_equal(task.test, first.task.test):
                task = dataclasses.replace(task, test=first.task.test)  # one test set for every class: one copy
            by_class[cell.normal_class] = task
        data[cell.id] = SearchData(by_class[cell.normal_class], first.corpus, first.index)
        try:
            check_against_data(cfg, data[cell.id])
        except ConfigError as err:
            raise ConfigError(f"search {cell.id} of the campaign: {err}") from None
        tasks[cell.task] = by_class[cell.normal_class]  # one object per class: the object store keeps one copy
        specs[cell.task] = worker_spec(cfg)
    log(f"campaign: {len(cells)} searches ({len(by_class)} classes x {len(config.campaign.methods)} methods x "
        f"{len(config.campaign.modes)} modes{_more(config)}), {len(tasks)} worker tasks")
    return CampaignPlan(cells, configs, data, tasks, specs)


def _more(config: Config) -> str:
    c = config.campaign
    parts = [f" x {len(c.strategies)} strategies" if c.strategies and len(c.strategies) > 1 else "",
             f" x {len(c.seeds)} seeds" if c.seeds and len(c.seeds) > 1 else ""]
    return "".join(parts)


def write_manifest(config: Config, campaign: RunDir, cells: list[SearchCell]) -> None:
    """``config.yaml`` and ``manifest.json`` of a new campaign (a resumed one keeps its own)."""
    write_config(config, campaign)
    if campaign.file(MANIFEST).exists():
        return
    c = config.campaign
    campaign.write_json(MANIFEST, {
        "name": config.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": "config.yaml",
        "grid": {"classes": sorted({cell.normal_class for cell in cells}), "methods": list(c.methods),
                 "modes": list(c.modes), "strategies": sorted({cell.strategy for cell in cells}),
                 "seeds": sorted({cell.seed for cell in cells})},
        "searches": [cell.entry() for cell in cells],
    })


def finished(path: Path) -> bool:
    """A search whose ``summary.json`` exists has written every output."""
    return (path / "summary.json").is_file()


def run_campaign(config: Config, campaign: RunDir, plan: CampaignPlan | None = None,
                 log: Callable[[str], None] = print, worker_class: Any = FitnessWorker,
                 report: Report | None = None, outputs: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """Run (or continue) every search of the campaign on one pool; return each search's state.

    ``report`` draws each search's ``report.html``; ``outputs(campaign_dir)`` writes the combined table,
    ``results.parquet`` and the campaign's ``report.html`` at the end (both are hooks of the caller's, so
    that this root imports nothing above it).  A search that fails is reported and the others go on;
    the campaign then ends with the failures listed in ``status.json``.
    """
    plan = plan or prepare_campaign(config, log)
    campaign.claim()
    try:
        return _run_claimed(config, campaign, plan, log, worker_class, report, outputs)
    finally:
        campaign.release()


def _run_claimed(config: Config, campaign: RunDir, plan: CampaignPlan, log: Callable[[str], None],
                 worker_class: Any, report: Report | None, outputs: Callable[[Path], Any] | None) -> dict[str, Any]:
    write_manifest(config, campaign, plan.cells)
    root = campaign.file(SEARCHES)
    root.mkdir(exist_ok=True)
    todo = [cell for cell in plan.cells if not finished(root / cell.id)]
    if len(todo) < len(plan.cells):
        log(f"resuming: {len(plan.cells) - len(todo)} of {len(plan.cells)} searches are finished; "
            f"running the other {len(todo)}")
    states: dict[str, str] = {cell.id: "finished" for cell in plan.cells if cell not in todo}
    metrics = CampaignMetrics(campaign.path.name)
    lock = threading.Lock()

    def record(cell_id: str, state: str) -> None:
        with lock:
            states[cell_id] = state
            done = sum(s == "finished" for s in states.values())
            failed = sum(s.startswith("failed") for s in states.values())
            metrics.record(len(plan.cells), done, failed)
            campaign.write_json(STATUS, {"searches": {c.id: states.get(c.id, "pending") for c in plan.cells},
                                         "finished": done, "failed": failed, "total": len(plan.cells)})

    for cell in todo:
        record(cell.id, "pending")
    if todo:
        _run_searches(config, campaign, plan, todo, log, worker_class, report, record)
    if outputs is not None:
        try:  # a view of the run directories: failing to draw it must not fail the campaign
            written = outputs(campaign.path)
            log(f"campaign outputs: {', '.join(str(p) for p in (written or {}).values())}")
        except Exception as err:  # noqa: BLE001
            log(f"warning: could not write the campaign's table and report ({type(err).__name__}: {err}); "
                f"`{CAMPAIGN_COMMAND} --resume {campaign.path}` retries")
    failures = {k: v for k, v in states.items() if v.startswith("failed")}
    for name, why in failures.items():
        log(f"search {name} {why}")
    return dict(states)


def _run_searches(config: Config, campaign: RunDir, plan: CampaignPlan, todo: list[SearchCell],
                  log: Callable[[str], None], worker_class: Any, report: Report | None,
                  record: Callable[[str, str], None]) -> None:
    connect(config.run.address, log)
    cluster = current_cluster() or cluster_info(joined=True, source="Ray initialised by the caller")
    some = plan.data[todo[0].id]
    # Jobs per worker call: what run.pack says, or what each worker reports for run.pack auto.
    dispatcher, kind = make_dispatcher(config, worker_class, plan.tasks, (plan.specs,),
                                       image_payload(some.corpus.images), f"oesearch-{campaign.path.name}", log)
    pool = SharedPool(dispatcher, kind, campaign.path.name)
    log(f"campaign: {len(todo)} searches on {pool.workers} {kind} workers; campaign id {campaign.path.name}")

    def search(cell: SearchCell) -> Callable[[], Any]:
        def body() -> Any:
            record(cell.id, "running")
            rundir = RunDir(campaign.file(SEARCHES) / cell.id)
            rundir.path.mkdir(exist_ok=True)
            try:
                summary = run_search(plan.configs[cell.id], rundir, data=plan.data[cell.id],
                                     log=lambda line: log(f"[{cell.id}] {line}"), progress=False, report=report,
                                     pool=pool, task=cell.task)
            except (PoolStopped, ClusterLost):
                record(cell.id, "stopped")  # the pool stopped under it: a resume continues it
                raise
            except BaseException as err:
                record(cell.id, f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                raise
            record(cell.id, "finished")
            return summary

        return body

    try:
        pool.run({cell.id: search(cell) for cell in todo})
    except (WorkersLost, ConnectionError) as err:
        raise ClusterLost(_stopped(cluster, campaign, err)) from err
    finally:
        try:
            dispatcher.shutdown()
        except Exception:  # noqa: BLE001  a cluster that went away cannot kill its actors
            pass


def _stopped(cluster: Any, campaign: RunDir, err: BaseException) -> str:
    where = cluster.where() if cluster is not None else "the Ray cluster"
    rows = sum(len(RunDir(p).journal_rows()) for p in sorted(campaign.file(SEARCHES).iterdir()) if p.is_dir())
    return (f"{where} stopped serving this campaign ({type(err).__name__}: {str(err).splitlines()[0]}). Nothing "
            f"finished is lost: {rows} evaluations are in its searches' journals. Continue it with: "
            f"{CAMPAIGN_COMMAND} --resume {campaign.path} --address local (or give --address of a live cluster).")


def check_manifest(path: Path, cells: list[SearchCell]) -> None:
    """A resumed campaign's manifest must list exactly the searches its config gives."""
    listed = [entry.get("id") for entry in read_manifest(path).get("searches", [])]
    if listed != [cell.id for cell in cells]:
        raise ConfigError(f"{Path(path) / MANIFEST} lists searches {listed}, but its config.yaml gives "
                          f"{[cell.id for cell in cells]}; it is not this campaign's manifest")


def read_manifest(path: Path) -> dict[str, Any]:
    """A campaign directory's manifest; a missing or unreadable one is a clear error."""
    file = Path(path) / MANIFEST
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a campaign directory (no {MANIFEST}); nothing to resume") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file} is not a campaign manifest ({err})") from None

