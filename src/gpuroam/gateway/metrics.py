"""Prometheus metrics of the gateway, on a registry of its own.

Label children are cached, so counting a request costs dictionary lookups, not label parsing:
the gateway counts every request it proxies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gpuroam.gateway.traffic import Traffic

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "gpuroam_gateway_requests",
            "Requests answered, by the region that served them",
            ["service", "region", "code"],
            registry=r,
        )
        self._latency = Histogram(
            "gpuroam_gateway_request_seconds",
            "Time from a request's last byte in to the response's last byte out, by serving region",
            ["service", "region"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._errors = Counter(
            "gpuroam_gateway_errors",
            "Requests the gateway could not serve, by reason",
            ["service", "reason"],
            registry=r,
        )
        self._retries = Counter(
            "gpuroam_gateway_retries", "Requests sent again to another replica", ["service", "reason"], registry=r
        )
        self._ejections = Counter(
            "gpuroam_gateway_ejections",
            "Replicas taken out of rotation after a failure",
            ["service", "region"],
            registry=r,
        )
        self._held = Gauge(
            "gpuroam_gateway_held_requests", "Requests waiting for a live replica", ["service"], registry=r
        )
        self._hold_seconds = Histogram(
            "gpuroam_gateway_hold_seconds",
            "Time requests waited for a live replica",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._cache: dict[tuple[Any, ...], Any] = {}
        self.traffic = Traffic()

    def watch_backends(self, snapshot: Callable[[], Iterable[tuple[str, str, bool]]]) -> None:
        """Count backends by usability at scrape time: (service, region, usable) per backend."""
        self.registry.register(_BackendCollector(snapshot))

    def served(self, service: str, region: str, code: int, seconds: float) -> None:
        key = ("served", service, region, code)
        children = self._cache.get(key)
        if children is None:
            children = (
                self._requests.labels(service, region, str(code)),
                self._latency.labels(service, region),
            )
            self._cache[key] = children
        children[0].inc()
        children[1].observe(seconds)
        self.traffic.served(service, region, seconds, time.monotonic())

    def error(self, service: str, reason: str) -> None:
        self._child(self._errors, service, reason).inc()
        self.traffic.failed(service, time.monotonic())

    def retry(self, service: str, reason: str) -> None:
        self._child(self._retries, service, reason).inc()

    def ejected(self, service: str, region: str) -> None:
        self._child(self._ejections, service, region).inc()

    def holding(self, service: str, delta: int) -> None:
        self._child(self._held, service).inc(delta)

    def held(self, service: str, seconds: float) -> None:
        self._child(self._hold_seconds, service).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._cache.get(key)
        if child is None:
            child = self._cache[key] = metric.labels(*labels)
        return child


class _BackendCollector(Collector):
    def __init__(self, snapshot: Callable[[], Iterable[tuple[str, str, bool]]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gpuroam_gateway_backends", "Registered backends, usable or not", labels=["service", "region", "usable"]
        )
        counts: dict[tuple[str, str, str], int] = {}
        for service, region, usable in self.snapshot():
            key = (service, region, "true" if usable else "false")
            counts[key] = counts.get(key, 0) + 1
        for labels, count in sorted(counts.items()):
            family.add_metric(list(labels), count)
        yield family
