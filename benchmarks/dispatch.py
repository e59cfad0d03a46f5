"""Dispatch efficiency of the real dispatch path over N simulated GPU workers: one search, or a campaign.

    python benchmarks/dispatch.py --workers 8 --mean-seconds 2
    python benchmarks/dispatch.py --campaign --searches 40 --workers 32 --mean-seconds 2
    python benchmarks/dispatch.py --campaign --simulate --searches 40 --workers 256

A localhost multi-node Ray cluster (``ray.cluster_utils.Cluster``) carries a
custom ``sim_gpu`` resource; N worker actors each hold one.  The real
:class:`~oesearch.distributed.dispatch.Dispatcher` feeds them generation by
generation, as a search does (the generation is a barrier), with a fake
fitness: each evaluation sleeps for a duration drawn from a gamma
distribution with the given mean and coefficient of variation.

Efficiency = busy time / (N x wall), where busy is the sleep the workers
report and wall runs from the first submission to the last result.  It also
prints the barrier reference: what a zero-overhead dispatcher reaches with the
same durations (a list schedule of each generation: every job to the worker
that frees up first), so that the loss to dispatch itself and the loss to the
generation barrier can be told apart.

``--campaign`` runs S such searches at once on one pool, as ``oesearch campaign``
does: the real Dispatcher serving a :class:`~oesearch.distributed.pool.SharedPool`'s
:class:`~oesearch.distributed.scheduler.FairQueue` (the search with the fewest
trainings started goes first).  Each simulated search is a thread that submits one
generation through its ``run_jobs`` and waits for all of its rows before the next
(its barrier); its durations are drawn up front from a generator seeded by
(``--seed``, search index), so they do not depend on the schedule.  Pairs of searches
share a task (as best and worst of one class and method do); with K = 1 that changes
nothing.  Wall runs from the start of the searches (workers already started) to the
last row.  It also prints, for the same settings, the discrete-event simulation of
the same queue with no dispatch overhead (:func:`~oesearch.distributed.scheduler.simulate_campaign`,
which draws the very same durations: each search's generator seeded by (``--seed``, search index)) and one
search's barrier bound on the same N workers.

``--campaign --simulate`` runs only that simulation (no cluster), by default for
paper-sized searches: 64 x 2 seeds in generation 0, then 76 trainings for 50 generations.

The last line is one JSON object; in campaign mode it starts
``{"workers": N, "searches": S, "efficiency": E, ...}``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from oesearch.distributed.dispatch import Dispatcher  # noqa: E402
from oesearch.distributed.pool import SharedPool  # noqa: E402
from oesearch.distributed.scheduler import search_durations, simulate_campaign  # noqa: E402
from oesearch.search.fitness import Job  # noqa: E402


# --campaign: generations after generation 0 (40 x 204 trainings: 9.5 min on the 2-core VM at 32 workers)
REAL_CAMPAIGN_GENERATIONS = 1
SIMULATED_GENERATIONS = 50  # --campaign --simulate: the paper's budget


@ray.remote
class SleepWorker:
    """A fitness worker whose evaluation is a sleep of the given length."""

    def ready(self) -> dict:
        return {"worker": f"{socket.gethostname()}:{os.getpid()}"}

    def evaluate(self, job: Job, seconds: float) -> dict:
        start = time.perf_counter()
        time.sleep(seconds)
        return job.row(auc=0.5, status="ok", reason=None, seconds=time.perf_counter() - start)


def generation_sizes(population: int, repetitions: int, generations: int, changed: float) -> list[int]:
    """Trainings per generation: all of generation 0, then the individuals that mating or mutation changed."""
    later = max(1, round(changed * population)) * repetitions
    return [population * repetitions] + [later] * generations


def draw_durations(args: argparse.Namespace) -> tuple[list[np.ndarray], list[int]]:
    """Seeded evaluation times per generation: gamma with mean m and cv c (shape 1/c^2, scale m c^2)."""
    rng = np.random.default_rng(args.seed)
    shape = 1.0 / args.cv**2
    sizes = generation_sizes(args.population, args.repetitions, args.generations, args.changed)
    return [rng.gamma(shape, args.mean_seconds / shape, size) for size in sizes], sizes


def barrier_bound(durations: list[np.ndarray], n: int) -> float:
    """Efficiency of a zero-overhead dispatcher with the same durations and the generation barrier.

    Each generation is list-scheduled in submission order: every job goes to the
    worker that frees up first, as the real dispatcher does, with no gaps.
    """
    shortest_wall = 0.0
    for d in durations:
        free = [0.0] * n
        for seconds in d:
            heapq.heapreplace(free, free[0] + seconds)
        shortest_wall += max(free)
    return sum(d.sum() for d in durations) / (n * shortest_wall)


def start_cluster(n: int, nodes: int) -> Cluster:
    """A CPU-less head and ``nodes`` nodes whose ``sim_gpu`` resources add up to ``n``; connected."""
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    per_node = [n // nodes + (i < n % nodes) for i in range(nodes)]
    for share in per_node:
        cluster.add_node(num_cpus=0, resources={"sim_gpu": share})
    cluster.wait_for_nodes()
    return cluster


def single_search(args: argparse.Namespace, n: int, nodes: int) -> None:
    durations, sizes = draw_durations(args)
    bound = barrier_bound(durations, n)
    if args.bound_only:
        print(json.dumps({"workers": n, "barrier_bound": round(bound, 4), "per_generation": sizes}))
        return

    cluster = start_cluster(n, nodes)
    dispatcher = Dispatcher(SleepWorker, (), lambda job: (durations[job.generation][job.individual],), n,
                            {"num_cpus": 0, "resources": {"sim_gpu": 1}}, name="dispatch-bench")
    assert dispatcher.wait_ready(timeout=300) == n, "not every simulated worker started"
    busy, rows = 0.0, 0
    start = time.perf_counter()
    for gen, size in enumerate(sizes):
        jobs = [Job(0, (i,), 0, "search", gen, i) for i in range(size)]

        def on_row(row: dict) -> None:
            nonlocal busy, rows
            busy += row["seconds"]
            rows += 1

        dispatcher.run(jobs, on_row)
    wall = time.perf_counter() - start
    dispatcher.shutdown()
    ray.shutdown()
    cluster.shutdown()

    ideal = sum(d.sum() for d in durations) / (n * bound)
    result = {
        "workers": n,
        "nodes": nodes,
        "efficiency": round(busy / (n * wall), 4),
        "barrier_bound": round(bound, 4),
        "dispatch_efficiency": round(ideal / wall, 4),
        "evaluations": rows,
        "mean_seconds": args.mean_seconds,
        "cv": args.cv,
        "wall_seconds": round(wall, 2),
        "busy_seconds": round(busy, 2),
        "per_generation": sizes,
    }
    print(f"{n} workers on {nodes} nodes: {rows} evaluations in {wall:.1f}s; efficiency {result['efficiency']:.3f} "
          f"(a zero-overhead dispatcher with the same generation barrier: {result['barrier_bound']:.3f}; "
          f"this one reaches {result['dispatch_efficiency']:.3f} of that)")
    print(json.dumps(result))


def search_task(s: int) -> str:
    """Search ``s``'s task: searches 2t and 2t+1 share one (best and worst of one class and method)."""
    return f"task{s // 2}"


