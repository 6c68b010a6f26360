"""Prometheus metrics of one worker, on a registry of its own (several apps may share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

ModuleCalls = Callable[[], Mapping[str, Mapping[str, int]]]  # module -> {"compiled": n, "eager graph": n, "eager": n}

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gpuroam_worker_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.request_seconds = Histogram(
            "gpuroam_worker_request_seconds",
            "Time from request to response for generation routes",
            ["route"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("gpuroam_worker_queue_depth", "Images waiting for the device", registry=r)
        self.batch_images = Histogram(
            "gpuroam_worker_batch_images", "Images per device batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.generation_seconds = Histogram(
            "gpuroam_worker_generation_seconds", "Device time per batch", buckets=SECONDS_BUCKETS, registry=r
        )
        self.images = Counter("gpuroam_worker_images", "Images generated", registry=r)
        self.batch_failures = Counter("gpuroam_worker_batch_failures", "Device batches that failed", registry=r)
        self.model_loaded = Gauge("gpuroam_worker_model_loaded", "1 once the model is loaded", registry=r)
        self.graphs_built = Gauge("gpuroam_worker_graphs_built", "Compiled graphs in use", registry=r)
        self.graphs_pending = Gauge("gpuroam_worker_graphs_pending", "Compiled graphs still to build", registry=r)
        self.warmth = Gauge(
            "gpuroam_worker_warmth", "Current speed as a share of full speed, while graphs compile", registry=r
        )

    def watch_module_calls(self, calls: ModuleCalls) -> None:
        """Count each accelerated module's calls by path: a replica whose graphs are built but whose calls
        stay eager is slow for a reason the warmth alone does not show."""
        self.registry.register(_ModuleCallsCollector(calls))

    def observe_batch(self, images: int, seconds: float) -> None:
        self.batch_images.observe(images)
        self.generation_seconds.observe(seconds)
        self.images.inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ModuleCallsCollector(Collector):
    def __init__(self, calls: ModuleCalls) -> None:
        self._calls = calls

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gpuroam_worker_module_calls",
            "Calls of each accelerated module, by path: a built graph (compiled) or the eager module",
            labels=["module", "path"],
        )
        for module, paths in self._calls().items():
            for path, count in paths.items():
                family.add_metric([module, path], count)
        yield family
