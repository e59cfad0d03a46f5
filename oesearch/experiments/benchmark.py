"""The benchmark root: plan the cells, run them on the shared run context, write the tables.

The cells run on the search's machinery (:func:`~oesearch.experiments.context.run_context`):
the same :class:`~oesearch.distributed.dispatch.Dispatcher`
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

from oesearch.config import Config
from oesearch.distributed.cell_worker import BenchmarkWorker
from oesearch.experiments.context import RUN_COMMAND, mirror_for, run_context, write_config
from oesearch.results.figures import save_png
from oesearch.results.rundir import RunDir, atomic_write_bytes
from oesearch.sweep.cells import BenchData, BenchPlan, load_bench_data, plan_benchmark
from oesearch.sweep.paper_tables import class_table, oe_labels, oe_size_figure, results_frame, table_markdown

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
    plan = plan_benchmark(config, data)
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
    write_config(config, benchdir)
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
    mirror = mirror_for(config, benchdir)
    if mirror is not None:
        mirror.sync()
    return frame


def _dispatch(config: Config, benchdir: BenchDir, prepared: Prepared, todo: list, log: Callable[[str], None],
              progress: bool, worker_class: Any) -> None:
    from tqdm import tqdm

    failed = 0
    with run_context(config, benchdir, worker_class=worker_class, shared=prepared.data, args=(prepared.plan.setup,),
                     method="+".join(config.benchmark.methods), mode="benchmark", command=f"{RUN_COMMAND} benchmark",
                     log=log, pack=1, max_workers=len(todo)) as ctx:
        log(f"dispatching {len(todo)} trainings to {ctx.workers} {ctx.device_kind} workers; "
            f"benchmark id {benchdir.path.name}")
        bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not progress, leave=False)

        def journal(row: dict[str, Any]) -> None:
            nonlocal failed
            ctx.journal(row)
            failed += row["status"] != "ok"
            bar.update(1)
            if failed:
                bar.set_postfix(failed=failed)
            if bar.n % max(1, len(todo) // 10) == 0:  # every tenth of the cells: the mirror stays current
                ctx.sync()

        try:
            ctx.dispatcher.run(todo, journal)
        finally:
            bar.close()
    if failed:
        log(f"warning: {failed} trainings failed after {config.run.max_retries} retries; "
            f"see 'reason' in {RESULTS_JOURNAL}")


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