def campaign_durations(args: argparse.Namespace, searches: int, sizes: list[int]) -> list[list[np.ndarray]]:
    """Per search, per generation, its evaluation times: the very draws the simulation makes."""
    return [search_durations(sizes, args.mean_seconds, args.cv, args.seed, s) for s in range(searches)]


def campaign(args: argparse.Namespace, n: int, nodes: int) -> None:
    searches = args.searches
    sizes = generation_sizes(args.population, args.repetitions, args.generations, args.changed)
    one_search, _ = draw_durations(args)
    bound = barrier_bound(one_search, n)  # one search alone on the same N workers
    t0 = time.perf_counter()
    sim = simulate_campaign(n, [sizes] * searches, args.mean_seconds, args.cv, args.seed)
    sim_seconds = time.perf_counter() - t0
    print(f"simulation ({sim_seconds:.1f}s of computing): {searches} searches x {sizes[0]} + "
          f"{sizes[1] if len(sizes) > 1 else 0} x {len(sizes) - 1} trainings on {n} workers, "
          f"zero dispatch overhead: efficiency {sim.efficiency:.4f} in {sim.wall:.1f} simulated s "
          f"(one search alone on {n} workers: barrier bound {bound:.4f})", flush=True)
    if args.simulate:
        result = {
            "workers": n,
            "searches": searches,
            "efficiency": round(sim.efficiency, 4),
            "simulated": True,
            "barrier_bound": round(bound, 4),
            "wall_seconds": round(sim.wall, 2),
            "busy_seconds": round(sim.busy, 2),
            "evaluations": sim.trainings,
            "generations": len(sizes),
            "first_generation": sizes[0],
            "later_generations": sizes[1] if len(sizes) > 1 else 0,
            "mean_seconds": args.mean_seconds,
            "cv": args.cv,
            "seed": args.seed,
        }
        print(json.dumps(result))
        return

    durations = campaign_durations(args, searches, sizes)
    t0 = time.perf_counter()
    cluster = start_cluster(n, nodes)
    dispatcher = Dispatcher(SleepWorker, (),
                            lambda job: (durations[job.normal_class][job.generation][job.individual],), n,
                            {"num_cpus": 0, "resources": {"sim_gpu": 1}}, name="campaign-bench")
    ready = dispatcher.wait_ready(timeout=600)
    assert ready == n, f"only {ready} of {n} simulated workers started"
    print(f"cluster of {nodes} nodes and {n} workers started in {time.perf_counter() - t0:.1f}s", flush=True)
    pool = SharedPool(dispatcher, "gpu", "campaign-bench")

    busy, rows, last_row = 0.0, 0, 0.0

    def on_row(row: dict) -> None:  # called on the dispatcher's thread only
        nonlocal busy, rows, last_row
        busy += row["seconds"]
        rows += 1
        last_row = time.perf_counter()

    def search(s: int) -> int:
        run_jobs = pool.run_jobs_for(f"s{s}")
        for gen, size in enumerate(sizes):
            jobs = [Job(s, (i,), args.seed, "search", gen, i, task=search_task(s)) for i in range(size)]
            run_jobs(jobs, on_row)
        return len(sizes)

    start = time.perf_counter()
    results = pool.run({f"s{s}": (lambda s=s: search(s)) for s in range(searches)})
    wall = last_row - start
    failed = {name: r for name, r in results.items() if isinstance(r, BaseException)}
    dispatcher.shutdown()
    ray.shutdown()
    cluster.shutdown()
    if failed:
        raise SystemExit(f"{len(failed)} simulated searches raised: {failed}")

    efficiency = busy / (n * wall)
    result = {
        "workers": n,
        "searches": searches,
        "efficiency": round(efficiency, 4),
        "simulated_efficiency": round(sim.efficiency, 4),
        "vs_simulated": round(efficiency / sim.efficiency, 4),
        "barrier_bound": round(bound, 4),
        "wall_seconds": round(wall, 2),
        "busy_seconds": round(busy, 2),
        "evaluations": rows,
        "generations": len(sizes),
        "first_generation": sizes[0],
        "later_generations": sizes[1] if len(sizes) > 1 else 0,
        "mean_seconds": args.mean_seconds,
        "cv": args.cv,
        "seed": args.seed,
        "nodes": nodes,
        "retries": dispatcher.retries,
        "replaced": dispatcher.replaced,
    }
    print(f"{searches} searches on {n} workers ({nodes} nodes): {rows} evaluations in {wall:.1f}s; "
          f"efficiency {efficiency:.4f} (simulated, no dispatch overhead: {sim.efficiency:.4f}; "
          f"one search alone: barrier bound {bound:.4f})")
    print(json.dumps(result))


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Campaign: --campaign --searches 40 --workers 32 runs the real Dispatcher + SharedPool + FairQueue "
               f"(generations after generation 0 default to {REAL_CAMPAIGN_GENERATIONS}: 9.5 minutes on the "
               "project's 2-core VM at 40 searches, 32 workers and 2 s, of which 49 s start the cluster; 2 would "
               "take about 12.5); add --simulate for the discrete-event simulation only "
               f"(no cluster; generations default to {SIMULATED_GENERATIONS}, the paper's budget).")
    p.add_argument("--workers", type=int, required=True, help="simulated GPU workers (N)")
    p.add_argument("--mean-seconds", type=float, default=2.0, help="mean fake evaluation time")
    p.add_argument("--cv", type=float, default=0.25, help="coefficient of variation of evaluation times")
    p.add_argument("--population", type=int, default=64, help="individuals per generation (paper: 64)")
    p.add_argument("--repetitions", type=int, default=2, help="trainings per individual (paper: 2)")
    p.add_argument("--generations", type=int,
                   help="generations after generation 0 (default: 3 for one search, "
                        f"{REAL_CAMPAIGN_GENERATIONS} for --campaign, "
                        f"{SIMULATED_GENERATIONS} for --campaign --simulate)")
    p.add_argument("--changed", type=float, default=0.6,
                   help="share of individuals re-evaluated per generation (mutation 0.55 + mating 0.05)")
    p.add_argument("--nodes", type=int, help="simulated worker nodes (default: N/4, at least 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bound-only", action="store_true",
                   help="print only the barrier bound for these settings (no cluster; for N beyond this machine)")
    p.add_argument("--campaign", action="store_true",
                   help="S searches at once on one pool (SharedPool + FairQueue), each with its generation barrier")
    p.add_argument("--searches", type=int, default=40, help="searches in the campaign (S; default 40, as Table 3)")
    p.add_argument("--simulate", action="store_true",
                   help="with --campaign: only the discrete-event simulation of the same FairQueue (no cluster)")
    args = p.parse_args()
    if args.simulate and not args.campaign:
        p.error("--simulate needs --campaign")
    if args.generations is None:
        args.generations = (SIMULATED_GENERATIONS if args.simulate else REAL_CAMPAIGN_GENERATIONS) \
            if args.campaign else 3
    n = args.workers
    nodes = args.nodes or max(2, math.ceil(n / 4))
    if args.campaign:
        campaign(args, n, nodes)
    else:
        single_search(args, n, nodes)


if __name__ == "__main__":
    main()
