"""What the search is for, measured: is a strategy's reported top-1 truly extreme, at an equal training budget?

    python benchmarks/search_quality.py [--quick] [--budgets 300 1000 3000] [--seeds 3]

On the embedded default (HSC, class 8 of sklearn's digits, patches of the
sample photos), every strategy runs in both modes and for several run seeds,
each until it has paid for ``budget`` trainings:

- ``evolution``: the paper's Algorithm 1;
- ``rescore``: the same, with ``search.rescore: survivors``;
- ``aging``: regularized evolution;
- ``random``: the random-search baseline (Appendix D).

A run's reported top-1 is its hall of fame's first entry when the budget is
spent (the search fitness alone: no validation, which would cost trainings).
One common judge scores it: ``--judge-seeds`` fresh training seeds, and its
percentile among ``--panel`` random corpus images scored on the same seeds
(1.0: more extreme, in the run's direction, than every panel image).

A training's result depends only on (image, seed), so one store answers
every run: a run is charged for each distinct training it asks for, whether
or not another run asked for it first, and the machine trains it once.
The last line is one JSON object:
``{"worst": {"evolution": {"judged_auc", "percentile", ...}, ...}, "best": {...}, "by_budget": {...}}``
(the top level at the largest budget).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from oesearch.config import config_from_dict  # noqa: E402
from oesearch.results.rundir import to_json  # noqa: E402
from oesearch.distributed.cluster import connect  # noqa: E402
from oesearch.search.evolution import Evolution, EvolutionState  # noqa: E402
from oesearch.search.fitness import FitnessCache, Job, job_key, row_key  # noqa: E402
from oesearch.search.problem import FitnessProblem  # noqa: E402
from oesearch.experiments.context import make_dispatcher  # noqa: E402
from oesearch.experiments.search import image_payload, prepare  # noqa: E402
from oesearch.search.seeds import repetition_seed  # noqa: E402
from oesearch.search.statistics import beats_share, mean_ci  # noqa: E402
from oesearch.distributed.fitness_worker import FitnessWorker  # noqa: E402
from oesearch.training.settings import worker_spec  # noqa: E402
from oesearch.seeding import derive_seed  # noqa: E402

STRATEGIES = {
    "evolution": {"strategy": "evolution"},
    "rescore": {"strategy": "evolution", "rescore": "survivors"},
    "aging": {"strategy": "aging"},
    "random": {"strategy": "random"},
}
JUDGE_SEED = 2**20  # the judge's seeds and panel descend from this, never from a run seed


class BudgetSpent(Exception):
    """Raised from the checkpoint hook once a run has paid for its largest budget."""


class SharedTrainings:
    """One store of finished trainings for every run; trains on the dispatcher what no run asked for yet."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self.rows: dict[tuple, dict[str, Any]] = {}
        self.trained = 0

    def run_jobs(self, jobs: list[Job], on_row: Any) -> None:
        missing = [job for job in jobs if job.key not in self.rows]
        self.dispatcher.run(missing, lambda row: self.rows.__setitem__(row_key(row), row))
        self.trained += len(missing)
        for job in jobs:
            on_row(self.rows[job.key])


def run_strategy(config: Any, data: Any, store: SharedTrainings, budgets: list[int],
                 log: Any) -> dict[int, dict[str, Any]]:
    """One search until it has paid for max(budgets) trainings; its top-1 at the first generation past each."""
    s = config.search
    paid = {"n": 0}

    def charged(jobs: list[Job], on_row: Any) -> None:
        paid["n"] += len(jobs)  # distinct trainings this run asked for (its own cache answers repeats)
        store.run_jobs(jobs, on_row)

    problem = FitnessProblem(
        normal_class=config.data.normal_class, corpus_size=len(data.corpus), mode=s.mode,
        search_seeds=[repetition_seed(config.run.seed, r) for r in range(s.repetitions)],
        run_jobs=charged, journal=lambda row: None, cache=FitnessCache(), progress=False,
        seed_of=lambda r: repetition_seed(config.run.seed, r), rescore_seeds=s.rescore_seeds)
    tops: dict[int, dict[str, Any]] = {}

    def checkpoint(state: EvolutionState) -> None:
        for budget in budgets:
            if budget not in tops and paid["n"] >= budget and len(state.hall_of_fame):
                best = state.hall_of_fame[0]
                tops[budget] = {"indices": [int(i) for i in best], "search_fitness": float(best.fitness.values[0]),
                                "trainings": paid["n"], "generation": state.generation}
        if len(tops) == len(budgets):
            raise BudgetSpent

    try:
        Evolution(problem, s, data.index, config.run.seed, checkpoint=checkpoint, log=lambda line: None).run()
    except BudgetSpent:
        pass
    log(f"  {config.search.mode} {s.strategy}{' rescore' if s.rescore != 'none' else ''} seed {config.run.seed}: "
        + ", ".join(f"budget {b}: top-1 {t['indices']} search {t['search_fitness']:.4f} after {t['trainings']}"
                    for b, t in sorted(tops.items())))
    return tops


