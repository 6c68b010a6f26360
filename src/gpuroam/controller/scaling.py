"""The autoscaler's pass over one service: its load as the data plane saw it, the decision, the state
kept in the store, and the event that says what changed and why.

`gpuroam.autoscale.decide` decides; this reads and writes. Without signals (no local gateway, or it
did not answer) nothing is decided: unknown load is not zero load, and a service must not be scaled
in or put to sleep because its gateway was briefly unreachable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from gpuroam.autoscale import Load, Policy, Scale, decide, initial, mean_speed
from gpuroam.catalog import Catalog
from gpuroam.controller.signals import ServiceSignals
from gpuroam.controller.store import Store
from gpuroam.records import EventKind, Replica, ReplicaState
from gpuroam.spec import ServiceSpec


@dataclass(frozen=True)
class Scaled:
    """The state after this pass, and the event to record if what the service wants changed."""

    scale: Scale
    event: EventKind | None = None


def scale_service(
    store: Store,
    catalog: Catalog,
    spec: ServiceSpec,
    replicas: Sequence[Replica],
    seen: ServiceSignals | None,
    now: float,
) -> Scaled:
    policy = Policy.from_spec(spec)
    before = store.get_scale(spec.name)
    state = before or initial(policy, now)
    if seen is None and policy.enabled:
        after = state  # the load is unknown: keep what was decided
    else:
        after = decide(policy, _load(catalog, spec, replicas, seen), state, now)
    if after != before:
        store.put_scale(spec.name, after)
    if after.desired == state.desired:  # a first pass compares with where a new service starts
        return Scaled(after)
    return Scaled(after, _kind(state.desired, after.desired))


def demand_shares(seen: ServiceSignals | None, known: Collection[str]) -> Mapping[str, float]:
    """Where the service's requests come from, as shares of the total, over the `known` (catalog) regions:
    placement ranks regions by distance to them. Client regions are what clients say (X-Client-Region);
    names the catalog does not know are left out."""
    if seen is None:
        return {}
    demand = {region: rps for region, rps in seen.demand.items() if region in known and rps > 0}
    total = sum(demand.values())
    return {region: rps / total for region, rps in demand.items()} if total > 0 else {}


def _load(catalog: Catalog, spec: ServiceSpec, replicas: Sequence[Replica], seen: ServiceSignals | None) -> Load:
    ready = [catalog.speed_or_default(r.gpu) for r in replicas if r.state is ReplicaState.READY]
    speed = mean_speed(ready, catalog.speed_or_default(spec.resources.gpus[0]))
    if seen is None:
        return Load(replica_speed=speed)
    return Load(seen.in_flight, seen.held, speed, seen.last_request_at, ready=len(ready))


def _kind(before: int, after: int) -> EventKind:
    if before == 0:
        return EventKind.WOKE
    if after == 0:
        return EventKind.SLEPT
    return EventKind.SCALED_UP if after > before else EventKind.SCALED_DOWN
