"""What a benchmark runs: its cells, and the data each cell trains and tests on.

A *cell* is one training plus its test AUC: (class, method, OE size,
repetition).  Everything here is a pure function of the config and the data
stores, so the driver (which plans and validates) and the workers (which
train) derive the same task and the same OE from a cell's few fields, using
the protocols of :mod:`oesearch.data.splits`:

- ``one_vs_rest`` / ``leave_one_class_out``: the task from ``one_vs_rest`` /
  ``leave_one_class_out``; the OE pool is the configured corpus;
- ``split``: ``split_protocol`` with ``split_oe_classes`` OE classes drawn
  from ``run.seed`` and the normal class; the OE pool is the training images
  of those classes (``data.corpus`` is not used).

From the pool, an OE size ``all`` takes every image; an integer k takes
``oe_subset`` (k images) or, with ``oe_draw: classes``, ``oe_classes`` (every
image of k classes), drawn anew per repetition from ``run.seed``: the same
draw for every class and method of a repetition, so methods compare on the
same OE.  A cell's training seed is ``derive_seed(run.seed, "benchmark",
repetition)``, likewise shared by the methods.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
from pydantic import ValidationError

from oesearch.config import Config, ConfigError, TrainConfig
from oesearch.data import DataError, ImageStore, load_corpus, load_normal
from oesearch.data.splits import (ClassSplit, leave_one_class_out, oe_classes, oe_size_sweep, oe_subset, one_vs_rest,
                                  split_classes, split_protocol)
from oesearch.methods import CLIP_METHODS
from oesearch.seeding import derive_seed
from oesearch.training.augment import filter_mask
from oesearch.training.clip import check_clip
from oesearch.training.settings import WorkerSpec, worker_spec as config_worker_spec

__all__ = ["Cell", "BenchData", "BenchSetup", "BenchPlan", "load_bench_data", "method_train", "plan_benchmark",
           "class_data", "oe_index", "cell_seed"]


@dataclass(frozen=True)
class Cell:
    """One training of the benchmark; plain data, so it crosses process boundaries."""

    protocol: str
    class_index: int  # the normal class (leave_one_class_out: the anomalous class)
    class_name: str
    method: str
    oe_draw: str  # "images" or "classes"
    oe_label: str  # "all" or str(k)
    oe_size: int  # k images (oe_draw classes: k classes); for "all" the whole pool
    oe_images: int  # how many OE images the training sees
    oe_classes: tuple[int, ...] | None  # the classes the OE comes from, where that is known (classes draw, split)
    test_classes: tuple[int, ...] | None  # split: the anomaly classes at test time
    repetition: int
    seed: int

    @property
    def key(self) -> str:
        """Unique within a benchmark; the journal's identity of the cell."""
        return f"c{self.class_index}/{self.method}/oe={self.oe_label}/r{self.repetition}"

    @property
    def name(self) -> str:
        """Readable label for the Ray dashboard, e.g. ``bench[c3 hsc oe=all r1]``."""
        return f"bench[c{self.class_index} {self.method} oe={self.oe_label} r{self.repetition}]"

    def failed_row(self) -> dict[str, Any]:
        """The row of this job when it failed without an answer (the dispatcher adds the reason)."""
        return self.row(auc=None, status="failed", reason=None, seconds=None, worker=None, node=None, device=None)

    def row(self, **result: Any) -> dict[str, Any]:
        """A journal (and results table) row: this cell's identity plus ``result``."""
        return {
            "cell": self.key,
            "protocol": self.protocol,
            "class": self.class_index,
            "class_name": self.class_name,
            "method": self.method,
            "oe_draw": self.oe_draw,
            "oe_size": self.oe_size,
            "oe_all": self.oe_label == "all",
            "oe_images": self.oe_images,
            "oe_classes": None if self.oe_classes is None else list(self.oe_classes),
            "test_classes": None if self.test_classes is None else list(self.test_classes),
            "repetition": self.repetition,
            "seed": self.seed,
            **result,
        }


