"""The search root: data, index, workers, evolution, validation, outputs of one search.

It composes the search's rooms (:mod:`oesearch.search`) on the shared run context
(:mod:`oesearch.experiments.context`); the HTML report is a hook the caller passes in.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from oesearch.config import Config, ConfigError
from oesearch.data import ImageStore, OneVsRest, corpus_key, load_corpus, load_normal, one_vs_rest
from oesearch.distributed.fitness_worker import FitnessWorker
from oesearch.distributed.pool import SharedPool
from oesearch.experiments.context import RUN_COMMAND, run_context
from oesearch.methods import method
from oesearch.results import RunDir, write_outputs
from oesearch.results.summary import search_fitness_table
from oesearch.search.bounds import auto_bound_dims
from oesearch.search.evolution import Evolution, EvolutionState, random_individuals
from oesearch.search.fitness import FitnessCache, Job
from oesearch.search.neighbours import NeighbourIndex, duplicate_groups_of
from oesearch.search.problem import FitnessProblem
from oesearch.search.seeds import repetition_seed, search_seeds, validation_seeds
from oesearch.search.statistics import Signal, compare_to_panel, mean_ci, variance_components
from oesearch.search.validation import Finalist, fixed, race
from oesearch.training.augment import filter_mask
from oesearch.training.clip import check_clip
from oesearch.training.settings import worker_spec

__all__ = ["SearchData", "prepare", "load_task", "load_search_data", "check_against_data", "run_search",
           "generation_zero_signal", "auc_matrix", "report_signal", "validate", "describe_entry", "image_payload",
           "Report"]

Report = Callable[[Path], Path]  # writes a run directory's report.html, returns its path


@dataclass
class SearchData:
    task: OneVsRest
    corpus: ImageStore
    index: NeighbourIndex


def load_task(config: Config) -> OneVsRest:
    """The one-vs-rest task of ``data.normal`` and ``data.normal_class`` (decoded stores are cached)."""
    d = config.data
    return one_vs_rest(load_normal(d.normal, "train", d.cache_dir), load_normal(d.normal, "test", d.cache_dir),
                       d.normal_class)


def load_search_data(config: Config, log: Callable[[str], None] = print) -> SearchData:
    """Normal task, OE corpus conformed to its image shape, and the neighbour index (all cached)."""
    d = config.data
    task = load_task(config)
    corpus = load_corpus(d.corpus, task.image_shape, d.cache_dir)
    start = time.perf_counter()
    ix = config.search.index
    dim = int(np.prod(task.image_shape))
    if ix.kind == "ivfpq" and dim % ix.pq_m:
        raise ConfigError(f"search.index.pq_m={ix.pq_m} must divide the image size {dim}")
    key = corpus_key(d.corpus, task.image_shape)
    bound_dims = auto_bound_dims(len(corpus), dim) if ix.bound_dims == "auto" else ix.bound_dims
    if ix.kind == "flat" and bound_dims:
        if bound_dims >= dim:
            raise ConfigError(f"search.index.bound_dims={bound_dims} must be smaller than the image size {dim}")
        key = f"{key}-bound{bound_dims}"
    if ix.kind != "flat":  # the flat index keeps its old cache name; IVF ones carry their build settings
        key = f"{key}-{ix.kind}-{ix.nlist or 'auto'}" + (f"-pq{ix.pq_m}" if ix.kind == "ivfpq" else "")
    cache_path = Path(d.cache_dir).expanduser() / f"{key}.faiss"
    index = NeighbourIndex.build_or_load(lambda: index_inputs(corpus), cache_path, key, len(corpus), kind=ix.kind,
                                         nlist=ix.nlist, nprobe=ix.nprobe, pq_m=ix.pq_m, bound_dims=bound_dims)
    how = "loaded" if index.loaded_from_cache else f"built in {index.build_seconds:.2f}s"
    log(
        f"data: {len(task.train)} normal training images of class {task.normal_class} ({task.class_name}), "
        f"{len(task.test)} test images, corpus of {len(corpus)} {task.image_shape} images; "
        f"{index.kind} neighbour index {how} ({index.memory_bytes / 2**20:.1f} MiB) in {time.perf_counter() - start:.2f}s"
    )
    return SearchData(task, corpus, index)


def index_inputs(corpus: ImageStore) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour-index vectors (pixels in [0, 1], as the model sees the images) and duplicate groups."""
    vectors = np.asarray(corpus.images, dtype=np.float32).reshape(len(corpus), -1) / 255.0
    return vectors, duplicate_groups_of(corpus.images)


