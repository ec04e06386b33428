"""Prometheus metrics (one registry per service, so several services can share a process).

Two families side by side: edgecut's own (``edgecut_*``: histograms of queue, compute and
request time, batch sizes, failures by reason) and Triton's (``nv_inference_*``, the names,
units and ``model``/``version`` labels a Triton dashboard queries), the latter rendered
from the statistics extension's counters so the two views of a version always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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


# Triton's per-model metrics: (name, type, help). Counters are cumulative since the
# version loaded; durations in microseconds, as Triton's.
TRITON_METRICS: tuple[tuple[str, str, str], ...] = (
    ("nv_inference_request_success", "counter",
     "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "counter",
     "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "counter", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "counter",
     "Number of model executions performed (does not include cached requests)"),
    ("nv_inference_request_duration_us", "counter",
     "Cumulative inference request duration in microseconds (includes cached requests)"),
    ("nv_inference_queue_duration_us", "counter",
     "Cumulative inference queuing duration in microseconds (includes cached requests)"),
    ("nv_inference_compute_input_duration_us", "counter",
     "Cumulative compute input duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_infer_duration_us", "counter",
     "Cumulative compute inference duration in microseconds (does not include cached requests)"),
    ("nv_inference_compute_output_duration_us", "counter",
     "Cumulative inference compute output duration in microseconds (does not include cached "
     "requests)"),
    ("nv_inference_pending_request_count", "gauge",
     "Instantaneous number of pending requests awaiting execution per-model."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def triton_text(rows: Iterable[tuple[str, str, Mapping[str, float]]]) -> bytes:
    """Triton's metrics in the Prometheus text format, exactly as ``tritonserver`` writes
    them (counter samples without a ``_total`` suffix). ``rows``: (model, version, {metric
    name: value}) per served version."""
    rows = list(rows)
    lines: list[str] = []
    for name, kind, text in TRITON_METRICS:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        for model, version, values in rows:
            value = values.get(name, 0)
            shown = int(value) if float(value).is_integer() else float(value)
            lines.append(f'{name}{{model="{_label(model)}",version="{_label(version)}"}} {shown}')
    return ("\n".join(lines) + "\n").encode("utf-8")


class Metrics:
    """The service's metrics, exposed at ``/metrics``.

    ``text_sources``: callables returning more exposition text (bytes) appended after the
    registry's, e.g. the service's Triton family.
    """

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
        self.relay = Counter(
            "edgecut_relay_requests", "Requests a chain's middle node forwarded to its next hop "
            "(forwarded), finished itself when the next hop failed (finished_here), or without "
            "trying it while its breaker was open (next_hop_down)", ["model", "outcome"], registry=r)
        self.http = Counter(
            "edgecut_http_responses", "HTTP responses by status code", ["code"], registry=r)
        self.text_sources: list[Callable[[], bytes]] = []

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
        return b"".join([generate_latest(self.registry), *(f() for f in self.text_sources)])
