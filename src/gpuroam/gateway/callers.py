"""What the gateway keeps per caller: its A1111 options, its generations in flight, and its rates.

A1111's POST /sdapi/v1/options changes the server for everyone; through the endpoint it changes only
the caller's own generations. The replica checks the values against its model (a 422 for one it
cannot take) and answers those it honours; they are kept here and sent with each of the caller's
generations as `override_settings` (what the request itself overrides wins), so they follow the
caller to any replica. GET /sdapi/v1/options shows the caller its own values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from gpuroam.gateway.bounded import Bounded

OPTIONS_PATH = b"/sdapi/v1/options"


class CallerOptions:
    """Each caller's checked options; the callers seen longest ago are forgotten past `limit`."""

    def __init__(self, limit: int = 100_000) -> None:
        self._options: Bounded[dict[str, Any]] = Bounded(limit)

    def get(self, caller: str) -> dict[str, Any]:
        return self._options.get(caller, {})

    def checked(self, caller: str, answer: bytes) -> None:
        """Keep what the replica answered to the caller's POST options (the values it checked)."""
        try:
            values = json.loads(answer)
        except ValueError:
            return
        if isinstance(values, dict) and values:
            self._options.put(caller, {**self.get(caller), **values})

    def with_overrides(self, caller: str, body: bytes) -> bytes:
        """A generation body with the caller's options as `override_settings` under the request's own."""
        options = self.get(caller)
        if not options:
            return body
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return body  # the replica answers the malformed body with its 422
        if not isinstance(request, dict):
            return body
        own = request.get("override_settings")
        request["override_settings"] = {**options, **own} if isinstance(own, dict) else options
        return json.dumps(request).encode()

    def shown(self, caller: str, answer: bytes) -> bytes:
        """The replica's GET options answer with the caller's own values over it."""
        options = self.get(caller)
        if not options:
            return answer
        try:
            values = json.loads(answer)
        except ValueError:
            return answer
        return json.dumps({**values, **options}).encode() if isinstance(values, dict) else answer


class InFlight:
    """Generation requests in flight per caller."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def enter(self, caller: str, limit: int) -> bool:
        """Count one more, unless the caller has `limit` in flight already (0: no limit)."""
        count = self._counts.get(caller, 0)
        if limit and count >= limit:
            return False
        self._counts[caller] = count + 1
        return True

    def leave(self, caller: str) -> None:
        count = self._counts.get(caller, 0) - 1
        if count > 0:
            self._counts[caller] = count
        else:
            self._counts.pop(caller, None)


@dataclass(frozen=True)
class CallerLimits:
    """What each caller of a service may do (the spec's `endpoint:`); None: no limit."""

    requests_per_minute: int | None = None  # generation requests
    images_per_day: int | None = None  # per UTC day
    max_in_flight: int | None = None  # None: the gateway's --max-in-flight-per-caller


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after_s: int


class Rates:
    """Each caller's generation requests per minute (a token bucket) and images per UTC day; the callers
    seen longest ago are forgotten past `limit` (a forgotten caller starts afresh)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._buckets: Bounded[tuple[float, float]] = Bounded(limit)  # caller -> (tokens, at)
        self._images: Bounded[tuple[int, int]] = Bounded(limit)  # caller -> (day, images)

    def admit(self, caller: str, images: int, limits: CallerLimits, now: float) -> Refusal | None:
        """Count a generation of `images` images at `now` (Unix seconds), or say why it may not go."""
        tokens = None
        if limits.requests_per_minute is not None:
            most = float(limits.requests_per_minute)
            rate = most / 60.0
            tokens, at = self._buckets.get(caller, (most, now))
            tokens = min(most, tokens + (now - at) * rate)
            if tokens < 1.0:
                reason = f"over {limits.requests_per_minute} generation requests a minute for this caller"
                return Refusal(reason, math.ceil((1.0 - tokens) / rate))
        if limits.images_per_day is not None:
            day = int(now // 86_400)
            last_day, made = self._images.get(caller, (day, 0))
            made = made if last_day == day else 0
            if made + images > limits.images_per_day:
                left = limits.images_per_day - made
                reason = (
                    f"{images} more images would pass this caller's {limits.images_per_day} a day ({left} left today)"
                )
                return Refusal(reason, math.ceil((day + 1) * 86_400 - now))
            self._images.put(caller, (day, made + images))
        if tokens is not None:
            self._buckets.put(caller, (tokens - 1.0, now))
        return None


def requested_images(body: bytes) -> int:
    """batch_size x n_iter of a generation body; 1 when it does not say or is not JSON (the replica answers that)."""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return 1
    if not isinstance(request, dict):
        return 1
    size, rounds = request.get("batch_size", 1), request.get("n_iter", 1)
    valid = all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 10_000 for n in (size, rounds))
    return size * rounds if valid else 1
