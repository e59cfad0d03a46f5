"""``oesearch signal``: how much of a training's AUC is the OE image, before a search is spent on it.

N random corpus images (the first N of the search's own generation-0 draw)
are each trained on S of the search's seeds through the usual workers and
journal.  A one-way random-effects ANOVA of the images x seeds matrix gives
the image and seed standard deviations, the ICC, and the reliability of a
``search.repetitions``-seed fitness (:mod:`oesearch.search.statistics`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from oesearch.config import Config, ConfigError
from oesearch.data import load_corpus
from oesearch.distributed.fitness_worker import FitnessWorker
from oesearch.experiments.context import mirror_for
from oesearch.experiments.evaluate import Evaluation, run_evaluation
from oesearch.experiments.search import load_task
from oesearch.results import RunDir
from oesearch.results.rundir import to_json
from oesearch.search.evolution import random_individuals
from oesearch.search.seeds import repetition_seed
from oesearch.search.statistics import Signal, variance_components

__all__ = ["SIGNAL", "prepare_signal", "run_signal", "signal_line"]

SIGNAL = "signal.json"


def prepare_signal(config: Config, images: int = 48, seeds: int = 4) -> Evaluation:
    """The images and seeds to train, checked before any file is written."""
    if images < 2 or seeds < 2:
        raise ConfigError(f"--images and --seeds must both be at least 2 (got {images} and {seeds}): the ANOVA "
                          "compares the spread between images with the spread between seeds")
    task = load_task(config)
    corpus = load_corpus(config.data.corpus, task.image_shape, config.data.cache_dir)
    if images > len(corpus):
        raise ConfigError(f"--images {images} exceeds the corpus of {len(corpus)} images")
    indices = [ind[0] for ind in random_individuals(config.run.seed, len(corpus), images)]
    seed_values = [repetition_seed(config.run.seed, r) for r in range(seeds)]  # the search's own seeds
    return Evaluation(task, corpus.images, indices, seed_values, indices, None, seeds)


def run_signal(config: Config, rundir: RunDir, evaluation: Evaluation, log: Callable[[str], None] = print,
               progress: bool = True, worker_class: Any = FitnessWorker) -> tuple[Signal, dict[str, Any]]:
    """Train the images x seeds, write ``signal.json`` and return the signal and that file's content."""
    summary = run_evaluation(config, rundir, evaluation, log=log, progress=progress, worker_class=worker_class,
                             command="signal")
    matrix = np.array([[np.nan if a is None else a for a in r["aucs"]] for r in summary["results"]], dtype=float)
    try:
        signal = variance_components(matrix, config.search.repetitions)
    except ValueError as err:
        raise ConfigError(f"cannot measure the signal: {err}") from None
    result = {"method": config.train.method, "normal_class": config.data.normal_class,
              "repetitions": config.search.repetitions, **signal.as_dict(),
              "mean_auc": round(float(np.nanmean(matrix)), 4), "wall_seconds": summary["wall_seconds"]}
    rundir.write_json(SIGNAL, result)
    mirror = mirror_for(config, rundir)
    if mirror is not None:
        mirror.sync()
    return signal, result


def signal_line(result: dict[str, Any]) -> str:
    """The JSON line the command ends with."""
    return to_json(result)
