"""What the control plane's API answers, as models: its OpenAPI documents them and tests read them.

The field names are the contract `gpuroam status --json` and the dashboard rely on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from gpuroam.records import Capacity, EventKind, ReplicaState


class ReplicaOut(BaseModel):
    id: str
    region: str
    gpu: str
    state: ReplicaState
    url: str | None
    reason: str
    age_s: float
    ready_at: float | None
    capacity: Capacity  # spot or on-demand
    price_per_hour: float | None  # USD per hour of its GPUs at the catalog's price for its capacity; None: none known


class ServiceOut(BaseModel):
    name: str
    endpoint: str | None
    desired: int  # the replica count the autoscaler wants (replicas.min without an autoscale section)
    reason: str  # why: the autoscaler's last decision, with its figures
    desired_since: float  # when `desired` last changed (Unix seconds)
    cost_per_hour: float  # USD per hour of the live replicas' GPUs (each at its price_per_hour; unknown ones 0)
    on_demand_cost_per_hour: float  # what the same live replicas would cost all on demand (Spot's saving beside it)
    deleted: bool
    pinned_regions: list[str]
    generation: int
    replicas: list[ReplicaOut]
    spec: dict[str, Any]


class StatusOut(BaseModel):
    services: list[ServiceOut]


class DeletedOut(BaseModel):
    name: str
    deleted: bool


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read straight from a records.Event

    id: int | None
    ts: float
    kind: EventKind
    message: str
    service: str | None
    region: str | None
    gpu: str | None
    replica: str | None


class RegionGpuOut(BaseModel):
    """One GPU type of a region: on demand (`free`, `blocked_until`) and as Spot (`spot`: offered
    there; `spot_free`, `spot_blocked_until`), free slots None where the provider cannot know."""

    gpu: str
    free: int | None
    blocked_until: float | None
    spot: bool = False
    spot_free: int | None = None
    spot_blocked_until: float | None = None


class RegionOut(BaseModel):
    name: str
    lat: float | None
    lon: float | None
    city: str | None
    gpus: list[RegionGpuOut]


class ChaosOut(BaseModel):
    """What a chaos call did: replicas killed (fail), or (region, GPU) pairs given back (recover)."""

    message: str
    killed: list[str] | None = None
    restored: list[tuple[str, str]] | None = None
