"""One benchmark from config to directory: plan, dispatch the cells through Ray, journal, tables.

The cells run on the search's machinery: the same :class:`Dispatcher`
(readiness probes, ``ray.wait``, retries on a dead worker, an exception, a
NaN loss or a timeout, each cell reaching the journal exactly once) and the
same trainer.  The stores go into Ray's object store once and every worker
maps them; a cell carries only its identity.

``results.jsonl`` gets one fsynced line per finished cell (``status`` ok or
failed, after ``run.max_retries`` retries).  A benchmark resumed from its
directory runs only the cells the journal does not hold.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import ray
import yaml

from oesearch.benchmark.plan import BenchData, BenchPlan, load_bench_data, plan_benchmark
from oesearch.benchmark.tables import class_table, oe_labels, oe_size_figure, results_frame, table_markdown
from oesearch.benchmark.worker import BenchmarkWorker
from oesearch.config import Config, config_to_dict
from oesearch.results.figures import save_png
from oesearch.results.rundir import RunDir, atomic_write_bytes
from oesearch.search.cluster import connect
from oesearch.search.dispatch import Dispatcher, plan_workers
from oesearch.search.runner import worker_spec

__all__ = ["BenchDir", "Prepared", "prepare_benchmark", "run_benchmark", "write_results"]

RESULTS_JOURNAL = "results.jsonl"


class BenchDir(RunDir):
    """A benchmark's directory: a run directory whose journal is ``results.jsonl``."""

    journal_name = RESULTS_JOURNAL


@dataclass
class Prepared:
    data: BenchData
    plan: BenchPlan


def prepare_benchmark(config: Config, log: Callable[[str], None] = print) -> Prepared:
    """Load the data and plan every cell; bad values raise ConfigError here, before anything is written."""
    data = load_bench_data(config)
    plan = plan_benchmark(config, data, worker_spec)
    b = config.benchmark
    pool = ("the training images of the split's OE classes (data.corpus is not used)" if b.protocol == "split"
            else f"a corpus of {len(data.corpus)} images")
    log(f"benchmark {config.name}: {b.protocol}, {len(plan.classes)} classes x {len(b.methods)} methods "
        f"({', '.join(b.methods)}) x OE sizes [{', '.join(plan.oe_labels)}] x {b.seeds} seeds = "
        f"{len(plan.cells)} trainings; normal data {data.train.image_shape}, OE from {pool}")
    return Prepared(data, plan)


def run_benchmark(config: Config, benchdir: BenchDir, prepared: Prepared | None = None,
                  log: Callable[[str], None] = print, progress: bool = True,
                  worker_class: Any = BenchmarkWorker) -> pd.DataFrame:
    """Run (or continue) a benchmark in ``benchdir``; write its outputs and return the results frame."""
    if not benchdir.file("config.yaml").exists():
        benchdir.write_text("config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    prepared = prepared or prepare_benchmark(config, log)
    plan = prepared.plan
    done = {row["cell"] for row in benchdir.journal_rows()}
    todo = [cell for cell in plan.cells if cell.key not in done]
    if done:
        log(f"resuming: {len(plan.cells) - len(todo)} of {len(plan.cells)} cells are in the journal; "
            f"{len(todo)} to run")
    start = time.perf_counter()
    if todo:
        _dispatch(config, benchdir, prepared, todo, log, progress, worker_class)
    log(f"ran {len(todo)} trainings in {time.perf_counter() - start:.1f}s")
    frame = results_frame(benchdir.journal_rows(), order=[cell.key for cell in plan.cells])
    write_results(benchdir, frame, config, log)
    return frame


def _dispatch(config: Config, benchdir: BenchDir, prepared: Prepared, todo: list, log: Callable[[str], None],
              progress: bool, worker_class: Any) -> None:
    from tqdm import tqdm

    r = config.run
    connect(r.address, log)
    count, options, kind = plan_workers(r.workers, r.gpus_per_worker, log=log)
    count = min(count, len(todo))
    data_ref = ray.put(prepared.data)  # one copy of the stores in the object store, shared by every worker
    dispatcher = Dispatcher(worker_class, (data_ref, prepared.plan.setup), lambda cell: (), count, options,
                            max_retries=r.max_retries, eval_timeout=r.eval_timeout,
                            name=f"oesearch-{benchdir.path.name}", pack=1)
    log(f"dispatching {len(todo)} trainings to {count} {kind} workers; benchmark id {benchdir.path.name}")
    bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not progress, leave=False)
    failed = 0

    def journal(row: dict[str, Any]) -> None:
        nonlocal failed
        benchdir.append(row)
        failed += row["status"] != "ok"
        bar.update(1)
        if failed:
            bar.set_postfix(failed=failed)

    try:
        dispatcher.run(todo, journal)
    finally:
        bar.close()
        benchdir.close()
        dispatcher.shutdown()
    if failed:
        log(f"warning: {failed} trainings failed after {r.max_retries} retries; see 'reason' in {RESULTS_JOURNAL}")


def write_results(benchdir: RunDir, frame: pd.DataFrame, config: Config, log: Callable[[str], None] = print) -> str:
    """results.parquet, results.csv, table.md and (several OE sizes) oe_size.png; print the table."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(benchdir.file("results.parquet"), buffer.getvalue())
    benchdir.write_text("results.csv", frame.to_csv(index=False))
    text = table_markdown(class_table(frame), config.benchmark.protocol, config.benchmark.seeds)
    benchdir.write_text("table.md", text)
    log(text)
    several = oe_labels(frame).nunique() > 1
    if several and (frame["status"] == "ok").any():
        save_png(oe_size_figure(frame, f"{config.name}: {config.benchmark.protocol}"), benchdir.file("oe_size.png"))
    failed = int((frame["status"] != "ok").sum())
    log(f"{len(frame)} cells, {failed} failed; results in {Path(benchdir.path) / 'results.parquet'}")
    return text
