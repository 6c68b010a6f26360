"""The control-plane HTTP API under /api/v1, behind a bearer token.

It only reads and writes desired state (and chaos, for the local provider); the reconciler
does the work. Tokens are compared in constant time.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gpuroam import __version__
from gpuroam.catalog import Catalog
from gpuroam.controller.store import Store
from gpuroam.providers.base import Provider
from gpuroam.records import Event, EventKind, Replica, ReplicaState, ServiceRecord
from gpuroam.spec import SpecError, parse_spec, spec_to_dict


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
        record = store.get_service(name)
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
        if store.get_service(name) is None:
            raise HTTPException(404, f"no service {name!r}")
        store.mark_deleted(name, time.time())
        return {"name": name, "deleted": True}

    @app.post("/api/v1/services/{name}/expand", dependencies=guarded)
    def expand(name: str, body: ExpandRequest) -> dict[str, Any]:
        record = store.get_service(name)
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
        out = []
        for record in store.list_services():
            if record.gateway_port is None:
                continue
            ready = [r for r in store.list_replicas(service=record.name) if r.state is ReplicaState.READY and r.url]
            backends = [
                {"replica": r.id, "url": r.url, "region": r.region, "gpu": r.gpu, "speed": _speed(catalog, r.gpu)}
                for r in ready
            ]
            out.append({"name": record.name, "port": record.gateway_port, "backends": backends})
        return {"services": out}

    @app.get("/api/v1/replicas", dependencies=guarded)
    def replicas(service: str | None = None) -> list[dict[str, Any]]:
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
    def events(after: int = 0, service: str | None = None, limit: int = 500) -> list[dict[str, Any]]:
        return [event_json(e) for e in store.list_events(after_id=after, service=service, limit=min(limit, 5000))]

    @app.post("/api/v1/chaos/fail", dependencies=guarded)
    def fail(body: ChaosRequest) -> dict[str, Any]:
        return _chaos(store, provider, "fail", body)

    @app.post("/api/v1/chaos/recover", dependencies=guarded)
    def recover(body: ChaosRequest) -> dict[str, Any]:
        return _chaos(store, provider, "recover", body)

    return app


def _speed(catalog: Catalog, gpu: str) -> float:
    return catalog.speed(gpu) if gpu in catalog.gpus else 1.0


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
