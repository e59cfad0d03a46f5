"""The analysis views against the run's own files: every number drawn is recomputed from the journal,
generations.csv, genealogy.json or summary.json of real (tiny) searches."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.offsetbox import AnnotationBbox

from oesearch.analysis import (ancestry, best_worst_figures, best_worst_rows, compare_table, find_runs,
                               fitness_curves, genealogy_figure, journal_generation_stats, load_run, load_runs,
                               population_diversity)
from oesearch.config import NaturalPatchesSource
from oesearch.data import load_corpus
from oesearch.results import read_journal

EVOLUTION = [("hsc", "best", "evolution"), ("bce", "best", "evolution"), ("hsc", "worst", "evolution"),
             ("bce", "worst", "evolution")]


@pytest.fixture(scope="module")
def corpus(cache_dir: Path) -> np.ndarray:
    """The embedded corpus, loaded directly (not through the analysis helpers)."""
    return load_corpus(NaturalPatchesSource(), (8, 8, 1), cache_dir).images


def fitness_by_hand(rows: list[dict], n_seeds: int) -> dict[tuple, float]:
    """Mean search AUC per individual that has all its seeds, all ok."""
    aucs: dict[tuple, list] = {}
    for r in rows:
        if r["purpose"] == "search":
            aucs.setdefault(tuple(sorted(r["indices"])), []).append(r)
    return {k: sum(r["auc"] for r in v) / len(v) for k, v in aucs.items()
            if len(v) == n_seeds and all(r["status"] == "ok" for r in v)}


def test_grid_shows_exactly_the_hall_of_fame_in_fitness_order(analysis_runs, corpus) -> None:
    runs = load_runs(analysis_runs.values())
    (key, rows), = best_worst_rows(runs).items()  # one experiment, one class
    assert key == ("tiny", 8)
    labels = [row.label.replace("\n", " ") for row in rows]
    assert labels == ["best HSC", "best BCE", "worst HSC", "worst BCE", "best HSC random"]  # the paper's order
    order = [("hsc", "best", "evolution"), ("bce", "best", "evolution"), ("hsc", "worst", "evolution"),
             ("bce", "worst", "evolution"), ("hsc", "best", "random")]
    for row, which in zip(rows, order):
        path = analysis_runs[which]
        summary = json.loads((path / "summary.json").read_text())
        by_hand = fitness_by_hand(read_journal(path / "journal.jsonl"), 2)
        ranked = sorted(by_hand.items(), key=lambda kv: kv[1], reverse=which[1] == "best")[:3]
        assert row.indices == [t["indices"] for t in summary["top"]]
        assert [tuple(i) for i in row.indices] == [k for k, _ in ranked]
        assert [by_hand[tuple(i)] for i in row.indices] == pytest.approx([f for _, f in ranked], abs=1e-12)
        hof_csv = pd.read_csv(path / "hall_of_fame.csv")
        assert [[int(i)] for i in hof_csv["indices"]] == row.indices

    # What is drawn: row 0 the normal samples, row r the r-th run's hall of fame, in order.
    fig, = best_worst_figures(runs)
    columns = 8
    for r, row in enumerate(rows, start=1):
        for j, indices in enumerate(row.indices):
            drawn = fig.axes[r * columns + j].images[0].get_array()
            assert np.array_equal(drawn, corpus[indices[0]][..., 0])
        assert not fig.axes[r * columns + len(row.indices)].images  # nothing beyond the hall of fame


def test_filtered_view_shows_what_the_filter_returns(analysis_runs, corpus) -> None:
    run = load_run(analysis_runs[("hsc", "worst", "evolution")])
    invert = lambda images: 255 - images  # noqa: E731  any uint8 -> uint8 filter
    fig, = best_worst_figures([run], filtered=invert)
    columns = 8
    # rows: normal, normal filtered, HSC worst, HSC worst filtered
    for j, top in enumerate(run.summary["top"]):
        assert np.array_equal(fig.axes[2 * columns + j].images[0].get_array(), corpus[top["indices"][0]][..., 0])
        assert np.array_equal(fig.axes[3 * columns + j].images[0].get_array(), 255 - corpus[top["indices"][0]][..., 0])


def test_fitness_curves_are_the_per_generation_stats(analysis_runs) -> None:
    runs = load_runs(analysis_runs.values())
    fig = fitness_curves(runs)
    for run in runs:
        ax, = [a for a in fig.axes if a.get_title().startswith(run.label + "\n")]
        book = pd.read_csv(run.path / "generations.csv")
        lines = {line.get_label(): line for line in ax.get_lines()}
        for label, column in (("mean", "mean"), ("min", "min"), ("max", "max"), ("hall of fame", "hof")):
            assert list(lines[label].get_xdata()) == list(book["gen"])
            assert np.allclose(lines[label].get_ydata(), book[column], rtol=0, atol=1e-12), (run.label, label)


@pytest.mark.parametrize("which", EVOLUTION + [("hsc", "best", "random")])
def test_journal_stats_match_generations_csv(analysis_runs, which) -> None:
    run = load_run(analysis_runs[which])
    stats = journal_generation_stats(run)
    book = pd.read_csv(run.path / "generations.csv")
    assert list(stats["gen"]) == list(book["gen"])
    assert list(stats["new"]) == list(book["new"])
    assert list(stats["failed"]) == list(book["failed"])
    assert np.allclose(stats["best_so_far"], book["hof"], rtol=0, atol=1e-12)
    # and by hand: the running best over individuals first trained up to each generation
    rows = run.rows
    for gen in book["gen"]:
        upto = fitness_by_hand([r for r in rows if r["purpose"] == "search" and r["generation"] <= gen], 2)
        best = max(upto.values()) if which[1] == "best" else min(upto.values())
        assert stats.loc[gen, "best_so_far"] == pytest.approx(best, abs=1e-12)
        assert stats.loc[gen, "trainings"] == sum(r["purpose"] == "search" and r["generation"] <= gen for r in rows)


@pytest.mark.parametrize("which", EVOLUTION)
def test_population_diversity_by_hand(analysis_runs, corpus, which) -> None:
    run = load_run(analysis_runs[which])
    genealogy = json.loads((run.path / "genealogy.json").read_text())
    book = pd.read_csv(run.path / "generations.csv")
    populations = genealogy["generations"]
    assert len(populations) == len(book)
    # The kept populations agree with the journal: every training of generation g is of the individual in its slot.
    for r in run.rows:
        if r["purpose"] == "search":
            member = genealogy["individuals"][str(populations[r["generation"]][r["individual"]])]
            assert sorted(member["indices"]) == sorted(r["indices"])
    div = population_diversity(run, corpus)
    assert list(div["unique"]) == list(book["unique"])  # the loop's own count, from its own population
    for gen, ids in enumerate(populations):
        images = [corpus[genealogy["individuals"][str(i)]["indices"][0]].astype(float).ravel() / 255 for i in ids]
        pairs = [math.dist(a, b) for a, b in itertools.combinations(images, 2)]
        assert div.loc[gen, "mean_l2"] == pytest.approx(sum(pairs) / len(pairs), rel=1e-9)


@pytest.mark.parametrize("which", EVOLUTION)
def test_genealogy_tree_of_the_best(analysis_runs, which) -> None:
    run = load_run(analysis_runs[which])
    genealogy = run.genealogy
    root = genealogy["hall_of_fame"][0]
    assert genealogy["individuals"][str(root)]["indices"] == run.summary["top"][0]["indices"]
    nodes, edges = ancestry(genealogy, root)
    # walk the parents by hand
    seen, todo = set(), [root]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo += genealogy["individuals"][str(node)]["parents"]
    assert set(nodes) == seen
    assert all(nodes[p] < nodes[c] for p, c in edges), "a parent is born before its child"
    assert all(nodes[n] == 0 for n in nodes if not genealogy["individuals"][str(n)]["parents"]), "founders are generation 0"
    fig = genealogy_figure([run], [np.zeros((10712, 8, 8, 1), np.uint8)])
    assert sum(isinstance(a, AnnotationBbox) for a in fig.axes[0].artists) == len(nodes)


def test_compare_table_in_table_3_layout(analysis_runs) -> None:
    runs = load_runs(analysis_runs.values())
    table = compare_table(runs)
    assert list(table.index) == ["Best OE", "Worst OE", "Best OE (random search)"]
    assert list(table.columns) == [("tiny", "HSC", "search"), ("tiny", "HSC", "validated"), ("tiny", "HSC", "runs"),
                                   ("tiny", "BCE", "search"), ("tiny", "BCE", "validated"), ("tiny", "BCE", "runs")]
    row_of = {("best", "evolution"): "Best OE", ("worst", "evolution"): "Worst OE", ("best", "random"): "Best OE (random search)"}
    for (method, mode, strategy), path in analysis_runs.items():
        top = json.loads((path / "summary.json").read_text())["top"][0]
        row = row_of[(mode, strategy)]
        assert table.loc[row, ("tiny", method.upper(), "search")] == pytest.approx(100 * top["search_fitness"])
        assert table.loc[row, ("tiny", method.upper(), "validated")] == pytest.approx(100 * top["validated_fitness"])
    assert math.isnan(table.loc["Best OE (random search)", ("tiny", "BCE", "search")])  # no such run
    assert table.loc["Best OE", ("tiny", "HSC", "runs")] == 1  # each cell says how many runs it averages
    assert table.loc["Best OE (random search)", ("tiny", "BCE", "runs")] == 0


def test_find_runs(analysis_runs, tmp_path, monkeypatch) -> None:
    paths = list(analysis_runs.values())
    assert find_runs(os.pathsep.join(map(str, paths[:2]))) == paths[:2]
    assert find_runs([paths[0].parent]) == sorted(paths)  # a folder of runs expands to its runs
    # Without a spec: the newest run of each experiment under ./runs; an older run of one of them is passed over.
    for path in paths:
        shutil.copytree(path, tmp_path / "runs" / path.name)
    older = tmp_path / "runs" / ("19990101-000000" + paths[0].name[15:])
    shutil.copytree(paths[0], older)
    monkeypatch.chdir(tmp_path)
    assert [p.name for p in find_runs()] == sorted(p.name for p in paths)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        find_runs(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="OESEARCH_RUNS"):
        find_runs(str(tmp_path / "empty"))


def _with_seed(run, seed: int):
    """The same run as if it had been run with ``seed`` (what a second seed of one experiment looks like)."""
    import dataclasses

    config = run.config.model_copy(update={"run": run.config.run.model_copy(update={"seed": seed})})
    return dataclasses.replace(run, config=config)


def test_runs_that_differ_in_seed_say_so_and_averages_say_how_many(analysis_runs) -> None:
    from oesearch.analysis.plots import diversity_figure, progress_figure
    from oesearch.analysis.runs import RunImages, distinct_labels

    hsc_worst = load_run(analysis_runs[("hsc", "worst", "evolution")])
    runs = [hsc_worst, _with_seed(hsc_worst, 3)]
    assert distinct_labels(runs) == ["HSC worst, seed 7", "HSC worst, seed 3"]
    assert distinct_labels([hsc_worst, hsc_worst]) == [f"HSC worst, run {hsc_worst.path.name[:15]}"] * 2
    (rows,) = best_worst_rows(runs).values()
    assert [row.label.replace("\n", " ") for row in rows] == ["worst HSC seed 7", "worst HSC seed 3"]
    legend = [t.get_text() for t in progress_figure(runs).axes[0].get_legend().get_texts()]
    assert legend == ["HSC worst, seed 7", "HSC worst, seed 3"]
    titles = [ax.get_title().splitlines()[0] for ax in fitness_curves(runs).axes if ax.get_title()]
    assert titles == ["HSC worst, seed 7", "HSC worst, seed 3"]
    blank = RunImages(np.zeros((1, 8, 8, 1), np.uint8), "8", np.zeros((10712, 8, 8, 1), np.uint8))
    legend = [t.get_text() for t in diversity_figure(runs, images=[blank, blank]).axes[0].get_legend().get_texts()]
    assert legend == ["HSC worst, seed 7", "HSC worst, seed 3"]
    table = compare_table(runs)
    top = hsc_worst.hall_of_fame[0]["search_fitness"]
    assert table.loc["Worst OE", ("tiny", "HSC", "runs")] == 2, "the cell says it averages two runs"
    assert table.loc["Worst OE", ("tiny", "HSC", "search")] == pytest.approx(100 * top)


def test_a_run_stopped_before_its_first_training_draws_nothing(analysis_runs, tmp_path: Path) -> None:
    """No NaN rows, no empty panels: only its status, which says how to resume."""
    source = analysis_runs[("hsc", "worst", "evolution")]
    run_dir = tmp_path / source.name
    run_dir.mkdir()
    for name in ("config.yaml", "driver.json", "driver.lock"):
        shutil.copy(source / name, run_dir / name)
    run = load_run(run_dir)
    assert run.state == "stopped" and not run.rows
    assert run.status() == f"stopped before its first training finished (resume with python oesearch/run.py --resume {run_dir})"
    others = load_runs([analysis_runs[("hsc", "best", "evolution")]])
    assert best_worst_rows([run, *others]).keys() == best_worst_rows(others).keys()
    assert [len(r) for r in best_worst_rows([run, *others]).values()] == [1]
    assert len([ax for ax in fitness_curves([run, *others]).axes if ax.get_title()]) == 1
    assert compare_table([run, *others]).equals(compare_table(others))
