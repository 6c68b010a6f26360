"""What the data plane saw, read by the control plane: the local gateway's report on its own port.

The gateway publishes (on /gpuroam/health) per service the requests in flight and held, the last
request's time, and requests/s by client region; the reconcile loop turns them into the
autoscaler's input, and the dashboard shows the traffic. The gateway never imports the controller:
it publishes, this reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from gpuroam.controller.store import Store

REPORT_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class GatewayAddress:
    """Where the local gateway listens: each service gets its own port, from `base_port` up."""

    host: str
    base_port: int
    token: str | None = None  # the control-plane token: the gateway gives its report only with it

    def endpoint(self, port: int, tls: bool = False) -> str:
        return f"{'https' if tls else 'http'}://{self.host}:{port}"

    def local_host(self) -> str:
        """The host to reach it from this machine (a wildcard bind is reached on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class ServiceSignals:
    """One service as the gateway saw it at one instant."""

    in_flight: float = 0.0
    held: int = 0
    last_request_at: float | None = None
    demand: Mapping[str, float] = field(default_factory=dict)  # client region -> requests/s
    at_replicas: Mapping[str, int] = field(default_factory=dict)  # replica -> requests in flight at it

    def holds(self, replica: str) -> bool:
        """Whether requests are in flight at `replica` (one the gateway still routes to, or one it took
        out that has not answered everything yet)."""
        return self.at_replicas.get(replica, 0) > 0


Signals = Callable[[], Mapping[str, ServiceSignals] | None]  # None: the data plane did not answer


def read_report(store: Store, gateway: GatewayAddress) -> tuple[dict[str, Any] | None, str]:
    """The gateway's report, from a service's port (every port gives the same report); else None and why."""
    # Plain ports first: an HTTPS port's certificate names the public host, not this loopback address.
    ports = sorted((serves_tls(s.spec), s.gateway_port) for s in store.list_services() if s.gateway_port is not None)
    if not ports:
        return None, "no service has a gateway port yet"
    problems = []
    headers = {"Authorization": f"Bearer {gateway.token}"} if gateway.token else {}
    # Loopback: no proxy, and the certificate (issued for the public name) is not checked; the gateway is ours.
    with httpx.Client(timeout=REPORT_TIMEOUT_S, trust_env=False, headers=headers, verify=False) as http:
        for tls, port in ports[:2]:  # two tries at most: a gateway that is down costs two timeouts, not one each
            url = f"{'https' if tls else 'http'}://{gateway.local_host()}:{port}/gpuroam/health"
            try:
                response = http.get(url)
                response.raise_for_status()
                report = response.json()
            except (httpx.HTTPError, ValueError) as error:
                problems.append(f"{url}: {error or type(error).__name__}")
                continue
            if isinstance(report, dict):
                return {"source": url, **report}, ""
            problems.append(f"{url}: not a JSON object")
    return None, "the gateway does not answer: " + "; ".join(problems)


def serves_tls(spec: Mapping[str, Any]) -> bool:
    """Whether a stored spec's endpoint is HTTPS at the gateway (certificate files given)."""
    return bool(((spec.get("endpoint") or {}).get("tls") or {}).get("certificate"))


def signals_from_report(report: Mapping[str, Any]) -> dict[str, ServiceSignals]:
    """Each service's signals; a service the report gives malformed is left out (unknown, not idle)."""
    found = {}
    for entry in report.get("services") or []:
        try:
            last = entry.get("last_request_at")
            demand = {str(region): float(rps) for region, rps in (entry.get("demand") or {}).items()}
            at_replicas = {str(b["replica"]): int(b["outstanding"]) for b in entry.get("backends") or []}
            at_replicas |= {str(replica): int(n) for replica, n in (entry.get("retiring") or {}).items()}
            found[str(entry["name"])] = ServiceSignals(
                in_flight=float(entry["in_flight"]),
                held=int(entry["held"]),
                last_request_at=None if last is None else float(last),
                demand=demand,
                at_replicas=at_replicas,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return found


def gateway_signals(store: Store, gateway: GatewayAddress) -> Signals:
    """Signals read from the local gateway, once per call."""

    def read() -> Mapping[str, ServiceSignals] | None:
        report, _ = read_report(store, gateway)
        return None if report is None else signals_from_report(report)

    return read
