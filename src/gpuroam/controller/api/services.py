"""Services: `up` (desired state in), `down`, `expand`, `shrink`, and what `status` shows of them and their replicas."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from gpuroam.autoscale import Policy, Scale, initial
from gpuroam.catalog import Catalog
from gpuroam.controller.api.context import ApiContext, Context, check_filter, storable
from gpuroam.controller.api.models import DeletedOut, ReplicaOut, ServiceOut, StatusOut
from gpuroam.controller.key_sources import KeySourceError
from gpuroam.controller.signals import serves_tls
from gpuroam.controller.store import Store
from gpuroam.records import Capacity, Event, EventKind, Replica, ReplicaState, ServiceRecord
from gpuroam.spec import ServiceSpec, SpecError, parse_spec, spec_to_dict
from gpuroam.tls import TlsError, server_context

router = APIRouter()

SHOWN_AFTER_END_S = 60.0  # a failed or drained replica stays in status this long, so people see what happened


class RegionRequest(BaseModel):
    region: str = Field(min_length=1, max_length=63)  # a cloud region name; longer is no region (and not echoed)


def replica_view(replica: Replica, now: float, catalog: Catalog, gpus_per_replica: int) -> ReplicaOut:
    return ReplicaOut(
        id=replica.id,
        region=replica.region,
        gpu=replica.gpu,
        state=replica.state,
        url=replica.url,
        reason=replica.reason,
        age_s=round(now - replica.created_at, 1),
        ready_at=replica.ready_at,
        capacity=replica.capacity,
        price_per_hour=price_per_hour(catalog, replica, gpus_per_replica),
    )


def service_view(context: ApiContext, record: ServiceRecord, now: float) -> ServiceOut:
    """With a gateway, a service's endpoint is its gateway port; else the provider's, or a ready replica's URL."""
    replicas = [
        r
        for r in context.store.list_replicas(service=record.name)
        if r.state is not ReplicaState.TERMINATED and (r.state.live or now - r.updated_at < SHOWN_AFTER_END_S)
    ]
    ready = [r for r in replicas if r.state is ReplicaState.READY]
    if context.gateway is not None and record.gateway_port is not None:
        endpoint: str | None = context.gateway.endpoint(record.gateway_port, serves_tls(record.spec))
    else:
        endpoint = context.provider.endpoint(record.name) or (ready[0].url if ready else None)
    scale = scale_of(context.store, record, now)
    return ServiceOut(
        name=record.name,
        endpoint=endpoint,
        desired=scale.desired,
        reason=scale.reason,
        desired_since=scale.changed_at,
        cost_per_hour=round(cost_per_hour(context.catalog, gpu_count(record), replicas), 4),
        on_demand_cost_per_hour=round(
            cost_per_hour(context.catalog, gpu_count(record), replicas, Capacity.ON_DEMAND), 4
        ),
        deleted=record.deleted,
        pinned_regions=list(record.pinned_regions),
        generation=record.generation,
        replicas=[replica_view(r, now, context.catalog, gpu_count(record)) for r in replicas],
        spec=record.spec,
    )


def scale_of(store: Store, record: ServiceRecord, now: float) -> Scale:
    """What the autoscaler wants for the service: its stored state, else where a first pass starts.
    A stored spec this version cannot read (written by hand, or by another version) is said, not a 500."""
    stored = store.get_scale(record.name)
    if stored is not None:
        return stored
    try:
        return initial(Policy.from_spec(parse_spec(record.spec)), now)
    except SpecError as error:
        return Scale(desired=0, reason=f"the stored spec is not valid: {error}", changed_at=now)


def gpu_count(record: ServiceRecord) -> int:
    """GPUs per replica as stored (1 when the stored spec does not say)."""
    count = (record.spec.get("resources") or {}).get("gpu_count", 1)
    return count if isinstance(count, int) and count > 0 else 1


def price_per_hour(
    catalog: Catalog, replica: Replica, gpus_per_replica: int, capacity: Capacity | None = None
) -> float | None:
    """USD per hour of the replica's GPUs at the catalog's price in its region for its capacity (Spot or
    on-demand; or for `capacity`); None where the catalog has no such price (a local site it does not know)."""
    lookup = catalog.spot_price if (capacity or replica.capacity) is Capacity.SPOT else catalog.price
    try:
        return round(lookup(replica.region, replica.gpu) * gpus_per_replica, 4)
    except KeyError:
        return None


def cost_per_hour(
    catalog: Catalog, gpus_per_replica: int, replicas: Sequence[Replica], capacity: Capacity | None = None
) -> float:
    """USD per hour of the live replicas' GPUs, each at its price_per_hour (0 for one without a price);
    with `capacity` ON_DEMAND, what the same replicas would cost all on demand."""
    return sum(price_per_hour(catalog, r, gpus_per_replica, capacity) or 0.0 for r in replicas if r.state.live)


