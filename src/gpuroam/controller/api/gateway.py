"""The data plane's side of the API: the feed the gateway follows, and the gateway's traffic for the dashboard."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gpuroam.controller.api.context import Context
from gpuroam.controller.signals import GatewayAddress, read_report
from gpuroam.controller.store import Store
from gpuroam.gateway_feed import FeedBackend, FeedLimits, FeedService, FeedTls, GatewayFeed
from gpuroam.records import Replica, ReplicaState
from gpuroam.spec import EndpointSpec

router = APIRouter()


@router.get("/api/v1/gateway")
def gateway_feed(context: Context) -> GatewayFeed:
    """What the gateway serves: per service its port, ready replicas, API keys (hashes: the store's and its spec's
    source's), per-caller limits and TLS files."""
    ready: dict[str, list[Replica]] = {}
    for replica in context.store.list_replicas(states=[ReplicaState.READY]):  # one read for every service
        if replica.url:
            ready.setdefault(replica.service, []).append(replica)
    keys: dict[str, dict[str, str]] = {}
    for key in context.store.list_api_keys():
        keys.setdefault(key.service, {})[key.sha256] = key.name
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
        endpoint = EndpointSpec.model_validate(record.spec.get("endpoint") or {})
        sourced = context.key_sources.keys(endpoint, context.provider)
        tls = endpoint.tls
        services.append(
            FeedService(
                name=record.name,
                port=record.gateway_port,
                backends=backends,
                # A key from the spec's source is a caller of its own even where a made key has its name.
                api_keys={
                    **keys.get(record.name, {}),
                    **{h: f"spec:{n}" for h, n in (sourced.hashes if sourced else {}).items()},
                },
                key_required=sourced is not None,
                limits=FeedLimits.model_validate(record.spec.get("endpoint") or {}),  # what the stored spec says
                tls=FeedTls(certificate=tls.certificate, key=tls.key) if tls and tls.certificate and tls.key else None,
            )
        )
    return GatewayFeed(services=services)


@router.get("/api/v1/traffic")
def traffic(context: Context) -> dict[str, Any]:
    """The gateway's live traffic (requests/s and p50 per service and region) and backend health, as it reports
    them on its /gpuroam/health (its own schema, passed through)."""
    return gateway_traffic(context.store, context.gateway)


def gateway_traffic(store: Store, gateway: GatewayAddress | None) -> dict[str, Any]:
    """The gateway's health report, or why there is none."""
    if gateway is None:
        return {"available": False, "reason": "this control plane runs no gateway"}
    report, reason = read_report(store, gateway)
    return {"available": False, "reason": reason} if report is None else {"available": True, **report}
