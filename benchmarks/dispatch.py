"""Dispatch efficiency of the real dispatch path over N simulated GPU workers.

    python benchmarks/dispatch.py --workers 8 --mean-seconds 2

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
The last line is one JSON object.
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
from oesearch.search.fitness import Job  # noqa: E402


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, required=True, help="simulated GPU workers (N)")
    p.add_argument("--mean-seconds", type=float, default=2.0, help="mean fake evaluation time")
    p.add_argument("--cv", type=float, default=0.25, help="coefficient of variation of evaluation times")
    p.add_argument("--population", type=int, default=64, help="individuals per generation (paper: 64)")
    p.add_argument("--repetitions", type=int, default=2, help="trainings per individual (paper: 2)")
    p.add_argument("--generations", type=int, default=3, help="generations after generation 0")
    p.add_argument("--changed", type=float, default=0.6,
                   help="share of individuals re-evaluated per generation (mutation 0.55 + mating 0.05)")
    p.add_argument("--nodes", type=int, help="simulated worker nodes (default: N/4, at least 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bound-only", action="store_true",
                   help="print only the barrier bound for these settings (no cluster; for N beyond this machine)")
    args = p.parse_args()
    n = args.workers
    nodes = args.nodes or max(2, math.ceil(n / 4))
    durations, sizes = draw_durations(args)
    bound = barrier_bound(durations, n)
    if args.bound_only:
        print(json.dumps({"workers": n, "barrier_bound": round(bound, 4), "per_generation": sizes}))
        return

    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    per_node = [n // nodes + (i < n % nodes) for i in range(nodes)]
    for share in per_node:
        cluster.add_node(num_cpus=0, resources={"sim_gpu": share})
    cluster.wait_for_nodes()

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


if __name__ == "__main__":
    main()