@dataclass(frozen=True)
class BenchData:
    """The stores every worker holds: normal train and test splits, and the OE corpus (None under split)."""

    train: ImageStore
    test: ImageStore
    corpus: ImageStore | None


@dataclass(frozen=True)
class BenchSetup:
    """What a worker needs besides the data: the protocol and how each method trains."""

    protocol: str
    oe_draw: str
    split_oe_classes: int
    run_seed: int
    specs: dict[str, WorkerSpec] = field(default_factory=dict)
    prompt_name: str | None = None  # CLIP prompts' class name where the class names do not say it (MVTec: the category)


@dataclass(frozen=True)
class BenchPlan:
    setup: BenchSetup
    classes: tuple[int, ...]
    oe_labels: tuple[str, ...]
    cells: tuple[Cell, ...]


def cell_seed(run_seed: int, repetition: int) -> int:
    return derive_seed(run_seed, "benchmark", repetition)


def load_bench_data(config: Config) -> BenchData:
    """Normal train/test stores and (except under split) the corpus conformed to their image shape."""
    d = config.data
    train = load_normal(d.normal, "train", d.cache_dir)
    test = load_normal(d.normal, "test", d.cache_dir)
    corpus = None
    if config.benchmark.protocol != "split":
        corpus = load_corpus(d.corpus, train.image_shape, d.cache_dir)
        # One plain array (not a memory map): it goes into Ray's object store once.
        corpus = ImageStore(np.ascontiguousarray(corpus.images), np.asarray(corpus.labels), corpus.class_names)
    return BenchData(train, test, corpus)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def method_train(config: Config, method: str) -> TrainConfig:
    """``train`` with ``method`` and ``benchmark.overrides[method]`` applied (nested sections merge)."""
    override = config.benchmark.overrides.get(method, {})
    merged = _merge(config.train.model_dump(), {**override, "method": method})
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as err:
        lines = [f"benchmark.overrides.{method}.{'.'.join(map(str, e['loc'])) or '(train)'}: {e['msg']} "
                 f"(got {e.get('input')!r})" if e["loc"] else f"benchmark.overrides.{method}: {e['msg']}"
                 for e in err.errors()]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _class_names(data: BenchData) -> tuple[str, ...]:
    return data.train.class_names


def _pool_labels(config: Config, data: BenchData, cls: int) -> tuple[np.ndarray, ClassSplit | None]:
    """Labels of a class's OE pool (its images stay where they are), and its split."""
    b = config.benchmark
    if b.protocol != "split":
        return np.asarray(data.corpus.labels), None
    split = split_classes(len(_class_names(data)), cls, b.split_oe_classes, config.run.seed)
    return np.asarray(data.train.labels[np.isin(data.train.labels, split.oe_classes)]), split