def judge(store: SharedTrainings, normal_class: int, candidates: list[list[int]], panel: list[list[int]],
          seeds: list[int]) -> dict[tuple, np.ndarray]:
    """Test AUCs of each candidate and panel image on the judge's seeds (NaN: a failed training)."""
    wanted = {tuple(sorted(ind)): ind for ind in candidates + panel}
    jobs = [Job(normal_class, tuple(ind), seed, "judge", None, i)
            for i, ind in enumerate(wanted.values()) for seed in seeds]
    store.run_jobs(jobs, lambda row: None)
    out = {}
    for key, ind in wanted.items():
        rows = [store.rows[job_key(normal_class, ind, seed)] for seed in seeds]
        out[key] = np.array([r["auc"] if r["status"] == "ok" else math.nan for r in rows], dtype=float)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="budgets 32 and 64, population 8 x 2 seeds, judge 8 seeds x 32 images (under 10 min)")
    parser.add_argument("--budgets", type=int, nargs="+", help="training budgets per run (default 300 1000 3000)")
    parser.add_argument("--seeds", type=int, default=3, help="run seeds per strategy and mode (default 3)")
    parser.add_argument("--population", type=int, help="search.population (default: the embedded default's)")
    parser.add_argument("--repetitions", type=int, help="search.repetitions (default: the embedded default's)")
    parser.add_argument("--judge-seeds", type=int, help="the judge's fresh seeds (default 16)")
    parser.add_argument("--panel", type=int, help="random images the judge ranks each top-1 among (default 64)")
    args = parser.parse_args()
    quick = {"budgets": [32, 64], "population": 8, "repetitions": 2, "judge_seeds": 8, "panel": 32}
    full = {"budgets": [300, 1000, 3000], "population": None, "repetitions": None, "judge_seeds": 16, "panel": 64}
    preset = quick if args.quick else full
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in preset.items()}
    budgets = sorted(opts["budgets"])
    start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="oesearch-bench-quality-") as tmp:
        search = {"generations": 100_000, "hall_of_fame": 1, "validation": {"scheme": "fixed", "seeds": 0,
                                                                           "random_panel": 0}}
        search.update({k: opts[k] for k in ("population", "repetitions") if opts[k] is not None})
        base = config_from_dict({"search": search, "run": {"address": "local", "out": tmp}})
        data = prepare(base, log=print)
        connect("local", print)
        dispatcher, kind = make_dispatcher(base, FitnessWorker, data.task, (worker_spec(base),),
                                           image_payload(data.corpus.images), "oesearch-search-quality", print)
        store = SharedTrainings(dispatcher)
        results: dict[str, dict[str, list[dict[int, dict[str, Any]]]]] = {}
        try:
            for mode in ("worst", "best"):
                for name, overrides in STRATEGIES.items():
                    for seed in range(args.seeds):
                        config = config_from_dict({"search": {**search, "mode": mode, **overrides},
                                                   "run": {"seed": seed, "address": "local", "out": tmp}})
                        tops = run_strategy(config, data, store, budgets, print)
                        results.setdefault(mode, {}).setdefault(name, []).append(tops)
            judge_seeds = [derive_seed(JUDGE_SEED, "judge", r) for r in range(opts["judge_seeds"])]
            panel_ids = np.random.default_rng(derive_seed(JUDGE_SEED, "panel")).permutation(len(data.corpus))
            panel = [[int(i)] for i in panel_ids[: opts["panel"]]]
            candidates = [t["indices"] for by_mode in results.values() for runs in by_mode.values()
                          for tops in runs for t in tops.values()]
            print(f"judge: {len({tuple(sorted(c)) for c in candidates})} top-1 images and a panel of {len(panel)} "
                  f"random images, each on {len(judge_seeds)} fresh seeds")
            aucs = judge(store, base.data.normal_class, candidates, panel, judge_seeds)
        finally:
            dispatcher.shutdown()
    panel_means = np.array([np.nanmean(aucs[tuple(p)]) for p in panel])
    wall = time.perf_counter() - start

    by_budget: dict[str, Any] = {}
    print(f"\nembedded default, HSC class 8, population {base.search.population} x {base.search.repetitions} "
          f"seeds, {args.seeds} run seeds per cell; judge: {len(judge_seeds)} fresh seeds, panel of {len(panel)} "
          f"random images (mean {panel_means.mean():.4f}, SD {panel_means.std(ddof=1):.4f}); "
          f"{store.trained} trainings in {wall:.0f} s on {len(dispatcher.slots)} {kind} workers\n")
    print("| mode | budget | strategy | judged AUC of top-1 (mean over run seeds) | 95% CI | percentile among "
          "random (mean) | per run seed | search fitness (mean) |")
    print("|---|---:|---|---:|---|---:|---|---:|")
    for mode, by_strategy in results.items():
        for budget in budgets:
            for name, runs in by_strategy.items():
                tops = [run[budget] for run in runs if budget in run]
                judged = np.array([np.nanmean(aucs[tuple(sorted(t["indices"]))]) for t in tops])
                shares = np.array([beats_share(j, panel_means, mode) for j in judged])
                mean, lo, hi = mean_ci(judged)
                cell = {"judged_auc": round(float(mean), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
                        "percentile": round(float(shares.mean()), 4),
                        "search_fitness": round(float(np.mean([t["search_fitness"] for t in tops])), 4),
                        "trainings": int(np.mean([t["trainings"] for t in tops])), "runs": len(tops)}
                by_budget.setdefault(str(budget), {}).setdefault(mode, {})[name] = cell
                per_seed = " ".join(f"{j:.3f}/{p:.2f}" for j, p in zip(judged, shares))
                print(f"| {mode} | {budget} | {name} | {mean:.4f} | [{lo:.4f}, {hi:.4f}] | {shares.mean():.2f} | "
                      f"{per_seed} | {cell['search_fitness']:.4f} |")
    print("\nper run seed: judged AUC / percentile among the random panel (1.0: more extreme than all of it)")
    top_level = by_budget[str(budgets[-1])]
    print(to_json({**top_level, "budget": budgets[-1], "by_budget": by_budget, "judge_seeds": len(judge_seeds),
                      "panel": len(panel), "run_seeds": args.seeds, "wall_seconds": round(wall, 1)}))


if __name__ == "__main__":
    main()
