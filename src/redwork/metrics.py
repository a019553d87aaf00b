"""/metrics in Prometheus's text format. Queue gauges and totals are read from Redis at
scrape time (so every API process reports the same numbers); job durations are what
this process saw in the event stream."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STATES = ("waiting", "held", "limited", "active", "delayed", "failed")
TOTALS = (
    "enqueued",
    "completed",
    "failed",
    "retried",
    "recovered",
    "fenced",
    "conflicts",
    "cancelled",
)
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class QueueCounts(Protocol):
    name: str
    totals: dict[str, int]

    def model_dump(self) -> dict[str, Any]: ...


class _Snapshot(Collector):
    def __init__(self, queues: Sequence[QueueCounts], workers: int, live_clients: int) -> None:
        self.queues = queues
        self.workers = workers
        self.live_clients = live_clients

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "redwork_queue_jobs", "Jobs in a queue by state", labels=["queue", "state"]
        )
        totals = CounterMetricFamily(
            "redwork_queue_events", "Jobs that went through a transition", labels=["queue", "event"]
        )
        for queue in self.queues:
            counts = queue.model_dump()
            for state in STATES:
                jobs.add_metric([queue.name, state], counts[state])
            for event in TOTALS:
                totals.add_metric([queue.name, event], queue.totals.get(event, 0))
        yield jobs
        yield totals
        yield GaugeMetricFamily("redwork_workers", "Live workers", value=self.workers)
        yield GaugeMetricFamily(
            "redwork_live_clients",
            "Clients of this API process following live updates",
            value=self.live_clients,
        )


class Metrics:
    def __init__(self) -> None:
        self._registry = CollectorRegistry(auto_describe=True)
        self._durations = Histogram(
            "redwork_job_duration_seconds",
            "Run time of jobs, from start to outcome, seen by this API process",
            ["queue", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=self._registry,
        )

    def observe_duration(self, queue: str, outcome: str, seconds: float) -> None:
        self._durations.labels(queue, outcome).observe(seconds)

    def render(self, queues: Iterable[QueueCounts], workers: int, live_clients: int) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(list(queues), workers, live_clients))
        return generate_latest(registry) + generate_latest(self._registry)
