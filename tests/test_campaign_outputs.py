"""A campaign's combined outputs (table.md/csv, results.parquet, report.html) from real finished searches.

The campaign is assembled from real tiny searches run by the CLI: the
analysis fixture's class-8 runs, the killed (unfinished) class-8 HSC worst run,
and two class-3 HSC searches with a random panel run here.  Every expected
number is read straight from each run's summary.json and recomputed with
numpy and scipy; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import tiny_config, write_config
from oesearch.analysis.campaign import CampaignError, write_campaign_outputs

OUTPUTS = {"table.md", "table.csv", "results.parquet", "report.html"}
GRID = {"classes": [8, 3], "methods": ["hsc", "bce"], "modes": ["best", "worst"], "seeds": [7],
        "strategies": ["evolution"]}
PANEL = 3


@pytest.fixture(scope="module")
def class3_runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> dict[str, Path]:
    """Class-3 HSC best and worst, each with a random panel of 3 images: one real `oesearch campaign` run."""
    work = tmp_path_factory.mktemp("campaign-c3")
    config = tiny_config(cache_dir, generations=1, validation={"scheme": "fixed", "seeds": 2, "random_panel": PANEL})
    config["campaign"] = {"classes": [3], "methods": ["hsc"], "modes": ["best", "worst"]}
    path = write_config(work / "tiny3.yaml", config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    result = subprocess.run([sys.executable, "-m", "oesearch.cli", "campaign", "--no-progress", "--config", str(path),
                             "--out", str(work / "runs")], cwd=work, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    searches = Path(result.stdout.strip().splitlines()[-1]) / "searches"
    return {yaml.safe_load((p / "config.yaml").read_text())["search"]["mode"]: p for p in searches.iterdir()}


def entry(normal_class: int, method: str, mode: str, strategy: str = "evolution") -> dict:
    sid = f"c{normal_class}-{method}-{mode}-s7" + ("" if strategy == "evolution" else f"-{strategy}")
    return {"id": sid, "normal_class": normal_class, "method": method, "mode": mode, "seed": 7,
            "strategy": strategy, "run_dir": f"searches/{sid}"}


def build_campaign(dest: Path, sources: dict[str, Path | None], entries: list[dict], grid: dict = GRID) -> Path:
    """CAMPAIGN_DIR with config.yaml, manifest.json and a copy of each source run under searches/<id>."""
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text("name: embedded-campaign\n")
    for e in entries:
        if sources.get(e["id"]) is not None:
            shutil.copytree(sources[e["id"]], dest / e["run_dir"])
            if not (dest / e["run_dir"] / "summary.json").exists():  # the shared killed run may have been reported
                (dest / e["run_dir"] / "report.html").unlink(missing_ok=True)  # by another test: as when killed
    manifest = {"name": "embedded-campaign", "created": "2026-12-03T13:30:00+00:00", "config": "config.yaml",
                "grid": grid, "searches": entries}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dest


ENTRIES = [entry(8, "hsc", "best"), entry(8, "hsc", "worst"), entry(8, "bce", "best"), entry(8, "bce", "worst"),
           entry(3, "hsc", "best"), entry(3, "hsc", "worst"), entry(3, "bce", "best")]  # c3 bce worst: not listed


@pytest.fixture
def sources(analysis_runs, killed_run, class3_runs) -> dict[str, Path | None]:
    return {"c8-hsc-best-s7": analysis_runs[("hsc", "best", "evolution")],
            "c8-hsc-worst-s7": killed_run,  # SIGKILLed in generation 2: no summary.json
            "c8-bce-best-s7": analysis_runs[("bce", "best", "evolution")],
            "c8-bce-worst-s7": analysis_runs[("bce", "worst", "evolution")],
            "c3-hsc-best-s7": class3_runs["best"], "c3-hsc-worst-s7": class3_runs["worst"],
            "c3-bce-best-s7": None}  # listed, its run directory not created yet


@pytest.fixture
def campaign(tmp_path: Path, sources) -> Path:
    return build_campaign(tmp_path / "campaign", sources, ENTRIES)


FINISHED = ["c8-hsc-best-s7", "c8-bce-best-s7", "c8-bce-worst-s7", "c3-hsc-best-s7", "c3-hsc-worst-s7"]
UNFINISHED = ["c8-hsc-worst-s7", "c3-bce-best-s7"]


def top_of(campaign: Path, sid: str) -> dict:
    return json.loads((campaign / "searches" / sid / "summary.json").read_text())["top"][0]


def expected_cell(top: dict) -> str:
    """The cell worked out here from summary.json: validated AUC in %, its CI, and the panel difference."""
    lo, hi = top["validated_ci95"]
    text = f"{100 * top['validated_fitness']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    if top.get("vs_random"):
        d, (dlo, dhi) = top["vs_random"]["difference"], top["vs_random"]["ci95"]
        text += f"; vs random {100 * d:+.1f} [{100 * dlo:+.1f}, {100 * dhi:+.1f}]"
        text += "" if top["distinguishable"] else " ~rand"
    return text


def markdown_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


def test_table_cells_are_each_searchs_validated_top_finalist(campaign: Path) -> None:
    written = write_campaign_outputs(campaign)
    assert set(written) == OUTPUTS and all(p.parent == campaign and p.is_file() for p in written.values())
    table = pd.read_csv(campaign / "table.csv", dtype=str, keep_default_na=False).set_index("class")
    assert list(table.columns) == ["HSC best", "HSC worst", "BCE best", "BCE worst"]
    assert list(table.index) == ["8", "3", "mean"]  # the grid's class order, then the mean
    column = {"hsc-best": "HSC best", "hsc-worst": "HSC worst", "bce-best": "BCE best", "bce-worst": "BCE worst"}
    for sid in FINISHED:
        c, method, mode, _ = sid.split("-")
        assert table.loc[c[1:], column[f"{method}-{mode}"]] == expected_cell(top_of(campaign, sid)), sid
    # The class-3 searches have a random panel, the class-8 ones none: the comparison shows exactly where it exists.
    assert all(top_of(campaign, s)["vs_random"] for s in ("c3-hsc-best-s7", "c3-hsc-worst-s7"))
    assert "vs random" in table.loc["3", "HSC best"] and "vs random" not in table.loc["8", "HSC best"]
    assert table.loc["8", "HSC worst"] == "— (unfinished)"  # the killed run
    assert table.loc["3", "BCE best"] == "— (unfinished)"  # listed, never started
    assert table.loc["3", "BCE worst"] == "—"  # not in the manifest at all

    md = (campaign / "table.md").read_text()
    assert markdown_rows(md) == {"class": list(table.columns), **{k: list(v) for k, v in table.iterrows()}}
    seeds = {top_of(campaign, s)["validated_seeds"] for s in FINISHED}
    assert seeds == {2}
    assert "mean over 2 fresh seeds" in md and "95% Student-t confidence interval" in md
    assert f"random panel ({PANEL} random corpus images" in md
    assert "(2 of 7: c8-hsc-worst-s7, c3-bce-best-s7)" in md
    assert md.index("| mean |") < md.index("Cells: the validated test AUC")  # the footnote is under the table


def test_mean_row_is_the_mean_over_classes_with_a_t_interval(campaign: Path) -> None:
    write_campaign_outputs(campaign)
    mean = pd.read_csv(campaign / "table.csv", dtype=str, keep_default_na=False).set_index("class").loc["mean"]
    values = np.array([top_of(campaign, s)["validated_fitness"] for s in ("c8-hsc-best-s7", "c3-hsc-best-s7")])
    m = np.mean(values)
    lo, hi = stats.t.interval(0.95, df=len(values) - 1, loc=m, scale=stats.sem(values))
    assert mean["HSC best"] == f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (2 of 2 classes)"
    worst3 = top_of(campaign, "c3-hsc-worst-s7")["validated_fitness"]  # class 8's worst search is unfinished
    assert mean["HSC worst"] == f"{100 * worst3:.1f} (1 of 2 classes; no interval from one class)"
    bce_worst8 = top_of(campaign, "c8-bce-worst-s7")["validated_fitness"]
    assert mean["BCE worst"] == f"{100 * bce_worst8:.1f} (1 of 2 classes; no interval from one class)"


def test_results_parquet_has_one_row_per_search(campaign: Path) -> None:
    write_campaign_outputs(campaign)
    frame = pd.read_parquet(campaign / "results.parquet").set_index("id")
    assert list(frame.index) == [e["id"] for e in ENTRIES]
    assert set(frame.loc[FINISHED, "status"]) == {"finished"} and set(frame.loc[UNFINISHED, "status"]) == {"unfinished"}
    assert frame.loc["c8-hsc-worst-s7", "state"] == "stopped" and frame.loc["c3-bce-best-s7", "state"] == "not started"
    for sid in FINISHED:
        summary = json.loads((campaign / "searches" / sid / "summary.json").read_text())
        top, row = summary["top"][0], frame.loc[sid]
        assert (row["normal_class"], row["method"], row["mode"], row["seed"], row["strategy"]) == (
            summary["normal_class"], summary["method"], summary["mode"], summary["seed"], summary["strategy"])
        assert row["class_name"] == summary["class_name"] and row["run_dir"] == f"searches/{sid}"
        assert row["validated_fitness"] == top["validated_fitness"]
        assert [row["validated_ci_low"], row["validated_ci_high"]] == top["validated_ci95"]
        assert row["validated_seeds"] == top["validated_seeds"] and row["search_fitness"] == top["search_fitness"]
        assert row["trainings"] == summary["evaluations"] and row["wall_seconds"] == summary["wall_seconds"]
        assert row["top_indices"] == " ".join(map(str, top["indices"]))
        if top["vs_random"]:
            assert row["vs_random_difference"] == top["vs_random"]["difference"]
            assert [row["vs_random_ci_low"], row["vs_random_ci_high"]] == top["vs_random"]["ci95"]
            assert row["random_panel_mean"] == summary["random_panel"]["mean"]
            assert row["random_panel_images"] == summary["random_panel"]["images"] == PANEL
            assert bool(row["distinguishable"]) == top["distinguishable"]
        else:
            assert np.isnan(row["vs_random_difference"]) and pd.isna(row["distinguishable"])
    for sid in UNFINISHED:
        assert np.isnan(frame.loc[sid, "validated_fitness"]) and pd.isna(frame.loc[sid, "top_indices"])
    killed_rows = (campaign / "searches" / "c8-hsc-worst-s7" / "journal.jsonl").read_text().splitlines()
    assert frame.loc["c8-hsc-worst-s7", "trainings"] == len(killed_rows)  # trainings so far
    assert frame.loc["c3-bce-best-s7", "trainings"] == 0


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])


def test_report_links_every_search_report_and_marks_the_unfinished(campaign: Path) -> None:
    write_campaign_outputs(campaign)
    page = (campaign / "report.html").read_text()
    parser = _Links()
    parser.feed(page)
    have_report = [e["id"] for e in ENTRIES if (campaign / e["run_dir"] / "report.html").is_file()]
    assert set(FINISHED) <= set(have_report)
    targets = [(campaign / unquote(h)).resolve() for h in parser.hrefs]
    assert all(not Path(h).is_absolute() for h in parser.hrefs)
    assert targets == [(campaign / "searches" / sid / "report.html").resolve() for sid in have_report]
    assert all(t.is_file() for t in targets)
    assert "oesearch campaign: embedded-campaign" in page and "7 searches, 5 finished, 2 unfinished" in page
    assert "classes: 8, 3" in page and "methods: hsc, bce" in page
    for sid in UNFINISHED:
        item = next(line for line in page.split("<li") if line.startswith(f' class="unfinished">{sid}:'))
        assert "[unfinished]" in item and "no report.html yet" in item
    assert "resume with python oesearch/run.py --resume" in page  # the killed run's own status line
    table = pd.read_csv(campaign / "table.csv", dtype=str, keep_default_na=False)
    assert all(cell.replace("&", "&amp;") in page for cell in table["HSC best"])  # the combined table is on the page


def test_missing_or_corrupt_manifest_is_a_clear_error_and_leaves_the_outputs(campaign: Path, tmp_path: Path) -> None:
    with pytest.raises(CampaignError, match=f"{tmp_path / 'nowhere' / 'manifest.json'}: no campaign manifest"):
        write_campaign_outputs(tmp_path / "nowhere")
    write_campaign_outputs(campaign)
    before = {name: (campaign / name).read_bytes() for name in OUTPUTS}
    manifest = campaign / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(good[: len(good) // 2])  # a torn manifest
    with pytest.raises(CampaignError, match=f"{manifest}: not a readable JSON manifest"):
        write_campaign_outputs(campaign)
    manifest.write_text(json.dumps({"name": "x", "searches": [{"id": "a"}]}))
    with pytest.raises(CampaignError, match=f"{manifest}: search 0 lacks normal_class, method"):
        write_campaign_outputs(campaign)
    wrong = json.loads(good)
    wrong["searches"][1]["seed"] = "seven"
    manifest.write_text(json.dumps(wrong))
    with pytest.raises(CampaignError, match=f"{manifest}: search 1 .*seed must be integers"):
        write_campaign_outputs(campaign)
    wrong = json.loads(good)
    wrong["searches"][0]["normal_class"] = 3  # the run directory is a class-8 search
    manifest.write_text(json.dumps(wrong))
    with pytest.raises(CampaignError, match="search 'c8-hsc-best-s7' .* has normal_class 3 but its config.yaml says 8"):
        write_campaign_outputs(campaign)
    assert {name: (campaign / name).read_bytes() for name in OUTPUTS} == before  # nothing was touched
    assert sorted(p.name for p in campaign.iterdir()) == sorted(["config.yaml", "manifest.json", "searches", *OUTPUTS])


def test_rerun_replaces_whole_files_and_a_failing_one_leaves_them(campaign: Path) -> None:
    first = write_campaign_outputs(campaign)
    frame = pd.read_parquet(first["results.parquet"])
    md = first["table.md"].read_text()
    write_campaign_outputs(campaign)  # a rerun: the same content, no stray temporary files
    pd.testing.assert_frame_equal(pd.read_parquet(campaign / "results.parquet"), frame)
    assert (campaign / "table.md").read_text() == md
    assert sorted(p.name for p in campaign.iterdir()) == sorted(["config.yaml", "manifest.json", "searches", *OUTPUTS])
    before = {name: (campaign / name).read_bytes() for name in OUTPUTS}
    summary = campaign / "searches" / "c3-hsc-worst-s7" / "summary.json"
    summary.write_text(summary.read_text()[:40])  # a corrupt summary in one search
    with pytest.raises(CampaignError, match=f"{summary.parent}: search 'c3-hsc-worst-s7' .* cannot be read"):
        write_campaign_outputs(campaign)
    assert {name: (campaign / name).read_bytes() for name in OUTPUTS} == before
    assert not [p for p in campaign.iterdir() if p.name.startswith(".")]


def test_several_strategies_get_a_column_each(tmp_path: Path, analysis_runs) -> None:
    entries = [entry(8, "hsc", "best"), entry(8, "hsc", "best", "random")]
    grid = {"classes": [8], "methods": ["hsc"], "modes": ["best"], "seeds": [7], "strategies": ["evolution", "random"]}
    sources = {entries[0]["id"]: analysis_runs[("hsc", "best", "evolution")],
               entries[1]["id"]: analysis_runs[("hsc", "best", "random")]}
    campaign = build_campaign(tmp_path / "campaign", sources, entries, grid)
    write_campaign_outputs(campaign)
    table = pd.read_csv(campaign / "table.csv", dtype=str, keep_default_na=False).set_index("class")
    assert list(table.columns) == ["HSC best evolution", "HSC best random"]
    assert table.loc["8", "HSC best random"] == expected_cell(top_of(campaign, entries[1]["id"]))
    assert table.loc["mean", "HSC best random"].endswith("(1 of 1 classes; no interval from one class)")