def check_against_data(config: Config, data: SearchData) -> None:
    """Config values that only make sense once the corpus size is known."""
    s, n = config.search, len(data.corpus)
    if s.pool != "all" and s.pool > n:
        raise ConfigError(f"search.pool={s.pool} exceeds the corpus of {n} images; set search.pool <= {n} or 'all'")
    if s.k_nearest >= n:
        raise ConfigError(f"search.k_nearest={s.k_nearest} must be smaller than the corpus of {n} images")
    f = config.train.filter
    if f.kind != "none":
        height, width = data.task.image_shape[:2]
        try:
            filter_mask(f.kind, f.magnitude, height, width)
        except ValueError as err:
            raise ConfigError(f"train.filter: {err}") from None
    t = config.train
    if method(t.method).clip:  # before any worker starts: open_clip, the architecture, the weights file
        try:
            check_clip(t.clip.model, t.clip.weights)
        except (ValueError, ImportError) as err:
            raise ConfigError(f"train.method {t.method}: {err}") from None
    needed = max(s.population * (s.generations + 1 if s.strategy == "random" else 1),
                 s.validation.random_panel) * s.oe_size
    if needed > n:
        what = "random search's budget" if s.strategy == "random" else "initial population"
        raise ConfigError(f"the {what} needs {needed} distinct corpus images but the corpus has {n}")


def prepare(config: Config, log: Callable[[str], None] = print) -> SearchData:
    """Load the data and check the config against it, before anything is written."""
    data = load_search_data(config, log)
    check_against_data(config, data)
    return data


def image_payload(images: np.ndarray) -> Callable[[Job], tuple[np.ndarray]]:
    """What a fitness job carries: its OE image(s), gathered from ``images`` (the corpus, or evaluate's files)."""
    def payload(job: Job) -> tuple[np.ndarray]:
        return (np.ascontiguousarray(images[list(job.indices)]),)

    return payload


def run_search(config: Config, rundir: RunDir, data: SearchData | None = None,
               log: Callable[[str], None] = print, progress: bool = True,
               worker_class: Any = FitnessWorker, report: Report | None = None,
               pool: SharedPool | None = None, task: str | None = None) -> dict[str, Any]:
    """Run (or, when ``rundir`` holds a checkpoint or journal, continue) a search; return its summary.

    In a campaign, ``pool`` is the workers it shares with the other searches and ``task`` the
    worker task its jobs name (see :mod:`oesearch.experiments.campaign`); nothing else changes.

    ``worker_class`` is the Ray actor class that evaluates jobs: a subclass of
    :class:`~oesearch.distributed.fitness_worker.FitnessWorkerBase` wrapped by ``ray.remote``.
    ``report`` (e.g. :func:`oesearch.analysis.html_report.write_report`) draws ``report.html`` at the end.
    """
    wall_start = time.perf_counter()
    rundir.claim()  # one driver per run directory; readers can tell a live run from a dead one
    try:
        return _run_claimed(config, rundir, data, log, progress, worker_class, report, wall_start, pool, task)
    finally:
        rundir.release()