def plan_benchmark(config: Config, data: BenchData,
                   worker_spec: Callable[[Config], WorkerSpec] = config_worker_spec) -> BenchPlan:
    """Every cell of the benchmark, in class, method, size, repetition order; raise ConfigError on bad values.

    ``worker_spec`` turns each method's config into its workers' settings (the config bridge by default).
    """
    b = config.benchmark
    names = _class_names(data)
    n_classes = len(names)
    listing = ", ".join(f"{i}={name}" for i, name in enumerate(names))
    classes = tuple(range(n_classes)) if b.classes == "all" else tuple(b.classes)
    for cls in classes:
        if not 0 <= cls < n_classes:
            raise ConfigError(f"benchmark.classes: class {cls} is out of range; this dataset has {n_classes} "
                              f"classes: {listing}")
    if b.protocol == "split" and not 1 <= b.split_oe_classes <= n_classes - 2:
        raise ConfigError(f"benchmark.split_oe_classes={b.split_oe_classes} leaves no anomaly class at test time: "
                          f"with {n_classes} classes it must lie in [1, {n_classes - 2}]")
    if b.protocol == "leave_one_class_out" and n_classes < 2:
        raise ConfigError("benchmark.protocol leave_one_class_out needs at least 2 classes")

    specs = {}
    for method in b.methods:
        train = method_train(config, method)
        if train.filter.kind != "none":
            try:
                filter_mask(train.filter.kind, train.filter.magnitude, *data.train.image_shape[:2])
            except ValueError as err:
                raise ConfigError(f"train.filter ({method}): {err}") from None
        specs[method] = worker_spec(config.model_copy(update={"train": train}))
        if method in CLIP_METHODS:
            if b.protocol == "leave_one_class_out":
                raise ConfigError(f"benchmark.methods: {method} prompts with one normal class; leave_one_class_out "
                                  "has several normal classes, which is not supported")
            check_clip(train.clip.model, train.clip.weights)  # before any worker starts
    prompt_name = config.data.normal.category if config.data.normal.kind == "mvtec" else None
    setup = BenchSetup(b.protocol, b.oe_draw, b.split_oe_classes, config.run.seed, specs, prompt_name)

    pools = {cls: _pool_labels(config, data, cls) for cls in classes}
    unit = "classes" if b.oe_draw == "classes" else "images"
    what = "the split's OE classes" if b.protocol == "split" else "the OE corpus"

    def pool_size(labels: np.ndarray) -> int:
        return len(np.unique(labels)) if b.oe_draw == "classes" else len(labels)

    smallest = min(pool_size(labels) for labels, _ in pools.values())
    if smallest < 1:
        raise ConfigError(f"{what} holds no images")
    if b.oe_sizes == "sweep":
        labels = [str(k) for k in oe_size_sweep(smallest)[:-1]] + ["all"]
    else:
        for k in b.oe_sizes:
            if k != "all" and k > smallest:
                raise ConfigError(f"benchmark.oe_sizes: {k} exceeds {what}, which has {smallest} {unit}"
                                  + (" (for the class with the fewest)" if b.protocol == "split" else ""))
        labels = [str(k) for k in b.oe_sizes]

    cells = []
    for cls in classes:
        pool, split = pools[cls]
        for method in b.methods:
            for label in labels:
                for rep in range(b.seeds):
                    k = pool_size(pool) if label == "all" else int(label)
                    drawn: tuple[int, ...] | None = split.oe_classes if split else None
                    if label == "all":
                        count = len(pool)
                        if b.oe_draw == "classes":
                            drawn = tuple(int(c) for c in np.unique(pool))
                    elif b.oe_draw == "classes":
                        chosen = oe_classes(SimpleNamespace(labels=pool), k, config.run.seed, rep)
                        drawn, count = chosen.classes, len(chosen.index)
                    else:
                        count = k
                    cells.append(Cell(b.protocol, cls, names[cls], method, b.oe_draw, label, k, count, drawn,
                                      split.test_classes if split else None, rep, cell_seed(config.run.seed, rep)))
    return BenchPlan(setup, classes, tuple(labels), tuple(cells))


def class_data(setup: BenchSetup, data: BenchData, cls: int):
    """The task of class ``cls`` under the protocol (what the trainer trains and tests on) and its OE pool."""
    if setup.protocol == "one_vs_rest":
        return one_vs_rest(data.train, data.test, cls), data.corpus
    if setup.protocol == "leave_one_class_out":
        return leave_one_class_out(data.train, data.test, cls), data.corpus
    if setup.protocol == "split":
        st = split_protocol(data.train, data.test, cls, setup.split_oe_classes, setup.run_seed)
        return st.task, st.oe
    raise DataError(f"unknown protocol {setup.protocol!r}")


def oe_index(setup: BenchSetup, pool: ImageStore, cell: Cell) -> np.ndarray | None:
    """Positions in ``pool`` of the cell's OE images; None: the whole pool."""
    if cell.oe_label == "all":
        return None
    k = int(cell.oe_label)
    if setup.oe_draw == "classes":
        return oe_classes(pool, k, setup.run_seed, cell.repetition).index
    return oe_subset(len(pool), k, setup.run_seed, cell.repetition)