def check_endpoint_files(spec: ServiceSpec, context: ApiContext) -> None:
    """The keys and certificate the spec names can be read now (422 if not): a typo shows at `up`, not as a
    service that refuses everyone."""
    tls = spec.endpoint.tls
    try:
        if spec.endpoint.api_keys is not None:
            context.key_sources.check(spec.endpoint, context.provider)
        if tls is not None and tls.certificate is not None and tls.key is not None:
            server_context(tls.certificate, tls.key)
    except (KeySourceError, TlsError) as error:
        raise HTTPException(422, f"endpoint of {spec.name}: {error}") from None


def existing_service(context: ApiContext, name: str) -> ServiceRecord:
    record = context.store.get_service(name) if storable(name) else None
    if record is None:
        raise HTTPException(404, f"no service {name!r}; `gpuroam status` lists them")
    return record


@router.get("/api/v1/status")
def status(context: Context) -> StatusOut:
    now = time.time()
    return StatusOut(
        services=[service_view(context, s, now) for s in context.store.list_services(include_deleted=True)]
    )


@router.get("/api/v1/services")
def services(context: Context) -> list[ServiceOut]:
    return status(context).services


@router.get("/api/v1/services/{name}")
def service(name: str, context: Context) -> ServiceOut:
    return service_view(context, existing_service(context, name), time.time())


@router.post("/api/v1/services", status_code=201, responses={422: {"description": "the spec is not valid"}})
def up(body: dict[str, Any], context: Context) -> ServiceOut:
    """Desired state in: the reconciler places the service from the next pass on."""
    try:
        spec = parse_spec(body, source="request body")
    except SpecError as error:
        raise HTTPException(422, str(error)) from error
    check_endpoint_files(spec, context)
    store, now = context.store, time.time()
    record = store.put_service(spec.name, spec_to_dict(spec), now)
    if context.gateway is not None:
        store.assign_gateway_port(spec.name, context.gateway.base_port)
        record = store.get_service(spec.name) or record
    message = f"service {spec.name} up (generation {record.generation})"
    store.add_event(Event(ts=now, kind=EventKind.UP, message=message, service=spec.name))
    return service_view(context, record, now)


@router.delete("/api/v1/services/{name}")
def down(name: str, context: Context) -> DeletedOut:
    existing_service(context, name)
    context.store.mark_deleted(name, time.time())
    return DeletedOut(name=name, deleted=True)


@router.post("/api/v1/services/{name}/expand")
def expand(name: str, body: RegionRequest, context: Context) -> ServiceOut:
    """Pin one more region: placement keeps a replica there, behind the same endpoint."""
    spec = parse_spec(existing_service(context, name).spec)
    offered = context.provider.regions()
    if body.region not in offered:
        raise HTTPException(
            422,
            f"region {body.region!r} is not one the {context.provider.name} provider has; "
            f"choose from: {', '.join(sorted(offered))}",
        )
    if not spec.region_allowed(body.region):
        raise HTTPException(422, f"region {body.region!r} is not allowed by the spec's regions.allow/deny")
    now = time.time()
    record = context.store.pin_region(name, body.region, now)
    message = f"{name} expands into {body.region}"
    context.store.add_event(Event(ts=now, kind=EventKind.EXPANDED, message=message, service=name, region=body.region))
    return service_view(context, record, now)


@router.post("/api/v1/services/{name}/shrink")
def shrink(name: str, body: RegionRequest, context: Context) -> ServiceOut:
    """Undo `expand`: the region is no longer kept and the footprint is one region smaller, so placement
    drains the worst region it no longer needs (this one, unless it ranks better), make before break."""
    pinned = existing_service(context, name).pinned_regions
    if body.region not in pinned:
        raise HTTPException(
            422,
            f"region {body.region!r} was not added by `gpuroam expand`, so there is nothing to shrink; "
            f"regions added by expand: {', '.join(pinned) or 'none'}",
        )
    now = time.time()
    record = context.store.unpin_region(name, body.region, now)
    message = f"{name} shrinks: {body.region} is no longer kept"
    context.store.add_event(Event(ts=now, kind=EventKind.SHRUNK, message=message, service=name, region=body.region))
    return service_view(context, record, now)


@router.get("/api/v1/replicas")
def replicas(context: Context, service: str | None = None) -> list[ReplicaOut]:
    check_filter(service)
    now = time.time()
    live = context.store.list_replicas(service=service)
    gpus = {record.name: gpu_count(record) for record in context.store.list_services(include_deleted=True)}
    return [
        replica_view(r, now, context.catalog, gpus.get(r.service, 1))
        for r in live
        if r.state is not ReplicaState.TERMINATED
    ]
