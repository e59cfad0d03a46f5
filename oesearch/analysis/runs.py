"""Load run directories, finished or still running, for the notebooks and the report.

A finished run has ``summary.json``, ``generations.csv`` and ``genealogy.json``.
A running (or killed) run has only its journal and, after its first
generation, a checkpoint: :func:`load_run` then takes the per-generation
statistics and the genealogy from the checkpoint, and the hall of fame from
the journal, so every view shows the partial results.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from oesearch.config import Config, DataConfig, config_from_dict, read_yaml
from oesearch.results import RunDir, search_fitness_table
from oesearch.results.rundir import driver_state
from oesearch.results.summary import genealogy_dict

__all__ = ["Run", "RunImages", "distinct_labels", "find_runs", "journal_generation_stats", "load_run", "load_runs", "run_images"]


@dataclass
class Run:
    """One run directory as the views need it."""

    path: Path
    config: Config
    rows: list[dict[str, Any]]  # every complete journal row
    summary: dict[str, Any] | None  # None while the run is in progress (or was killed)
    logbook: pd.DataFrame  # population statistics per finished generation (DEAP Logbook)
    genealogy: dict[str, Any] | None  # see oesearch.results.summary.genealogy_dict
    driver: dict[str, Any] | None = None  # unfinished runs: oesearch.results.rundir.driver_state

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def method(self) -> str:
        return self.config.train.method

    @property
    def mode(self) -> str:
        return self.config.search.mode

    @property
    def strategy(self) -> str:
        return self.config.search.strategy

    @property
    def normal_class(self) -> int:
        return self.config.data.normal_class

    @property
    def label(self) -> str:
        """E.g. ``HSC worst`` or ``BCE best (random search)``."""
        extra = " (random search)" if self.strategy == "random" else ""
        return f"{self.method.upper()} {self.mode}{extra}"

    @functools.cached_property
    def search_seeds(self) -> list[int]:
        if self.summary is not None:
            return list(self.summary["search_seeds"])
        from oesearch.search.seeds import search_seeds

        return search_seeds(self.config)

    @functools.cached_property
    def fitness_table(self) -> pd.DataFrame:
        """Every fully evaluated individual: ``indices`` (sorted tuple), ``fitness``, ``generation``."""
        return search_fitness_table(self.rows, self.search_seeds)

    @functools.cached_property
    def hall_of_fame(self) -> list[dict[str, Any]]:
        """The hall of fame in rank order: the summary's, or while running the journal's best so far."""
        if self.summary is not None:
            return self.summary["top"]
        table = self.fitness_table.sort_values("fitness", ascending=self.mode == "worst", kind="stable")
        validated = _validated(self.rows)
        top = []
        for rank, (indices, fitness) in enumerate(zip(table["indices"], table["fitness"]), start=1):
            if rank > self.config.search.hall_of_fame:
                break
            mean, std = validated.get(tuple(indices), (math.nan, math.nan))
            top.append({"rank": rank, "indices": list(indices), "search_fitness": float(fitness),
                        "validated_fitness": mean, "validated_std": std})
        return top

    @property
    def generation_reached(self) -> int:
        """The highest generation with a finished training (-1 before the first)."""
        gens = [r["generation"] for r in self.rows if r["purpose"] == "search"]
        return max(gens, default=-1)

    @property
    def generations_finished(self) -> int:
        """How many generations are complete (the logbook's length)."""
        return len(self.logbook)

    @property
    def state(self) -> str:
        """``finished``, ``running`` (its driver holds the run), ``stopped`` (its driver died) or ``unknown``."""
        if self.summary is not None:
            return "finished"
        return {"running": "running", "dead": "stopped"}.get((self.driver or {}).get("state"), "unknown")

    @property
    def resume_command(self) -> str:
        return f"python oesearch/run.py --resume {self.path}"

    def status(self) -> str:
        """One line: finished with its totals, running, or stopped with how far it got and how to resume.

        Generations count as the CLI does: the initial generation (0) plus
        ``search.generations``; "generation g of N" is generation g of 0..N.
        """
        total = self.config.search.generations
        if self.summary is not None:
            return (f"finished: initial generation plus {total}, {self.summary['evaluations']} trainings, "
                    f"{self.summary['wall_seconds']:.0f} s")
        g = max(self.generation_reached, 0)
        progress = f"{self.generations_finished} finished, {len(self.rows)} trainings so far"
        if self.state == "running":
            return f"running: generation {g} of {total} in progress, {progress} (driver pid {self.driver.get('pid')})"
        if self.state == "stopped":
            if self.generation_reached < 0:
                return f"stopped before its first training finished (resume with {self.resume_command})"
            return f"stopped at generation {g} of {total}: {progress} (resume with {self.resume_command})"
        return (f"partial: generation {g} of {total} reached, {progress} (running or stopped: "
                "its driver cannot be checked from here)")


def distinct_labels(runs: Sequence[Run]) -> list[str]:
    """Each run's :attr:`Run.label`, plus whatever else tells these runs apart: experiment, class, seed,
    and, for runs alike in all of those, the run directory's start time."""
    names = {r.config.name for r in runs}
    classes = {r.normal_class for r in runs}
    seeds = {r.config.run.seed for r in runs}
    labels = []
    for run in runs:
        extra = [run.config.name] if len(names) > 1 else []
        extra += [f"class {run.normal_class}"] if len(classes) > 1 else []
        extra += [f"seed {run.config.run.seed}"] if len(seeds) > 1 else []
        labels.append(", ".join([run.label, *extra]))
    for label in set(labels):
        twins = [i for i, lab in enumerate(labels) if lab == label]
        if len(twins) > 1:  # the same experiment run again: the directory name (its start time) tells them apart
            for i in twins:
                labels[i] = f"{label}, run {runs[i].path.name[:15]}"
    return labels


def _validated(rows: Sequence[dict[str, Any]]) -> dict[tuple, tuple[float, float]]:
    """(mean, std) of the validation AUC per individual validated so far (a race gives them different seeds)."""
    by_key: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["purpose"] == "validate" and r["status"] == "ok":
            by_key.setdefault(tuple(sorted(r["indices"])), {})[r["seed"]] = r["auc"]
    return {k: (float(np.mean(list(v.values()))), float(np.std(list(v.values())))) for k, v in by_key.items()}


def load_run(path: str | Path) -> Run:
    """A run directory, finished or not; ``FileNotFoundError`` when it is not one."""
    rundir = RunDir.existing(Path(path))
    config = config_from_dict(read_yaml(rundir.file("config.yaml")))
    rows = rundir.journal_rows()
    summary_file = rundir.file("summary.json")
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        logbook = pd.read_csv(rundir.file("generations.csv"))
        genealogy = json.loads(rundir.file("genealogy.json").read_text())
    else:
        summary, logbook, genealogy = None, pd.DataFrame(), None
        import oesearch.search.individuals  # noqa: F401  registers the DEAP classes the checkpoint holds

        state = rundir.load_checkpoint()
        if state is not None:
            logbook, genealogy = pd.DataFrame(state.logbook), genealogy_dict(state)
    driver = driver_state(rundir.path) if summary is None else None
    return Run(rundir.path, config, rows, summary, logbook, genealogy, driver)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    return [load_run(p) for p in paths]


def find_runs(spec: str | Sequence[str | Path] | None = None, root: str | Path | None = None) -> list[Path]:
    """Run directories named by ``spec`` (``os.pathsep``-separated, or a list), each a run or a folder of runs.

    Without ``spec`` (the notebooks' default when ``OESEARCH_RUNS`` is unset):
    the newest run of each experiment (name, method, mode, strategy, class)
    under ``root``, by default ``runs/`` here or one folder up.
    """
    if isinstance(spec, str):
        spec = [s for s in spec.split(os.pathsep) if s]
    if spec:
        found = []
        for entry in map(Path, spec):
            if not entry.is_dir():
                raise FileNotFoundError(f"{entry}: no such run directory or folder of runs")
            if (entry / "manifest.json").is_file():  # a campaign: its searches
                found += sorted(q.parent for q in (entry / "searches").glob("*/config.yaml"))
            else:
                found += [entry] if (entry / "config.yaml").is_file() else _runs_under(entry)
    else:
        if root is None:
            root = next((p for p in (Path("runs"), Path("../runs")) if p.is_dir()), Path("runs"))
        newest: dict[tuple, Path] = {}
        for path in _runs_under(Path(root)):  # sorted by name, which starts with the start time
            c = config_from_dict(read_yaml(path / "config.yaml"))
            newest[(c.name, c.train.method, c.search.mode, c.search.strategy, c.data.normal_class)] = path
        found = sorted(newest.values())
    if not found:
        raise FileNotFoundError(f"no run directories in {list(map(str, spec or [root]))}; "
                                "name them in OESEARCH_RUNS (separated by os.pathsep)")
    return found


def _runs_under(folder: Path) -> list[Path]:
    """Search run directories in ``folder``; benchmark directories (``<date>-<time>-benchmark-<name>``,
    written by ``oesearch benchmark`` into the same ``runs/``) are not searches and are skipped, and a
    campaign directory (it has ``manifest.json``) stands for its searches (``searches/<id>``)."""
    found = []
    for p in Path(folder).expanduser().glob("*/config.yaml"):
        if (p.parent / "manifest.json").is_file():
            found += [q.parent for q in (p.parent / "searches").glob("*/config.yaml")]
        elif not _BENCHMARK_DIR.match(p.parent.name):
            found.append(p.parent)
    return sorted(found)


_BENCHMARK_DIR = re.compile(r"^\d{8}-\d{6}-benchmark-")


def journal_generation_stats(run: Run) -> pd.DataFrame:
    """Per generation, from the journal alone (so also for the generation in progress).

    ``new`` trainings and ``failed`` ones, the ``evaluated`` individuals that
    first appeared and their ``best`` fitness, the ``best_so_far`` (the hall
    of fame's best after that generation) and the cumulative ``trainings``.
    For an uninterrupted run, ``new``, ``failed`` and ``best_so_far`` equal
    the logbook's ``new``, ``failed`` and ``hof``.
    """
    search = pd.DataFrame([r for r in run.rows if r["purpose"] == "search"])
    columns = ["gen", "new", "failed", "evaluated", "best", "best_so_far", "trainings"]
    if search.empty:
        return pd.DataFrame(columns=columns)
    gens = pd.RangeIndex(int(search["generation"].max()) + 1, name="gen")  # a fully cached generation has no rows
    counts = search.groupby("generation").agg(new=("status", "size"), failed=("status", lambda s: (s != "ok").sum()))
    pick = "max" if run.mode == "best" else "min"
    per_gen = run.fitness_table.groupby("generation")["fitness"].agg(["size", pick])
    frame = pd.DataFrame(index=gens)
    frame[["new", "failed"]] = counts.reindex(gens, fill_value=0).to_numpy()
    frame["evaluated"] = per_gen["size"].reindex(gens, fill_value=0).to_numpy()
    frame["best"] = per_gen[pick].reindex(gens).to_numpy()
    frame["best_so_far"] = getattr(frame["best"], f"cum{pick}")().ffill()  # cummin/cummax keep NaN holes
    frame = frame.reset_index()
    frame["trainings"] = frame["new"].cumsum()
    return frame[columns]


@dataclass(frozen=True)
class RunImages:
    """The images a run's views show: normal training images of its class, and the OE corpus."""

    normal: np.ndarray  # (n, H, W, C) uint8
    class_name: str
    corpus: np.ndarray  # (N, H, W, C) uint8, conformed to the normal images


def run_images(run: Run) -> RunImages:
    """Reload the images through the run's saved data config (from the decode cache; no neighbour index)."""
    return _images(run.config.data)


@functools.lru_cache(maxsize=4)  # runs of one experiment share their data
def _images(data: DataConfig) -> RunImages:
    from oesearch.data import load_corpus, load_normal, one_vs_rest

    train = load_normal(data.normal, "train", data.cache_dir)
    test = load_normal(data.normal, "test", data.cache_dir)
    task = one_vs_rest(train, test, data.normal_class)
    corpus = load_corpus(data.corpus, task.image_shape, data.cache_dir)
    return RunImages(task.train, task.class_name, corpus.images)
