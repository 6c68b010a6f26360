"""The data plane's side of the API: the feed the gateway follows, and the gateway's traffic for the dashboard."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter

from gpuroam.controller.api.context import Context, GatewayAddress
from gpuroam.controller.store import Store
from gpuroam.gateway_feed import FeedBackend, FeedService, GatewayFeed
from gpuroam.records import Replica, ReplicaState

router = APIRouter()

TRAFFIC_TIMEOUT_S = 1.0  # for the gateway's /gpuroam/health


@router.get("/api/v1/gateway")
def gateway_feed(context: Context) -> GatewayFeed:
    """What the gateway serves: per service its port and ready replicas."""
    ready: dict[str, list[Replica]] = {}
    for replica in context.store.list_replicas(states=[ReplicaState.READY]):  # one read for every service
        if replica.url:
            ready.setdefault(replica.service, []).append(replica)
    services = []
    for record in context.store.list_services():
        if record.gateway_port is None:
            continue
        backends = [
            FeedBackend(
                replica=r.id,
                url=r.url or "",
                region=r.region,
                gpu=r.gpu,
                speed=context.catalog.speed_or_default(r.gpu),
            )
            for r in ready.get(record.name, [])
        ]
        services.append(FeedService(name=record.name, port=record.gateway_port, backends=backends))
    return GatewayFeed(services=services)


@router.get("/api/v1/traffic")
def traffic(context: Context) -> dict[str, Any]:
    """The gateway's live traffic (requests/s and p50 per service and region) and backend health, as it reports
    them on its /gpuroam/health (its own schema, passed through)."""
    return gateway_traffic(context.store, context.gateway)


def gateway_traffic(store: Store, gateway: GatewayAddress | None) -> dict[str, Any]:
    """Ask the gateway for its health report on a service's port; every port gives the same report."""
    if gateway is None:
        return {"available": False, "reason": "this control plane runs no gateway"}
    ports = [s.gateway_port for s in store.list_services() if s.gateway_port is not None]
    if not ports:
        return {"available": False, "reason": "no service has a gateway port yet"}
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(gateway.host, gateway.host)
    host = f"[{host}]" if ":" in host else host
    problems = []
    with httpx.Client(timeout=TRAFFIC_TIMEOUT_S, trust_env=False) as http:  # loopback: never via a proxy
        for port in ports[:2]:  # two tries at most: a gateway that is down costs two timeouts, not one per service
            url = f"http://{host}:{port}/gpuroam/health"
            try:
                response = http.get(url)
                response.raise_for_status()
                report = response.json()
            except (httpx.HTTPError, ValueError) as error:
                problems.append(f"{url}: {error or type(error).__name__}")
                continue
            if not isinstance(report, dict):
                problems.append(f"{url}: not a JSON object")
                continue
            return {"available": True, "source": url, **report}
    return {"available": False, "reason": "the gateway does not answer: " + "; ".join(problems)}
