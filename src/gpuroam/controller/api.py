"""The control-plane HTTP API under /api/v1, behind a bearer token, and the dashboard at `/`.

It only reads and writes desired state (and chaos, for the local provider); the reconciler
does the work. Tokens are compared in constant time. The dashboard page and its assets are
served without a token; everything it shows comes from the guarded API.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from gpuroam import __version__
from gpuroam.api_errors import install_validation_handler
from gpuroam.catalog import Catalog
from gpuroam.controller.store import Store
from gpuroam.providers.base import Provider
from gpuroam.records import Event, EventKind, Replica, ReplicaState, ServiceRecord
from gpuroam.spec import SpecError, parse_spec, spec_to_dict
from gpuroam.ui import mount_dashboard

# The events stream: how often it reads the store, how long it may stay quiet before a keep-alive
# comment, and how long one response lasts. Clients reconnect at once with Last-Event-ID, so
# nothing is lost; the bound means a stopping server never waits on an open dashboard (uvicorn
# waits for responses in flight before it exits).
EVENT_POLL_S = 0.5
EVENT_KEEPALIVE_S = 2.0
EVENT_STREAM_MAX_S = 5.0
EVENT_BATCH = 500
TRAFFIC_TIMEOUT_S = 1.0  # for the gateway's /gpuroam/health
MAX_EVENT_ID = 2**63 - 1  # the events.id column is a 64-bit integer: larger ids overflowed the driver (a 500)


class ExpandRequest(BaseModel):
    region: str


class ChaosRequest(BaseModel):
    region: str | None = None
    gpu: str | None = None


def replica_json(replica: Replica, now: float) -> dict[str, Any]:
    return {
        "id": replica.id,
        "region": replica.region,
        "gpu": replica.gpu,
        "state": replica.state.value,
        "url": replica.url,
        "reason": replica.reason,
        "age_s": round(now - replica.created_at, 1),
        "ready_at": replica.ready_at,
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "ts": event.ts,
        "kind": event.kind.value,
        "message": event.message,
        "service": event.service,
        "region": event.region,
        "gpu": event.gpu,
        "replica": event.replica,
    }


@dataclass(frozen=True)
class GatewayAddress:
    """Where the local gateway listens: each service gets its own port, from `base_port` up."""

    host: str
    base_port: int

    def endpoint(self, port: int) -> str:
        return f"http://{self.host}:{port}"


def create_api(
    store: Store, provider: Provider, catalog: Catalog, token: str, gateway: GatewayAddress | None = None
) -> FastAPI:
    """With a gateway, a service's endpoint is its gateway port; else the provider's, or a ready replica's URL."""
    app = FastAPI(title="gpuroam control plane", version=__version__)
    install_validation_handler(app)

    def authorised(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                401,
                "missing or wrong bearer token; use the token `gpuroam serve` wrote to its state dir",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(authorised)]

    def service_json(record: ServiceRecord, now: float) -> dict[str, Any]:
        replicas = [
            r
            for r in store.list_replicas(service=record.name)
            if r.state not in (ReplicaState.TERMINATED,) and (r.state.live or now - r.updated_at < 60)
        ]
        ready = [r for r in replicas if r.state is ReplicaState.READY]
        if gateway is not None and record.gateway_port is not None:
            endpoint = gateway.endpoint(record.gateway_port)
        else:
            endpoint = provider.endpoint(record.name) or (ready[0].url if ready else None)
        return {
            "name": record.name,
            "endpoint": endpoint,
            "deleted": record.deleted,
            "pinned_regions": list(record.pinned_regions),
            "generation": record.generation,
            "replicas": [replica_json(r, now) for r in replicas],
            "spec": record.spec,
        }

    @app.get("/api/v1/status", dependencies=guarded)
    def status() -> dict[str, Any]:
        now = time.time()
        return {"services": [service_json(s, now) for s in store.list_services(include_deleted=True)]}

    @app.get("/api/v1/services", dependencies=guarded)
    def services() -> list[dict[str, Any]]:
        return status()["services"]

    @app.get("/api/v1/services/{name}", dependencies=guarded)
    def service(name: str) -> dict[str, Any]:
        record = store.get_service(name) if _storable(name) else None
        if record is None:
            raise HTTPException(404, f"no service {name!r}; `gpuroam status` lists them")
        return service_json(record, time.time())

    @app.post("/api/v1/services", dependencies=guarded, status_code=201)
    def up(body: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = parse_spec(body, source="request body")
        except SpecError as error:
            return JSONResponse({"detail": str(error)}, status_code=422)  # type: ignore[return-value]
        now = time.time()
        record = store.put_service(spec.name, spec_to_dict(spec), now)
        if gateway is not None:
            store.assign_gateway_port(spec.name, gateway.base_port)
            record = store.get_service(spec.name) or record
        store.add_event(
            Event(
                ts=now,
                kind=EventKind.PLACED,
                message=f"service {spec.name} up (generation {record.generation})",
                service=spec.name,
            )
        )
        return service_json(record, now)

    @app.delete("/api/v1/services/{name}", dependencies=guarded)
    def down(name: str) -> dict[str, Any]:
        if not _storable(name) or store.get_service(name) is None:
            raise HTTPException(404, f"no service {name!r}")
        store.mark_deleted(name, time.time())
        return {"name": name, "deleted": True}

    @app.post("/api/v1/services/{name}/expand", dependencies=guarded)
    def expand(name: str, body: ExpandRequest) -> dict[str, Any]:
        record = store.get_service(name) if _storable(name) else None
        if record is None:
            raise HTTPException(404, f"no service {name!r}")
        spec = parse_spec(record.spec)
        offered = provider.regions()
        if body.region not in offered:
            raise HTTPException(
                422,
                f"region {body.region!r} is not one the {provider.name} provider has; "
                f"choose from: {', '.join(sorted(offered))}",
            )
        if not spec.region_allowed(body.region):
            raise HTTPException(422, f"region {body.region!r} is not allowed by the spec's regions.allow/deny")
        now = time.time()
        record = store.pin_region(name, body.region, now)
        store.add_event(
            Event(
                ts=now,
                kind=EventKind.EXPANDED,
                message=f"{name} expands into {body.region}",
                service=name,
                region=body.region,
            )
        )
        return service_json(record, now)

    @app.get("/api/v1/gateway", dependencies=guarded)
    def gateway_backends() -> dict[str, Any]:
        """What the gateway serves: per service its port and ready replicas (the data plane's feed)."""
        ready: dict[str, list[Replica]] = {}
        for replica in store.list_replicas(states=[ReplicaState.READY]):  # one read for every service
            if replica.url:
                ready.setdefault(replica.service, []).append(replica)
        out = []
        for record in store.list_services():
            if record.gateway_port is None:
                continue
            backends = [
                {
                    "replica": r.id,
                    "url": r.url,
                    "region": r.region,
                    "gpu": r.gpu,
                    "speed": catalog.speed_or_default(r.gpu),
                }
                for r in ready.get(record.name, [])
            ]
            out.append({"name": record.name, "port": record.gateway_port, "backends": backends})
        return {"services": out}

    @app.get("/api/v1/replicas", dependencies=guarded)
    def replicas(service: str | None = None) -> list[dict[str, Any]]:
        _check_filter(service)
        now = time.time()
        return [
            replica_json(r, now) for r in store.list_replicas(service=service) if r.state is not ReplicaState.TERMINATED
        ]

    @app.get("/api/v1/regions", dependencies=guarded)
    def regions() -> list[dict[str, Any]]:
        now = time.time()
        blocks = {(b.region, b.gpu): b for b in store.list_blocks() if b.active(now)}
        out = []
        for name, gpus in sorted(provider.regions().items()):
            region = catalog.regions.get(name)
            out.append(
                {
                    "name": name,
                    "lat": region.lat if region else None,
                    "lon": region.lon if region else None,
                    "city": region.city if region else None,
                    "gpus": [
                        {
                            "gpu": gpu,
                            "free": free,
                            "blocked_until": blocks[(name, gpu)].until if (name, gpu) in blocks else None,
                        }
                        for gpu, free in sorted(gpus.items())
                    ],
                }
            )
        return out

    @app.get("/api/v1/events", dependencies=guarded)
    def events(
        after: int = Query(0, ge=0, le=MAX_EVENT_ID), service: str | None = None, limit: int = Query(500, ge=0)
    ) -> list[dict[str, Any]]:
        _check_filter(service)
        return [event_json(e) for e in store.list_events(after_id=after, service=service, limit=min(limit, 5000))]

    @app.post("/api/v1/chaos/fail", dependencies=guarded)
    def fail(body: ChaosRequest) -> dict[str, Any]:
        return _chaos(store, provider, "fail", body)

    @app.post("/api/v1/chaos/recover", dependencies=guarded)
    def recover(body: ChaosRequest) -> dict[str, Any]:
        return _chaos(store, provider, "recover", body)

    @app.get("/api/v1/traffic", dependencies=guarded)
    def traffic() -> dict[str, Any]:
        """The gateway's live traffic (requests/s and p50 per service and region) and backend health."""
        return _gateway_traffic(store, gateway)

    @app.get("/api/v1/events/stream", dependencies=guarded)
    def events_stream(
        request: Request, after: int = Query(0, ge=0, le=MAX_EVENT_ID), service: str | None = None
    ) -> StreamingResponse:
        """Server-sent events: every event after `after` (or the Last-Event-ID a reconnect sends), then new ones."""
        _check_filter(service)
        start = _event_id(request.headers.get("last-event-id", ""), after)
        return StreamingResponse(
            _event_stream(store, request, start, service),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    mount_dashboard(app)
    return app


def _storable(text: str) -> bool:
    """Whether a name can be looked up at all: PostgreSQL text holds no NUL (the driver raises, a 500)."""
    return "\x00" not in text


def _check_filter(service: str | None) -> None:
    if service is not None and not _storable(service):
        raise HTTPException(422, "service must be a service name; it has a NUL character")


def _event_id(resume: str, default: int) -> int:
    """A reconnect's Last-Event-ID, if it is one we could have sent; else `default`. An id past the column's
    range broke the stream after its head went out, and str.isdigit() also accepts '²', which int() refuses."""
    resume = resume.strip()
    if resume.isascii() and resume.isdigit() and len(resume) <= 19 and int(resume) <= MAX_EVENT_ID:
        return int(resume)
    return default


async def _event_stream(store: Store, request: Request, after: int, service: str | None) -> AsyncIterator[str]:
    """Poll the store for events after the last one sent; each goes out with its id, its JSON as data."""
    last, started = after, time.monotonic()
    quiet_since = started
    yield "retry: 1000\n\n"  # for EventSource clients: reconnect after a second
    while True:
        events = await run_in_threadpool(store.list_events, after_id=last, service=service, limit=EVENT_BATCH)
        for event in events:
            last = event.id or last
            yield f"id: {event.id}\ndata: {json.dumps(event_json(event))}\n\n"
        now = time.monotonic()
        if events:
            quiet_since = now
        elif now - quiet_since >= EVENT_KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = now
        if len(events) == EVENT_BATCH:
            continue  # catching up: read the next batch now
        if now - started >= EVENT_STREAM_MAX_S or await request.is_disconnected():
            return
        await asyncio.sleep(EVENT_POLL_S)


def _gateway_traffic(store: Store, gateway: GatewayAddress | None) -> dict[str, Any]:
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
            return {"available": True, "source": url, **report}
    return {"available": False, "reason": "the gateway does not answer: " + "; ".join(problems)}


def _chaos(store: Store, provider: Provider, action: str, body: ChaosRequest) -> dict[str, Any]:
    """Chaos acts on the provider's capacity; only providers that simulate capacity offer it."""
    if not hasattr(provider, "fail_region"):
        raise HTTPException(
            400, f"the {provider.name} provider has no chaos controls (they exist for the local provider)"
        )
    try:
        if action == "recover":
            restored = provider.recover(region=body.region, gpu=body.gpu)  # type: ignore[attr-defined]
            what = f"capacity back: {', '.join(f'{g} in {r}' for r, g in restored) or 'nothing was taken away'}"
            result: dict[str, Any] = {"restored": [list(p) for p in restored]}
        elif body.gpu:
            killed = provider.fail_gpu(body.gpu, region=body.region)  # type: ignore[attr-defined]
            what = f"{body.gpu} lost{' in ' + body.region if body.region else ' everywhere'}; killed {len(killed)} replica(s)"
            result = {"killed": killed}
        elif body.region:
            killed = provider.fail_region(body.region)  # type: ignore[attr-defined]
            what = f"region {body.region} lost; killed {len(killed)} replica(s)"
            result = {"killed": killed}
        else:
            raise HTTPException(422, "say what fails: a region, a gpu, or both")
    except ValueError as error:
        raise HTTPException(422, str(error)) from error
    store.add_event(Event(ts=time.time(), kind=EventKind.CHAOS, message=what, region=body.region, gpu=body.gpu))
    return {"message": what, **result}
