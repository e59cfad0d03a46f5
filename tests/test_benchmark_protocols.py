"""Benchmark wiring: each cell's training data, test data and OE are what ``oesearch.data.splits`` says.

Small synthetic stores whose every image names itself (class and position in
its pixels) go through the real planner and the real worker class (in
process, without Ray), so the test can see exactly which images a cell trains
on, tests on and uses as OE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oesearch.sweep.cells import BenchData, plan_benchmark
from oesearch.experiments.benchmark import BenchDir, write_results
from oesearch.sweep.paper_tables import class_table, oe_size_points
from oesearch.distributed.cell_worker import BenchmarkWorkerBase
from oesearch.config import config_from_dict
from oesearch.data import ImageStore, leave_one_class_out, oe_classes, oe_subset, split_protocol
from oesearch.data.splits import oe_size_sweep
from oesearch.training.settings import worker_spec

N_CLASSES, PER_CLASS = 6, 12


def store(n_classes: int, per_class: int, tag: int) -> ImageStore:
    """8x8 images whose pixel (0,0) is the class, (0,1) the position and (0,2) the store's ``tag``."""
    labels = np.repeat(np.arange(n_classes), per_class)
    rng = np.random.default_rng(tag)
    images = rng.integers(0, 256, size=(len(labels), 8, 8, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = labels
    images[:, 0, 1, 0] = np.arange(len(labels))
    images[:, 0, 2, 0] = tag
    return ImageStore(images, labels, tuple(f"class{c}" for c in range(n_classes)))


@pytest.fixture(scope="module")
def data() -> BenchData:
    return BenchData(store(N_CLASSES, PER_CLASS, 1), store(N_CLASSES, PER_CLASS, 2), store(3, 20, 3))


def plan_for(data: BenchData, **benchmark):
    config = config_from_dict({"train": {"epochs": 1, "milestones": [1], "batch_size": 8}, "run": {"seed": 5},
                               "benchmark": {"methods": ["hsc", "dsvdd"], "seeds": 2, **benchmark}})
    return config, plan_benchmark(config, data, worker_spec)


def pixels(task_tensor) -> np.ndarray:
    """A PreparedTask's uint8 (n, C, H, W) pixels back as (n, H, W, C)."""
    return task_tensor.permute(0, 2, 3, 1).cpu().numpy()


def test_leave_one_class_out_cells(data: BenchData) -> None:
    _, plan = plan_for(data, protocol="leave_one_class_out", classes=[2, 4], oe_sizes=[5])
    worker = BenchmarkWorkerBase(data, plan.setup)
    assert len(plan.cells) == 2 * 2 * 1 * 2
    for cell in plan.cells:
        task, pool = worker.prepared(cell)
        expected = leave_one_class_out(data.train, data.test, cell.class_index)
        assert np.array_equal(pixels(task.train), expected.train)
        assert cell.class_index not in set(pixels(task.train)[:, 0, 0, 0]), "the anomalous class is never trained on"
        test_classes = pixels(task.test)[:, 0, 0, 0]
        assert np.array_equal(task.test_anomalous, test_classes == cell.class_index)
        assert pool is data.corpus
        oe = worker.oe_images(cell, pool)
        assert np.array_equal(oe, data.corpus.images[oe_subset(len(data.corpus), 5, 5, cell.repetition)])
        assert cell.oe_images == 5 and cell.row()["class_name"] == f"class{cell.class_index}"


def test_split_cells_never_test_on_oe_classes(data: BenchData) -> None:
    _, plan = plan_for(data, protocol="split", classes=[0, 3], split_oe_classes=2, oe_sizes=["all", 7])
    worker = BenchmarkWorkerBase(data, plan.setup)
    for cell in plan.cells:
        st = split_protocol(data.train, data.test, cell.class_index, 2, 5)
        assert cell.oe_classes == st.split.oe_classes and cell.test_classes == st.split.test_classes
        assert not set(cell.oe_classes) & set(cell.test_classes)
        task, pool = worker.prepared(cell)
        test_classes = set(pixels(task.test)[:, 0, 0, 0])
        assert test_classes == {cell.class_index, *st.split.test_classes}
        assert not test_classes & set(st.split.oe_classes), "no test image comes from an OE class"
        assert set(pixels(task.train)[:, 0, 0, 0]) == {cell.class_index}
        oe = worker.oe_images(cell, pool)
        assert set(oe[:, 0, 0, 0]) <= set(st.split.oe_classes) and (oe[:, 0, 2, 0] == 1).all(), \
            "the OE is training images of the OE classes"
        if cell.oe_label == "all":
            assert np.array_equal(oe, st.oe.images) and len(oe) == 2 * PER_CLASS == cell.oe_images
        else:
            assert np.array_equal(oe, st.oe.images[oe_subset(len(st.oe), 7, 5, cell.repetition)])


def test_oe_draw_classes_uses_oe_classes(data: BenchData) -> None:
    _, plan = plan_for(data, classes=[1], oe_draw="classes", oe_sizes=[1, 2, "all"], seeds=4)
    worker = BenchmarkWorkerBase(data, plan.setup)
    drawn = set()
    for cell in plan.cells:
        oe = worker.oe_images(cell, worker.prepared(cell)[1])
        if cell.oe_label == "all":
            assert len(oe) == len(data.corpus) and cell.oe_size == 3
            continue
        expected = oe_classes(data.corpus, int(cell.oe_label), 5, cell.repetition)
        assert cell.oe_classes == expected.classes and cell.oe_size == int(cell.oe_label)
        assert np.array_equal(oe, data.corpus.images[expected.index])
        assert set(oe[:, 0, 0, 0]) == set(expected.classes) and cell.oe_images == len(oe)
        drawn.add(cell.oe_classes)
    assert len(drawn) > 1, "repetitions draw their own classes"


def test_a_cell_trains_with_the_search_trainer(data: BenchData) -> None:
    _, plan = plan_for(data, classes=[0], oe_sizes=[3])
    worker = BenchmarkWorkerBase(data, plan.setup)
    rows = [worker.evaluate(cell) for cell in plan.cells[:2]]
    assert all(r["status"] == "ok" and 0 <= r["auc"] <= 1 for r in rows)
    again = worker.evaluate(plan.cells[0])
    assert again["auc"] == rows[0]["auc"], "a cell's result depends on its seed alone"


def test_oe_size_sweep_writes_one_point_per_size(data: BenchData, tmp_path: Path) -> None:
    config, plan = plan_for(data, classes=[0, 1], oe_sizes="sweep")
    sizes = oe_size_sweep(len(data.corpus))
    assert plan.oe_labels == tuple(str(k) for k in sizes[:-1]) + ("all",)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame([c.row(auc=float(rng.uniform(0.5, 1)), seconds=0.1, status="ok", reason=None, attempts=1,
                                worker="w", device="cpu") for c in plan.cells])
    frame["oe_classes"] = None
    bench = BenchDir.create(tmp_path, "benchmark-sweep")
    text = write_results(bench, frame, config, log=lambda _: None)
    png = bench.file("oe_size.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = oe_size_points(frame)
    for method in ("hsc", "dsvdd"):
        p = points[points["method"] == method]
        assert p["x"].tolist() == sizes, "one point per size, the full corpus last"
        means = [frame[(frame["method"] == method) & (frame["oe_size"] == k)].groupby("repetition")["auc"].mean()
                 for k in sizes]
        assert np.allclose(p["mean"], [100 * m.mean() for m in means])
    table = class_table(frame)
    assert list(table.columns) == [f"{m} k={k}" for m in ("hsc", "dsvdd") for k in plan.oe_labels]
    assert "| normal class | hsc k=1 |" in text


def test_failed_cells_are_counted_not_averaged(data: BenchData) -> None:
    _, plan = plan_for(data, classes=[0, 1], oe_sizes=["all"], seeds=3)
    rows = []
    for i, cell in enumerate(plan.cells):
        failed = cell.method == "hsc" and (cell.class_index == 0 and cell.repetition == 0 or cell.class_index == 1)
        rows.append(cell.row(auc=None if failed else 0.5 + 0.1 * cell.repetition, status="failed" if failed else "ok"))
    table = class_table(pd.DataFrame(rows))
    assert table.loc["class0", "hsc"] == "65.0 ± 7.07 (1 failed)"
    assert table.loc["class1", "hsc"] == "failed (3/3)"
    assert table.loc["mean", "hsc"] == "65.0 (1 of 2 classes)"
    assert table.loc["mean", "dsvdd"] == "60.0 ± 0.00"
