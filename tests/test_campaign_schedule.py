"""The campaign's scheduling policy, without Ray: FairQueue's order and simulate_campaign's arithmetic.

The expectations are worked out by hand, or by the small model below (written from the documented
rule, not from the scheduler's code): a free worker takes a job of the search with the fewest
trainings started (first attempts), ties going to the search registered first; a packed call of
up to k jobs takes, after its first job, jobs of searches whose next job has the same task, each
chosen by the same rule; a retry goes back to the front of its own search; a closed search's
waiting jobs are dropped.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from oesearch.distributed.scheduler import FairQueue, simulate_campaign

ROOT = Path(__file__).resolve().parents[1]


@dataclass(eq=False)
class J:
    """A job: which search, which one of its batch, and its task."""

    search: str
    i: int
    task: str | None = None

    def __repr__(self) -> str:
        return f"{self.search}{self.i}"


def queue_of(batches: dict[str, list[J]]) -> tuple[FairQueue, dict[str, list], dict[str, int]]:
    """A FairQueue with each search registered in ``batches``' order and its one batch added."""
    q = FairQueue()
    rows: dict[str, list] = {name: [] for name in batches}
    done: dict[str, int] = {name: 0 for name in batches}
    for name in batches:
        q.register(name)
    for name, jobs in batches.items():
        q.add(name, jobs, rows[name].append, lambda name=name: done.__setitem__(name, done[name] + 1))
    return q, rows, done


def jobs(name: str, n: int, task: str | None = None) -> list[J]:
    return [J(name, i, task) for i in range(n)]


def names(items) -> list[str]:
    return [job.search for job, _ in items]


# --- (a) FairQueue's order -----------------------------------------------------------------------------------


def test_take_one_follows_fewest_started_then_registration_order():
    # A has 5 jobs, B 2, C 3.  By hand: all at 0 -> A; A1 B0 C0 -> B; A1 B1 C0 -> C; 1 1 1 -> A;
    # A2 B1 C1 -> B (B now empty); A2 C1 -> C; A2 C2 -> A; A3 C2 -> C (C now empty); then A, A.
    q, _, _ = queue_of({"A": jobs("A", 5), "B": jobs("B", 2), "C": jobs("C", 3)})
    order = [names(q.take(1))[0] for _ in range(10)]
    assert order == list("ABCABCACAA")
    assert q.take(1) == [] and len(q) == 0
    assert [q.started(s) for s in "ABC"] == [5, 2, 3]


def test_each_search_keeps_its_own_order():
    q, _, _ = queue_of({"A": jobs("A", 4), "B": jobs("B", 4)})
    taken = [q.take(1)[0][0] for _ in range(8)]
    assert [j.i for j in taken if j.search == "A"] == [0, 1, 2, 3]
    assert [j.i for j in taken if j.search == "B"] == [0, 1, 2, 3]


def test_a_retry_goes_to_the_front_of_its_own_search_and_is_not_counted_again():
    q, _, _ = queue_of({"A": jobs("A", 3), "B": jobs("B", 3)})
    (a0, attempt), = q.take(1)
    assert (a0.search, a0.i, attempt) == ("A", 0, 0)
    (b0, _), = q.take(1)
    q.put_back([(a0, 1)])  # its worker died: the retry
    assert q.started("A") == 1  # a retry is no new training
    # A1 B1 -> tie, A registered first: A's front is the retry, not A1.
    (job, attempt), = q.take(1)
    assert (job, attempt) == (a0, 1)
    assert q.started("A") == 1
    # Now A is still at 1, B at 1: A again (A1), then B (B1).
    assert [(j.search, j.i) for j, _ in (q.take(1)[0], q.take(1)[0])] == [("A", 1), ("B", 1)]


def test_put_back_of_several_keeps_their_order_in_front():
    q, _, _ = queue_of({"A": jobs("A", 4)})
    taken = q.take(3)
    assert [j.i for j, _ in taken] == [0, 1, 2]
    q.put_back([(taken[1][0], 0), (taken[2][0], 0)])  # queued behind a lost worker: requeued untouched
    assert [j.i for j, _ in q.take(4)] == [1, 2, 3]


def test_packing_takes_one_task_across_the_searches_that_share_it():
    # A and C train task x, B task y.  take(3), by hand:
    #   1st: A0 B0 C0 -> A (task x); then among x: A1 C0 -> C; A1 C1 -> A.       [A, C, A]
    #   2nd: A2 B0 C1 -> B (task y); only B has y: B, B.                          [B, B, B]
    #   3rd: A2 B3 C1 -> C; among x: A2 C2 -> A; A3 C2 -> C.                      [C, A, C]
    q, _, _ = queue_of({"A": jobs("A", 4, "x"), "B": jobs("B", 4, "y"), "C": jobs("C", 4, "x")})
    first, second, third = q.take(3), q.take(3), q.take(3)
    assert [(j.search, j.i) for j, _ in first] == [("A", 0), ("C", 0), ("A", 1)]
    assert [(j.search, j.i) for j, _ in second] == [("B", 0), ("B", 1), ("B", 2)]
    assert [(j.search, j.i) for j, _ in third] == [("C", 1), ("A", 2), ("C", 2)]
    for batch in (first, second, third):
        assert len({j.task for j, _ in batch}) == 1
    # What is left: A3, B3, C3; A3 B3 C3 started counts 3, 3, 3 -> A, and only C shares x.
    assert [(j.search, j.i) for j, _ in q.take(5)] == [("A", 3), ("C", 3)]
    assert [(j.search, j.i) for j, _ in q.take(5)] == [("B", 3)]


