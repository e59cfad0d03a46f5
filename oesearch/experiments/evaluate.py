"""``oesearch evaluate``: how good is this OE image for my class?

Each candidate is one OE image, named by its corpus index or given as an image
file.  It is trained and scored over N seeds through the search's own workers,
dispatcher and journal: every finished training is a journal row, a killed
evaluation resumes from its journal, and a training already journaled is never
run again.  The result is a table and one JSON line.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from oesearch.config import Config, ConfigError
from oesearch.data import DataError, OneVsRest, conform, load_corpus
from oesearch.data.folders import decode_images
from oesearch.distributed.fitness_worker import FitnessWorker
from oesearch.experiments.context import RUN_COMMAND, run_context, write_config
from oesearch.experiments.search import image_payload, load_task
from oesearch.results import RunDir
from oesearch.results.rundir import to_json
from oesearch.search.fitness import FitnessCache
from oesearch.search.problem import FitnessProblem
from oesearch.seeding import derive_seed
from oesearch.training.settings import worker_spec

__all__ = ["REQUEST", "Evaluation", "evaluation_seeds", "load_image_files", "candidate_images",
           "prepare_evaluation", "run_evaluation",
           "format_table", "results_line"]

REQUEST = "evaluate.json"  # what was asked: indices or image files, and the seeds (read back by --resume)
RESULTS = "evaluation.json"


def evaluation_seeds(config: Config, count: int) -> list[int]:
    """``count`` training seeds of their own, derived from the run seed (not the search's or validation's)."""
    if count < 1:
        raise ConfigError(f"--seeds must be at least 1, got {count}")
    return [derive_seed(config.run.seed, "evaluate", r) for r in range(count)]


def load_image_files(paths: Sequence[str | Path], image_shape: tuple[int, int, int]) -> np.ndarray:
    """Image files as uint8 (N, H, W, C), each resized and converted to ``image_shape`` as a corpus is."""
    images = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"image file {path} does not exist")
        store = decode_images([path], np.zeros(1, np.int64), ("image",), root=path.parent)
        images.append(conform(store, image_shape).images[0])
    return np.stack(images)


def candidate_images(config: Config, task_shape: tuple[int, int, int], indices: Sequence[int] | None,
                     images: Sequence[str] | None) -> tuple[np.ndarray, list[int]]:
    """The image array jobs index into, and each candidate's position in it."""
    if bool(indices) == bool(images):
        raise ConfigError("name the OE images either by corpus index (--indices) or as files (--images)")
    if images:
        return load_image_files(images, task_shape), list(range(len(images)))
    corpus = load_corpus(config.data.corpus, task_shape, config.data.cache_dir)
    bad = [i for i in indices if not 0 <= i < len(corpus)]
    if bad:
        raise ConfigError(f"corpus indices {bad} are out of range: the corpus has {len(corpus)} images (0..{len(corpus) - 1})")
    return corpus.images, [int(i) for i in indices]


def _mean_sd(aucs: Sequence[float | None]) -> tuple[float | None, float | None]:
    ok = [a for a in aucs if a is not None]
    mean = float(np.mean(ok)) if ok else None
    sd = float(np.std(ok, ddof=1)) if len(ok) > 1 else None  # the sample SD across seeds
    return mean, sd


@dataclass
class Evaluation:
    """What an evaluation trains: the task, the images jobs index into, the candidates and the seeds."""

    task: OneVsRest
    pool: np.ndarray
    positions: list[int]
    seeds: list[int]
    indices: list[int] | None
    images: list[str] | None
    seed_count: int


def prepare_evaluation(config: Config, indices: Sequence[int] | None = None, images: Sequence[str] | None = None,
                       seeds: int = 3) -> Evaluation:
    """Load and check everything before a run directory exists, so a bad request leaves nothing behind."""
    seed_values = evaluation_seeds(config, seeds)
    task = load_task(config)
    pool, positions = candidate_images(config, task.image_shape, indices, images)
    return Evaluation(task, pool, positions, seed_values, list(indices) if indices else None,
                      [str(p) for p in images] if images else None, seeds)


def run_evaluation(config: Config, rundir: RunDir, evaluation: Evaluation, log: Callable[[str], None] = print,
                   progress: bool = True, worker_class: Any = FitnessWorker, command: str = "evaluate"
                   ) -> dict[str, Any]:
    """Train and score each candidate over its seeds; write ``evaluation.json``; return its content.

    A run directory that already holds a journal (a killed evaluation) continues: journaled trainings are
    not run again. ``command`` names the subcommand (``evaluate`` or ``signal``) in the metrics and in the
    ``--resume`` line of a lost cluster.
    """
    start = time.perf_counter()
    task, pool, positions, seed_values = evaluation.task, evaluation.pool, evaluation.positions, evaluation.seeds
    indices, images = evaluation.indices, evaluation.images
    if write_config(config, rundir):
        rundir.write_json(REQUEST, {"indices": list(indices) if indices else None,
                                    "images": [str(Path(p).resolve()) for p in images] if images else None,
                                    "seeds": evaluation.seed_count})
    with run_context(config, rundir, worker_class=worker_class, shared=task, args=(worker_spec(config),),
                     payload=image_payload(pool), method=config.train.method, mode=command,
                     command=f"{RUN_COMMAND} {command}", log=log) as ctx:
        rows = rundir.journal_rows()
        if rows:
            log(f"resuming: {len(rows)} finished trainings in the journal")
        problem = FitnessProblem(normal_class=task.normal_class, corpus_size=len(pool), mode="best", search_seeds=(),
                                 run_jobs=ctx.dispatcher.run, journal=ctx.journal,
                                 cache=FitnessCache(rows), progress=progress)
        log(f"evaluate: {len(positions)} OE images x {len(seed_values)} seeds, {config.train.method}, class "
            f"{task.normal_class} ({task.class_name}), {ctx.workers} {ctx.device_kind} workers; "
            f"run id {rundir.path.name}")
        scores = problem.scores([[p] for p in positions], seed_values, "evaluate")
    results = []
    for n, (position, aucs) in enumerate(zip(positions, scores)):
        mean, sd = _mean_sd(aucs)
        entry: dict[str, Any] = {"index": position, "auc_mean": mean, "auc_sd": sd, "aucs": aucs}
        if images:
            entry["image"] = str(images[n])
        results.append(entry)
    summary = {"method": config.train.method, "normal_class": task.normal_class, "class_name": task.class_name,
               "seeds": seed_values, "wall_seconds": round(time.perf_counter() - start, 2), "results": results}
    rundir.write_json(RESULTS, summary)
    ctx.sync()
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """A Markdown table: one row per OE image, mean and SD over seeds, then each seed's AUC."""
    seeds = summary["seeds"]
    head = ["OE image", "AUC mean", "SD", *(f"seed {s}" for s in seeds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(value: float | None) -> str:
        return "failed" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    for entry in summary["results"]:
        name = entry.get("image", f"corpus {entry['index']}")
        cells = [name, fmt(entry["auc_mean"]), fmt(entry["auc_sd"]) if len(seeds) > 1 else "-",
                 *map(fmt, entry["aucs"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_line(summary: dict[str, Any]) -> str:
    """The JSON line the command ends with."""
    keep = ("method", "normal_class", "seeds", "results")
    return to_json({k: summary[k] for k in keep})
