"""What the gateway keeps per caller: its A1111 options, and how many of its generations are in flight.

A1111's POST /sdapi/v1/options changes the server for everyone; through the endpoint it changes only
the caller's own generations. The replica checks the values against its model (a 422 for one it
cannot take) and answers those it honours; they are kept here and sent with each of the caller's
generations as `override_settings` (what the request itself overrides wins), so they follow the
caller to any replica. GET /sdapi/v1/options shows the caller its own values.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

OPTIONS_PATH = b"/sdapi/v1/options"


class CallerOptions:
    """Each caller's checked options; the callers seen longest ago are forgotten past `limit`."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._options: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, caller: str) -> dict[str, Any]:
        return self._options.get(caller, {})

    def checked(self, caller: str, answer: bytes) -> None:
        """Keep what the replica answered to the caller's POST options (the values it checked)."""
        try:
            values = json.loads(answer)
        except ValueError:
            return
        if isinstance(values, dict) and values:
            self._options[caller] = {**self.get(caller), **values}
            self._options.move_to_end(caller)
            if len(self._options) > self.limit:
                self._options.popitem(last=False)

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
    """Generation requests in flight per caller, at most `limit` each (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def enter(self, caller: str) -> bool:
        count = self._counts.get(caller, 0)
        if self.limit and count >= self.limit:
            return False
        self._counts[caller] = count + 1
        return True

    def leave(self, caller: str) -> None:
        count = self._counts.get(caller, 0) - 1
        if count > 0:
            self._counts[caller] = count
        else:
            self._counts.pop(caller, None)