def _run_claimed(config: Config, rundir: RunDir, data: SearchData | None, log: Callable[[str], None],
                 progress: bool, worker_class: Any, report: Report | None, wall_start: float,
                 pool: SharedPool | None = None, task: str | None = None) -> dict[str, Any]:
    state = rundir.load_checkpoint(log=log)
    earlier_seconds = state.elapsed if state is not None else 0.0  # time spent before a kill
    data = data or prepare(config, log)
    with run_context(config, rundir, worker_class=worker_class, shared=data.task, args=(worker_spec(config),),
                     payload=image_payload(data.corpus.images), method=config.train.method,
                     mode=config.search.mode, command=RUN_COMMAND, log=log, pool=pool) as ctx:
        rows = rundir.journal_rows()
        if rows or state is not None:
            log(f"resuming: {len(rows)} finished evaluations in the journal, "
                f"checkpoint after generation {state.generation if state else 'none'}")

        def after_generation(finished: EvolutionState) -> None:
            rundir.save_checkpoint(finished)
            if finished.generation == 0:
                report_signal(generation_zero_signal(config, problem), log)
            last = finished.logbook[-1]
            ctx.metrics.record_generation(finished.generation, last["min"], last["max"])
            ctx.sync()

        problem = FitnessProblem(
            normal_class=config.data.normal_class,
            corpus_size=len(data.corpus),
            mode=config.search.mode,
            search_seeds=search_seeds(config),
            run_jobs=ctx.run_jobs,
            journal=ctx.journal,
            cache=FitnessCache(rows),
            progress=progress,
            seed_of=lambda r: repetition_seed(config.run.seed, r),
            rescore_seeds=config.search.rescore_seeds,
            task=task,
        )
        log(f"search: {config.search.strategy}, {config.train.method} {config.search.mode}, population "
            f"{config.search.population}, the initial generation plus {config.search.generations}, {ctx.workers} "
            f"{ctx.device_kind} workers; run id {rundir.path.name}")
        evolution = Evolution(problem, config.search, data.index, config.run.seed, checkpoint=after_generation,
                              log=log)
        state = evolution.run(state)
        top, extra = validate(config, problem, state, rundir.journal_rows(), log)
    signal = generation_zero_signal(config, problem)
    summary = write_outputs(
        rundir,
        config=config,
        state=state,
        top=top,
        extra={"signal": signal.as_dict() if signal else None, **extra},
        rows=rundir.journal_rows(),
        search_seeds=problem.search_seeds,
        normal_train=data.task.train,
        class_name=data.task.class_name,
        corpus_images=data.corpus.images,
        wall_seconds=earlier_seconds + (time.perf_counter() - wall_start),
    )
    if report is not None:
        try:  # the report is a view of the files above: failing to draw it must not fail the run
            log(f"report: {report(rundir.path)}")
        except Exception as err:  # noqa: BLE001
            log(f"warning: could not write report.html ({type(err).__name__}: {err}); "
                f"`oesearch report {rundir.path}` retries")
    ctx.sync()
    for entry in summary["top"]:
        log(describe_entry(entry, config.search.mode))
    return summary


# --- how much of a fitness is the image, and is the find better than a random image ---------------------------


def generation_zero_signal(config: Config, problem: FitnessProblem) -> Signal | None:
    """Variance components of generation 0: a random sample of images, each on the search seeds."""
    s = config.search
    if len(problem.search_seeds) < 2:
        return None
    individuals = random_individuals(config.run.seed, problem.corpus_size, s.population, s.oe_size)
    matrix = auc_matrix(problem, individuals, problem.search_seeds)
    try:
        return variance_components(matrix, s.repetitions)
    except ValueError:  # fewer than two images finished every seed
        return None


def auc_matrix(problem: FitnessProblem, individuals: Sequence[Sequence[int]], seeds: Sequence[int]) -> np.ndarray:
    """Images x seeds test AUCs from the cache (NaN: failed or not trained)."""
    return as_matrix(problem.cached_aucs(individuals, seeds), len(seeds))


def as_matrix(aucs: Sequence[Sequence[float | None]], seeds: int) -> np.ndarray:
    """Per-individual AUC lists (None: failed or missing) as an images x seeds float array with NaN."""
    values = [math.nan if a is None else a for row in aucs for a in row]
    return np.asarray(values, dtype=float).reshape(len(aucs), seeds)


def report_signal(signal: Signal | None, log: Callable[[str], None], source: str = "generation 0, ") -> None:
    """Print the variance components, and a plain warning when the fitness is mostly seed noise."""
    if signal is None:
        return
    log(f"signal ({source}{signal.images} images x {signal.seeds} seeds): image SD {signal.image_sd:.4f}, "
        f"seed SD {signal.seed_sd:.4f}, ICC {signal.icc:.3f}; a {signal.repetitions}-seed fitness has "
        f"reliability {signal.reliability:.3f}")
    advice = signal.advice()
    if advice:
        log(f"warning: {advice}")


