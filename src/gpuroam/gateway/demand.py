"""What a service's clients ask of it right now, for the autoscaler: requests held for want of a live
replica, when the last request came, and where requests come from.

The gateway publishes these on /gpuroam/health; the control plane reads them and decides. One bucket
per second per client region over `window_s`, so memory stays bounded at any request rate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MAX_REGIONS = 40  # distinct client regions counted per second (the catalog has 30)
MAX_NAME = 64
OTHER = "other"


@dataclass
class _Second:
    second: int
    counts: dict[str, int] = field(default_factory=dict)


class ServiceDemand:
    def __init__(self, window_s: int = 60) -> None:
        self.window_s = window_s
        self.held = 0  # requests waiting now for a live replica
        self.last_request_at: float | None = None  # wall-clock time of the latest request
        self._seconds: deque[_Second] = deque(maxlen=window_s + 1)

    def arrived(self, client_region: str, now: float) -> None:
        """A request came in, from `client_region` (its X-Client-Region, else the gateway's region).

        The header is the client's to set: names are cut to MAX_NAME characters and a second counts at
        most MAX_REGIONS of them, the rest as "other", so no client can grow this without bound."""
        self.last_request_at = now
        second = int(now)
        if not self._seconds or self._seconds[-1].second != second:
            self._seconds.append(_Second(second))
        counts = self._seconds[-1].counts
        region = client_region[:MAX_NAME]
        if region not in counts and len(counts) >= MAX_REGIONS:
            region = OTHER
        counts[region] = counts.get(region, 0) + 1

    def by_region(self, now: float) -> dict[str, float]:
        """Requests per second from each client region over the last `window_s` full seconds."""
        current, totals = int(now), dict[str, int]()
        for bucket in self._seconds:
            if current - self.window_s <= bucket.second < current:
                for region, count in bucket.counts.items():
                    totals[region] = totals.get(region, 0) + count
        return {region: round(count / self.window_s, 3) for region, count in sorted(totals.items())}
