"""Ray custom metrics for the dashboard (and Prometheus/Grafana through Ray's metrics export).

All are tagged with the run id, method, mode and campaign (``none`` outside one), so
several searches on one cluster stay apart and a campaign's add up.  Ray prefixes the names with ``ray_`` when it exports them.
"""

from __future__ import annotations

import math
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

__all__ = ["RunMetrics", "CampaignMetrics", "SECONDS_BUCKETS"]

_TAGS = ("run_id", "method", "mode", "campaign")
SECONDS_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800]  # one training: seconds to half an hour


class RunMetrics:
    """Counters, gauges and a histogram of one search, updated from the driver."""

    def __init__(self, run_id: str, method: str, mode: str, campaign: str = "none") -> None:
        self.tags = {"run_id": run_id, "method": method, "mode": mode, "campaign": campaign}
        self.done = Counter("oesearch_evaluations_done", "trainings finished with a test AUC", tag_keys=_TAGS)
        self.failed = Counter("oesearch_evaluations_failed", "trainings that failed after every retry", tag_keys=_TAGS)
        self.generation = Gauge("oesearch_generation", "generation the search has finished", tag_keys=_TAGS)
        self.best = Gauge("oesearch_best_fitness", "highest individual fitness so far", tag_keys=_TAGS)
        self.worst = Gauge("oesearch_worst_fitness", "lowest individual fitness so far", tag_keys=_TAGS)
        self.seconds = Histogram("oesearch_evaluation_seconds", "seconds per training, on its worker",
                                 boundaries=SECONDS_BUCKETS, tag_keys=_TAGS)
        for metric in (self.done, self.failed, self.generation, self.best, self.worst, self.seconds):
            metric.set_default_tags(self.tags)
        self._best = -math.inf
        self._worst = math.inf

    def record_row(self, row: dict[str, Any]) -> None:
        """One journal row: counted as done or failed; its training time observed."""
        (self.done if row["status"] == "ok" else self.failed).inc()
        if row.get("seconds") is not None:
            self.seconds.observe(float(row["seconds"]))

    def record_generation(self, generation: int, fitness_min: float, fitness_max: float) -> None:
        """After a generation: its number, and the extremes of every finite fitness so far."""
        self.generation.set(generation)
        if math.isfinite(fitness_max):
            self._best = max(self._best, fitness_max)
            self.best.set(self._best)
        if math.isfinite(fitness_min):
            self._worst = min(self._worst, fitness_min)
            self.worst.set(self._worst)


class CampaignMetrics:
    """A campaign's progress: its searches, how many finished, how many failed (tagged with its name)."""

    def __init__(self, campaign: str) -> None:
        tags = {"campaign": campaign}
        self.searches = Gauge("oesearch_campaign_searches", "searches in the campaign", tag_keys=("campaign",))
        self.finished = Gauge("oesearch_campaign_searches_finished", "searches of the campaign that finished",
                              tag_keys=("campaign",))
        self.failed = Gauge("oesearch_campaign_searches_failed", "searches of the campaign that stopped with an error",
                            tag_keys=("campaign",))
        for metric in (self.searches, self.finished, self.failed):
            metric.set_default_tags(tags)

    def record(self, searches: int, finished: int, failed: int) -> None:
        self.searches.set(searches)
        self.finished.set(finished)
        self.failed.set(failed)