def validate(config: Config, problem: FitnessProblem, state: EvolutionState, rows: Sequence[dict[str, Any]],
             log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Re-score the finalists on fresh seeds (race or fixed), then compare each with the random panel.

    Returns the ``top`` entries in final rank order and the summary's ``random_panel`` and ``validation``.
    Every training goes through the journal and cache, so a killed validation resumes where it stopped and
    repeats the same decisions.
    """
    s, v = config.search, config.search.validation
    mode, seeds = s.mode, validation_seeds(config)

    def score(finalists: list[Finalist], new_seeds: list[int]) -> list[list[float]]:
        aucs = problem.scores([list(f.indices) for f in finalists], new_seeds, "validate", "validate")
        return as_matrix(aucs, len(new_seeds)).tolist()

    table = search_fitness_table(rows, problem.search_seeds)  # the mean over every search training of each
    if v.scheme == "race":
        table = table.sort_values("fitness", ascending=mode == "worst", kind="stable").head(2 * s.hall_of_fame)
        finalists = [Finalist(tuple(int(i) for i in idx), float(f), []) for idx, f in
                     zip(table["indices"], table["fitness"])]
        if seeds and finalists:
            log(f"validation: race of the top {len(finalists)} by search fitness on up to {len(seeds)} fresh seeds")
            finalists = race(finalists, seeds, score, mode, first=v.seeds, step=v.round_seeds, level=v.level,
                             keep=s.hall_of_fame, log=log)
        raced = sum(f.seeds for f in finalists)  # the dropped candidates' trainings count too
        finalists = finalists[: s.hall_of_fame]
    else:
        fitness = dict(zip(table["indices"], table["fitness"]))
        finalists = [Finalist(tuple(int(i) for i in ind),
                              float(fitness.get(tuple(sorted(ind)), ind.fitness.values[0])), [])
                     for ind in state.hall_of_fame]
        if seeds:
            finalists = fixed(finalists, seeds, score, mode)
        raced = sum(f.seeds for f in finalists)

    used = max((f.seeds for f in finalists), default=0)
    panel_individuals = random_individuals(config.run.seed, problem.corpus_size, v.random_panel, s.oe_size)
    panel_seeds = seeds[:used]
    if panel_individuals and panel_seeds:
        log(f"validation: a random panel of {len(panel_individuals)} generation-0 images on the same "
            f"{len(panel_seeds)} fresh seeds")
        problem.scores(panel_individuals, panel_seeds, "panel", "random panel")
    panel = auc_matrix(problem, panel_individuals, panel_seeds)
    complete = panel[np.isfinite(panel).all(axis=1)] if panel.size else panel
    means = complete.mean(axis=1) if complete.size else np.array([])
    random_panel = {"images": int(len(complete)), "seeds": len(panel_seeds),
                    "mean": float(means.mean()) if means.size else None,
                    "sd": float(means.std(ddof=1)) if means.size > 1 else None}

    top = []
    for rank, f in enumerate(finalists, start=1):
        aucs = np.asarray(f.aucs, dtype=float)
        ok = aucs[np.isfinite(aucs)]
        mean, lo, hi = mean_ci(ok, v.level) if ok.size else (math.nan, math.nan, math.nan)
        entry: dict[str, Any] = {
            "rank": rank, "indices": list(f.indices), "search_fitness": f.search_fitness,
            "validated_fitness": mean, "validated_std": float(np.std(ok)) if ok.size else math.nan,
            "validated_seeds": int(ok.size), "validated_ci95": [lo, hi],
            "random_percentile": None, "vs_random": None, "distinguishable": None,
        }
        if v.scheme == "race":
            entry["race"] = "survived" if f.dropped_at is None else f"dropped after {f.dropped_at} seeds"
        others = [i for i, ind in enumerate(panel_individuals) if sorted(ind) != sorted(f.indices)]
        own = panel[others, : f.seeds] if others else panel[:0, : f.seeds]
        own = own[np.isfinite(own).all(axis=1)] if own.size else own
        if len(own) and ok.size == f.seeds and f.seeds:
            cmp = compare_to_panel(aucs, own, mode, v.level)
            entry.update(random_percentile=cmp.percentile,
                         vs_random={"difference": cmp.difference, "ci95": list(cmp.ci95)},
                         distinguishable=cmp.distinguishable)
        top.append(entry)
    validation = {"scheme": v.scheme, "seeds": seeds, "level": v.level, "trainings": raced,
                  "panel_trainings": int(panel.size)}
    return top, {"random_panel": random_panel, "validation": validation}


def describe_entry(entry: dict[str, Any], mode: str) -> str:
    """One line per hall-of-fame entry: search and validated fitness, CI, and how it compares with random images."""
    line = (f"hall of fame #{entry['rank']}: indices {entry['indices']} search {entry['search_fitness']:.4f} "
            f"validated {entry['validated_fitness']:.4f}")
    lo, hi = entry.get("validated_ci95") or (math.nan, math.nan)
    if lo is not None and math.isfinite(lo):
        line += f" [{lo:.4f}, {hi:.4f}] on {entry['validated_seeds']} seeds"
    if entry.get("vs_random"):
        d = entry["vs_random"]
        line += (f"; beats {100 * entry['random_percentile']:.0f}% of the random panel in {mode} mode, "
                 f"{d['difference']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] vs its mean"
                 + ("" if entry["distinguishable"] else " (not distinguishable from a random image)"))
    return line
