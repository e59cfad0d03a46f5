"""One search from config to run directory: data, index, workers, evolution, validation, outputs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import yaml

from oesearch.config import Config, ConfigError, config_to_dict
from oesearch.data import ImageStore, OneVsRest, corpus_key, load_corpus, load_normal, one_vs_rest
from oesearch.models import resolve_setup
from oesearch.results import RunDir, write_outputs
from oesearch.results.storage import Mirror, is_uri
from oesearch.search.bounds import auto_bound_dims
from oesearch.search.cluster import ClusterLost, cluster_info, connect, current_cluster
from oesearch.search.dispatch import Dispatcher, WorkersLost, plan_workers
from oesearch.search.evolution import Evolution, EvolutionState
from oesearch.search.fitness import FitnessCache, Job
from oesearch.search.metrics import RunMetrics
from oesearch.search.neighbours import NeighbourIndex, duplicate_groups_of
from oesearch.search.problem import FitnessProblem
from oesearch.search.worker import FitnessWorker, WorkerSpec
from oesearch.seeding import derive_seed
from oesearch.training import TrainSettings
from oesearch.training.augment import Augment, filter_mask
from oesearch.training.clip import ClipSpec, check_clip
from oesearch.training.objectives import CLIP_METHODS

__all__ = ["SearchData", "prepare", "worker_spec", "load_task", "load_search_data", "make_dispatcher", "dispatching",
           "stopped_message", "check_against_data", "run_search", "search_seeds", "validation_seeds"]


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
    if t.method in CLIP_METHODS:  # before any worker starts: open_clip, the architecture, the weights file
        try:
            check_clip(t.clip.model, t.clip.weights)
        except (ValueError, ImportError) as err:
            raise ConfigError(f"train.method {t.method}: {err}") from None
    needed = s.population * s.oe_size * (s.generations + 1 if s.strategy == "random" else 1)
    if needed > n:
        what = "random search's budget" if s.strategy == "random" else "initial population"
        raise ConfigError(f"the {what} needs {needed} distinct corpus images but the corpus has {n}")


def search_seeds(config: Config) -> list[int]:
    return [derive_seed(config.run.seed, "repetition", r) for r in range(config.search.repetitions)]


def validation_seeds(config: Config) -> list[int]:
    return [derive_seed(config.run.seed, "validation", r) for r in range(config.search.validation_seeds)]


def worker_spec(config: Config) -> WorkerSpec:
    """How workers train and score, from the ``train`` section."""
    t = config.train
    settings = TrainSettings(epochs=t.epochs, lr=t.lr, milestones=tuple(t.milestones), batch_size=t.batch_size,
                             weight_decay=t.weight_decay, augment=Augment(**t.augment.model_dump()),
                             precision=t.precision, channels_last=t.channels_last, compile=t.compile,
                             model=resolve_setup(t.method, **config.model.model_dump()))
    filt = None if t.filter.kind == "none" or t.filter.magnitude == 0 else (t.filter.kind, t.filter.magnitude)
    clip = ClipSpec(**t.clip.model_dump()) if t.method in CLIP_METHODS else None
    return WorkerSpec(t.method, t.hsc_radial, settings, filt, t.focal_gamma, t.focal_alpha, clip)


def make_dispatcher(config: Config, task: OneVsRest, images: np.ndarray, run_id: str, worker_class: Any,
                    log: Callable[[str], None]) -> tuple[Dispatcher, str]:
    """Fitness workers sized to the cluster; each holds the task, a job carries only its OE images.

    A job's indices point into ``images`` (the corpus, or the images of ``oesearch evaluate``).
    """
    r = config.run
    spec = worker_spec(config)
    count, options, kind = plan_workers(r.workers, r.gpus_per_worker, log=log)

    def payload(job: Job) -> tuple[np.ndarray]:
        return (np.ascontiguousarray(images[list(job.indices)]),)

    task_ref = ray.put(task)  # one copy in the object store, shared by every worker
    dispatcher = Dispatcher(worker_class, (task_ref, spec), payload, count, options, max_retries=r.max_retries,
                            eval_timeout=r.eval_timeout, name=f"oesearch-{run_id}",
                            pack=None if r.pack == "auto" else r.pack)
    return dispatcher, kind


def stopped_message(cluster, rundir: RunDir, err: BaseException, command: str = "python oesearch/run.py") -> str:
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


@contextmanager
def dispatching(dispatcher: Dispatcher, rundir: RunDir, cluster, command: str = "python oesearch/run.py"):
    """Run jobs on ``dispatcher``; a cluster that stops serving them becomes :class:`ClusterLost` with the
    ``command --resume`` that continues; the journal is closed and the workers shut down however it ends."""
    try:
        yield
    except (WorkersLost, ray.exceptions.RaySystemError, ConnectionError) as err:
        rundir.close()
        raise ClusterLost(stopped_message(cluster, rundir, err, command)) from err
    finally:
        rundir.close()
        try:
            dispatcher.shutdown()
        except Exception:  # noqa: BLE001  a cluster that went away cannot kill its actors; nothing to do
            pass


def prepare(config: Config, log: Callable[[str], None] = print) -> SearchData:
    """Load the data and check the config against it, before anything is written."""
    data = load_search_data(config, log)
    check_against_data(config, data)
    return data


def run_search(config: Config, rundir: RunDir, data: SearchData | None = None,
               log: Callable[[str], None] = print, progress: bool = True,
               worker_class: Any = FitnessWorker) -> dict[str, Any]:
    """Run (or, when ``rundir`` holds a checkpoint or journal, continue) a search; return its summary.

    ``worker_class`` is the Ray actor class that evaluates jobs: a subclass of
    :class:`~oesearch.search.worker.FitnessWorkerBase` wrapped by ``ray.remote``.
    """
    wall_start = time.perf_counter()
    rundir.claim()  # one driver per run directory; readers can tell a live run from a dead one
    try:
        return _run_claimed(config, rundir, data, log, progress, worker_class, wall_start)
    finally:
        rundir.release()


def _run_claimed(config: Config, rundir: RunDir, data: SearchData | None, log: Callable[[str], None],
                 progress: bool, worker_class: Any, wall_start: float) -> dict[str, Any]:
    state = rundir.load_checkpoint(log=log)
    earlier_seconds = state.elapsed if state is not None else 0.0  # time spent before a kill
    if not rundir.file("config.yaml").exists():
        rundir.write_text("config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    data = data or prepare(config, log)
    mirror = Mirror(config.run.storage, rundir.path) if config.run.storage and is_uri(config.run.storage) else None

    connect(config.run.address, log)
    cluster = current_cluster() or cluster_info(joined=True, source="Ray initialised by the caller")
    dispatcher, device_kind = make_dispatcher(config, data.task, data.corpus.images, rundir.path.name, worker_class,
                                              log)
    metrics = RunMetrics(rundir.path.name, config.train.method, config.search.mode)
    rows = rundir.journal_rows()
    for problem in rundir.dropped:
        log(f"warning: {rundir.file(rundir.journal_name)}: {problem}; skipped it, so that evaluation runs again")
    if rows or state is not None:
        log(f"resuming: {len(rows)} finished evaluations in the journal, "
            f"checkpoint after generation {state.generation if state else 'none'}")

    def journal(row: dict[str, Any]) -> None:
        rundir.append(row)
        metrics.record_row(row)

    def after_generation(finished: EvolutionState) -> None:
        rundir.save_checkpoint(finished)
        last = finished.logbook[-1]
        metrics.record_generation(finished.generation, last["min"], last["max"])
        if mirror:
            mirror.sync()

    problem = FitnessProblem(
        normal_class=config.data.normal_class,
        corpus_size=len(data.corpus),
        mode=config.search.mode,
        search_seeds=search_seeds(config),
        validation_seeds=validation_seeds(config),
        run_jobs=dispatcher.run,
        journal=journal,
        cache=FitnessCache(rows),
        progress=progress,
    )
    log(f"search: {config.search.strategy}, {config.train.method} {config.search.mode}, population "
        f"{config.search.population}, the initial generation plus {config.search.generations}, {len(dispatcher.slots)} "
        f"{device_kind} workers; run id {rundir.path.name}")
    evolution = Evolution(problem, config.search, data.index, config.run.seed, checkpoint=after_generation, log=log)
    with dispatching(dispatcher, rundir, cluster):
        state = evolution.run(state)
        validated = problem.validate([list(ind) for ind in state.hall_of_fame])
    summary = write_outputs(
        rundir,
        config=config,
        state=state,
        validated=validated,
        rows=rundir.journal_rows(),
        search_seeds=problem.search_seeds,
        normal_train=data.task.train,
        class_name=data.task.class_name,
        corpus_images=data.corpus.images,
        wall_seconds=earlier_seconds + (time.perf_counter() - wall_start),
    )
    try:  # the report is a view of the files above: failing to draw it must not fail the run
        from oesearch.analysis.html_report import write_report

        log(f"report: {write_report([rundir.path])}")
    except Exception as err:  # noqa: BLE001
        log(f"warning: could not write report.html ({type(err).__name__}: {err}); `oesearch report {rundir.path}` retries")
    if mirror:
        mirror.sync()
    for entry in summary["top"]:
        log(f"hall of fame #{entry['rank']}: indices {entry['indices']} search {entry['search_fitness']:.4f} "
            f"validated {entry['validated_fitness']:.4f} +- {entry['validated_std']:.4f}")
    return summary
