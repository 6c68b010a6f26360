"""Live traffic per region over the last few seconds: requests per second and median latency.

Prometheus histograms answer "since the start"; the dashboard asks "right now". One bucket per
second per (service, region), kept for `window_s` seconds; latencies are sampled per bucket so
memory stays bounded at any request rate.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

SAMPLES_PER_BUCKET = 256


@dataclass
class _Bucket:
    second: int
    count: int = 0
    latencies: list[float] = field(default_factory=list)


class Traffic:
    def __init__(self, window_s: int = 10) -> None:
        self.window_s = window_s
        self._served: dict[tuple[str, str], deque[_Bucket]] = {}
        self._failed: dict[str, deque[_Bucket]] = {}

    def served(self, service: str, region: str, seconds: float, now: float) -> None:
        bucket = self._bucket(self._served, (service, region), now)
        bucket.count += 1
        if len(bucket.latencies) < SAMPLES_PER_BUCKET:
            bucket.latencies.append(seconds)

    def failed(self, service: str, now: float) -> None:
        """A request the gateway answered with its own error (no replica could serve it)."""
        self._bucket(self._failed, service, now).count += 1

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        """{service: {"regions": {region: {"rps", "p50_ms"}}, "failed_per_s"}} over the last full seconds."""
        out: dict[str, dict[str, Any]] = {}
        for (service, region), buckets in self._served.items():
            recent = self._recent(buckets, now)
            if recent:
                latencies = [x for b in recent for x in b.latencies]
                entry = out.setdefault(service, {"regions": {}, "failed_per_s": 0.0})
                entry["regions"][region] = {
                    "rps": round(sum(b.count for b in recent) / self.window_s, 2),
                    "p50_ms": round(statistics.median(latencies) * 1000, 2),
                }
        for service, buckets in self._failed.items():
            recent = self._recent(buckets, now)
            if recent:
                entry = out.setdefault(service, {"regions": {}, "failed_per_s": 0.0})
                entry["failed_per_s"] = round(sum(b.count for b in recent) / self.window_s, 2)
        return out

    def _bucket(self, table: dict[Any, deque[_Bucket]], key: Any, now: float) -> _Bucket:
        buckets = table.get(key)
        if buckets is None:
            buckets = table[key] = deque(maxlen=self.window_s + 1)
        second = int(now)
        if not buckets or buckets[-1].second != second:
            buckets.append(_Bucket(second))
        return buckets[-1]

    def _recent(self, buckets: deque[_Bucket], now: float) -> list[_Bucket]:
        current = int(now)
        return [b for b in buckets if current - self.window_s <= b.second < current]