def test_a_packed_call_stops_at_what_its_task_has():
    q, _, _ = queue_of({"A": jobs("A", 2, "x"), "B": jobs("B", 5, "y")})
    assert names(q.take(4)) == ["A", "A"]  # B's jobs are of another task: not in A's call
    assert names(q.take(4)) == ["B"] * 4


def test_a_closed_search_drops_its_waiting_jobs_and_ignores_late_rows():
    q, rows, done = queue_of({"A": jobs("A", 3), "B": jobs("B", 2)})
    (a0, _), = q.take(1)  # running when A stops
    q.close("A")
    assert len(q) == 2 and q.open  # B's two jobs; B is not closed
    assert names(q.take(5)) == ["B", "B"]
    q.finished(a0, {"status": "ok"})  # the running job's row arrives after the close
    q.put_back([(a0, 1)])  # or its retry
    assert rows["A"] == [] and done["A"] == 0 and len(q) == 0
    q.close("B")
    assert not q.open


def test_rows_reach_their_own_search_and_the_batch_ends_once():
    q, rows, done = queue_of({"A": jobs("A", 2), "B": jobs("B", 1)})
    items = q.take(3)
    for job, _ in reversed(items):
        q.finished(job, {"status": "ok", "job": repr(job)})
    assert [r["job"] for r in rows["A"]] == ["A1", "A0"] and [r["job"] for r in rows["B"]] == ["B0"]
    assert done == {"A": 1, "B": 1}
    q.add("A", jobs("A", 1), rows["A"].append, lambda: None)  # the next generation, after the last one ended
    with pytest.raises(RuntimeError):  # not before it ends
        q.add("A", jobs("A", 1), rows["A"].append, lambda: None)

class Model:
    """The documented rule, reimplemented from scratch: lists, counts and a linear scan."""

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.pending = {s: [] for s in order}
        self.started = {s: 0 for s in order}
        self.closed = set()

    def best(self, task=None, any_task=True):
        best = None
        for s in self.order:  # registration order: the first of equal counts wins
            if self.pending[s] and (any_task or self.pending[s][0][0].task == task):
                if best is None or self.started[s] < self.started[best]:
                    best = s
        return best

    def take(self, k):
        s = self.best()
        if s is None:
            return []
        task = self.pending[s][0][0].task
        out = []
        while s is not None and len(out) < k:
            job, attempt = self.pending[s].pop(0)
            if attempt == 0:
                self.started[s] += 1
            out.append((job, attempt))
            s = self.best(task, any_task=False)
        return out

    def put_back(self, items):
        for job, attempt in reversed(items):
            if job.search not in self.closed:
                self.pending[job.search].insert(0, (job, attempt))

    def close(self, s):
        self.closed.add(s)
        self.pending[s] = []


@pytest.mark.parametrize("seed", range(30))
def test_fair_queue_matches_the_model_on_random_campaigns(seed):
    rnd = random.Random(seed)
    searches = [f"s{i}" for i in range(rnd.randint(2, 6))]
    tasks = {s: rnd.choice(["x", "y", "z"]) for s in searches}
    q = FairQueue()
    model = Model(searches)
    for s in searches:
        q.register(s)
    running: list = []
    serial = 0
    for step in range(300):
        # Searches with no batch outstanding may add one (the model keeps the same pending lists).
        for s in searches:
            if s in model.closed or model.pending[s] or any(j.search == s for j, _ in running):
                continue
            if rnd.random() < 0.5:
                batch = [J(s, serial + i, tasks[s]) for i in range(rnd.randint(1, 7))]
                serial += len(batch)
                q.add(s, batch, lambda row: None, lambda: None)
                model.pending[s].extend((j, 0) for j in batch)
        r = rnd.random()
        if r < 0.6:
            k = rnd.choice([1, 1, 2, 3, 8])
            got, want = q.take(k), model.take(k)
            assert [(j, a) for j, a in got] == [(j, a) for j, a in want], f"step {step}, take({k})"
            running.extend(got)
        elif r < 0.75 and running:  # a worker died: its running job retried, the rest requeued untouched
            n = rnd.randint(1, min(3, len(running)))
            lost, running = running[:n], running[n:]
            items = [(lost[0][0], lost[0][1] + 1)] + lost[1:]
            q.put_back(items)
            model.put_back(items)
        elif r < 0.97 and running:
            job, _ = running.pop(rnd.randrange(len(running)))
            q.finished(job, {"status": "ok"})
        elif len(model.closed) < len(searches) - 1:
            s = rnd.choice([s for s in searches if s not in model.closed])
            q.close(s)
            model.close(s)
            running = [(j, a) for j, a in running if j.search != s]
        assert len(q) == sum(len(p) for p in model.pending.values())
        assert all(q.started(s) == model.started[s] for s in searches)


