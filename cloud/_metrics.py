"""Prometheus metrics (one registry per service, so several services can share a process)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_TIME_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class VersionMetrics:
    """The label-bound children for one model version (bound once, used per request)."""

    requests: Counter
    queue: Histogram
    compute: Histogram
    request_time: Histogram
    batch: Histogram
    model: str
    version: str
    parent: Metrics

    def failure(self, reason: str) -> None:
        self.parent.failures.labels(self.model, self.version, reason).inc()


class Metrics:
    """The service's metrics, exposed at ``/metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgecut_inference_requests", "Inference requests answered successfully",
            ["model", "version"], registry=r)
        self.failures = Counter(
            "edgecut_inference_failures", "Inference requests that failed, by reason",
            ["model", "version", "reason"], registry=r)
        self.queue = Histogram(
            "edgecut_queue_seconds", "Time a request waited in its model's queue",
            ["model", "version"], buckets=_TIME_BUCKETS, registry=r)
        self.compute = Histogram(
            "edgecut_compute_seconds", "Model execution time of the batch a request ran in",
            ["model", "version"], buckets=_TIME_BUCKETS, registry=r)
        self.request_time = Histogram(
            "edgecut_request_seconds", "Server-side time of an inference request",
            ["model", "version"], buckets=_TIME_BUCKETS, registry=r)
        self.batch = Histogram(
            "edgecut_batch_size", "Batch sizes the dynamic batcher formed",
            ["model", "version"], buckets=_BATCH_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "edgecut_requests_in_flight", "Inference requests being served", ["model"], registry=r)
        self.batch_reruns = Counter(
            "edgecut_batch_reruns", "Requests run again alone after their batch failed (so "
            "that only a request that fails by itself gets the error)",
            ["model", "version"], registry=r)
        self.http = Counter(
            "edgecut_http_responses", "HTTP responses by status code", ["code"], registry=r)

    def for_version(self, model: str, version: str) -> VersionMetrics:
        return VersionMetrics(
            self.requests.labels(model, version),
            self.queue.labels(model, version),
            self.compute.labels(model, version),
            self.request_time.labels(model, version),
            self.batch.labels(model, version),
            model,
            version,
            self,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
