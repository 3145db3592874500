"""``/metrics``: the service's state in Prometheus' text format, read from the database at
each scrape (so the numbers survive restarts and agree with the API)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shadowrl.service.store import FINAL, Store

OUTCOMES = ("healthy", "unhealthy", "failed", "cancelled", "interrupted")


class StateCollector(Collector):
    def __init__(self, store: Store, deployments: list[str]) -> None:
        self.store, self.deployments = store, deployments

    def collect(self) -> Iterator[Metric]:  # noqa: C901 (one family after another)
        rehearsals = CounterMetricFamily(
            "shadowrl_rehearsals", "Rehearsal campaigns by outcome: healthy or unhealthy "
            "verdict, or a job that failed, was cancelled or interrupted.",
            labels=["deployment", "outcome"])
        jobs = CounterMetricFamily("shadowrl_jobs", "Finished jobs by kind and status.",
                                   labels=["deployment", "kind", "status"])
        counts: dict[tuple[str, str], int] = {}
        for dep, kind, status, n in self.store.count_by():
            if status in FINAL:
                jobs.add_metric([dep, kind, status], n)
            if kind == "rehearse" and status in ("failed", "cancelled", "interrupted"):
                counts[(dep, status)] = counts.get((dep, status), 0) + n
        healthy = GaugeMetricFamily("shadowrl_verdict_healthy", "1 when the latest verdict "
                                    "says the rollback is healthy, 0 when not.",
                                    labels=["deployment"])
        age = GaugeMetricFamily("shadowrl_verdict_age_seconds", "Seconds since the latest "
                                "verdict's rehearsal ended.", labels=["deployment"])
        downtime = GaugeMetricFamily("shadowrl_rehearsal_downtime_seconds", "Mean downtime "
                                     "of the latest verdict's rehearsal runs.",
                                     labels=["deployment"])
        burn = GaugeMetricFamily("shadowrl_rehearsal_budget_burn_ratio", "Mean share of "
                                 "the error budget the latest verdict's runs burned.",
                                 labels=["deployment"])
        recovered = GaugeMetricFamily("shadowrl_rehearsal_recovered_ratio", "Share of the "
                                      "latest verdict's runs that recovered.",
                                      labels=["deployment"])
        drift = GaugeMetricFamily("shadowrl_sync_drift", "Changes the last sync found "
                                  "between the live deployment and the scenario.",
                                  labels=["deployment"])
        now = time.time()
        for name in self.deployments:
            for ok, n in self.store.verdict_counts(name).items():
                counts[(name, "healthy" if ok else "unhealthy")] = n
            verdict = self.store.latest_verdict(name)
            if verdict is not None:
                healthy.add_metric([name], 1.0 if verdict["healthy"] else 0.0)
                age.add_metric([name], max(0.0, now - float(verdict["rehearsed_at"])))
                downtime.add_metric([name], float(verdict["downtime_s"].get("mean", 0.0)))
                burn.add_metric([name], float(verdict["budget_burn"].get("mean", 0.0)))
                recovered.add_metric([name], float(verdict["recovered_share"]))
            row = self.store.deployment(name)
            if row is not None and row.synced_at is not None:
                drift.add_metric([name], float(row.drift))
        for name in self.deployments:
            for outcome in OUTCOMES:
                rehearsals.add_metric([name, outcome], counts.get((name, outcome), 0))
        by_status = self.store.count_by_status()
        queue = GaugeMetricFamily("shadowrl_jobs_queued", "Jobs waiting to run.")
        queue.add_metric([], by_status.get("queued", 0))
        running = GaugeMetricFamily("shadowrl_jobs_running", "Jobs running now.")
        running.add_metric([], by_status.get("running", 0))
        yield from (rehearsals, jobs, healthy, age, downtime, burn, recovered, drift, queue,
                    running)


def registry_for(store: Store, deployments: list[str]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(store, deployments))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