# --- (b) simulate_campaign's arithmetic -----------------------------------------------------------------------


def load_benchmark():
    spec = importlib.util.spec_from_file_location("dispatch_benchmark", ROOT / "benchmarks" / "dispatch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_workers_one_barrier_each_by_hand():
    # 2 workers, every training 1 s.  A: one generation of 1, then one of 1; B: one generation of 1.
    # t=0: A0 and B0 run.  t=1: A's next generation (1 job) runs alone; B is done.  t=2: end.
    # busy 3 worker-seconds over 2 workers x 2 s.
    sim = simulate_campaign(2, [[1, 1], [1]], 1.0, 0.0, seed=0)
    assert (sim.trainings, sim.busy, sim.wall) == (3, 3.0, 2.0)
    assert sim.efficiency == pytest.approx(0.75)


def test_fairness_hides_one_search_barrier_behind_another_by_hand():
    # 2 workers, 1 s each.  A: one generation of 4.  B: two generations of 1.
    # t=0: A0 (both at 0 started, A registered first), then B0 (B 0 < A 1).
    # t=1: A0 ends first: only A has jobs waiting (B is at its barrier) -> A1.  B0 ends: B adds its
    #      second generation; A has 2 started, B 1 -> B1.
    # t=2: A2, A3 (B is done).  t=3: the end.  busy 6 over 2 workers x 3 s: 1.0.
    # In arrival order instead (A's four, then B's two), B's barrier would cost a 4th second.
    sim = simulate_campaign(2, [[4], [1, 1]], 1.0, 0.0, seed=0)
    assert (sim.trainings, sim.busy, sim.wall) == (6, 6.0, 3.0)
    assert sim.efficiency == 1.0


def test_one_search_on_many_workers_is_the_single_search_barrier_bound():
    bench = load_benchmark()
    sizes = [128, 76, 76, 76]
    for n, rounds in ((64, [2, 2, 2, 2]), (100, [2, 1, 1, 1]), (256, [1, 1, 1, 1])):
        # Equal 2 s trainings: generation g takes ceil(size / n) rounds of 2 s.
        by_hand = sum(sizes) * 2.0 / (n * 2.0 * sum(rounds))
        sim = simulate_campaign(n, [sizes], 2.0, 0.0, seed=0)
        bound = bench.barrier_bound([np.full(s, 2.0) for s in sizes], n)
        assert sim.efficiency == pytest.approx(by_hand, rel=1e-12)
        assert bound == pytest.approx(by_hand, rel=1e-12)
        assert sim.wall == pytest.approx(2.0 * sum(rounds))
    assert by_hand == pytest.approx(356 / 1024)


def test_many_searches_fill_what_one_cannot():
    # 40 searches of 128 + 76 x 3 on 256 workers: one search alone reaches 356 / 1024 (above);
    # together they keep the workers busy but for the last generation's tail.
    sim = simulate_campaign(256, [[128, 76, 76, 76]] * 40, 2.0, 0.25, seed=0)
    assert sim.trainings == 40 * 356
    assert sim.efficiency > 0.9


# --- (c) only the seed decides --------------------------------------------------------------------------------


def test_a_simulation_depends_on_its_seed_only():
    gens = [[16, 9, 9]] * 5
    a = simulate_campaign(12, gens, 2.0, 0.25, seed=7)
    b = simulate_campaign(12, gens, 2.0, 0.25, seed=7)
    c = simulate_campaign(12, gens, 2.0, 0.25, seed=8)
    assert a == b
    assert (a.busy, a.wall) != (c.busy, c.wall)
    assert a.trainings == c.trainings == 5 * 34


def test_the_benchmark_draws_each_search_durations_from_its_own_seed():
    bench = load_benchmark()
    args = type("A", (), {"seed": 3, "cv": 0.25, "mean_seconds": 2.0})()
    four = bench.campaign_durations(args, 4, [10, 5])
    two = bench.campaign_durations(args, 2, [10, 5])
    for s in range(2):  # search s's durations do not depend on how many others there are
        for g in range(2):
            np.testing.assert_array_equal(four[s][g], two[s][g])
    assert not np.array_equal(four[0][0], four[1][0])


def test_the_simulate_mode_prints_the_campaign_json_line():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dispatch.py"), "--campaign", "--simulate",
         "--searches", "3", "--workers", "8", "--generations", "2"],
        capture_output=True, text=True, check=True, timeout=120).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert list(result)[:4] == ["workers", "searches", "efficiency", "simulated"]
    assert (result["workers"], result["searches"], result["simulated"]) == (8, 3, True)
    assert result["evaluations"] == 3 * (128 + 76 * 2)
    expected = simulate_campaign(8, [[128, 76, 76]] * 3, 2.0, 0.25, seed=0)
    assert result["efficiency"] == round(expected.efficiency, 4)
