"""The control plane's records: plain immutable values that placement reads and the store keeps.

No I/O here. Times are UNIX seconds (float) so records compare and serialise simply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ReplicaState(StrEnum):
    """provisioning -> ready -> draining -> terminated; failed when it died or never came up."""

    PROVISIONING = "provisioning"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    TERMINATED = "terminated"

    @property
    def live(self) -> bool:
        """Counts towards the service: starting or serving."""
        return self in (ReplicaState.PROVISIONING, ReplicaState.READY)


class Capacity(StrEnum):
    """What a replica runs on: Spot (cheaper, and reclaimed at any time with about 30 s notice) or on-demand."""

    SPOT = "spot"
    ON_DEMAND = "on-demand"


@dataclass(frozen=True)
class Replica:
    """One copy of a service in one region on one GPU type.

    The row is written (state provisioning) before the provider is asked to launch it, so a
    controller that dies at any instant finds its intent on restart.
    """

    id: str
    service: str
    region: str
    gpu: str
    state: ReplicaState
    created_at: float
    updated_at: float
    ready_at: float | None = None
    url: str | None = None
    reason: str = ""
    handle: dict[str, Any] = field(default_factory=dict)  # what the provider needs to find it (Launched.details)
    unready_since: float | None = None  # ready, but failing its readiness probe since then
    capacity: Capacity = Capacity.ON_DEMAND  # chosen at launch, kept for the replica's life


@dataclass(frozen=True)
class Block:
    """A (region, GPU, capacity) slot that recently failed for lack of capacity (a stockout, a
    quota, a preemption); not tried until `until`. Spot and on-demand of one GPU in one region
    are blocked apart: a Spot shortage says nothing of on-demand.

    `failures` counts consecutive capacity failures, for exponential backoff.
    """

    region: str
    gpu: str
    until: float
    failures: int
    last_failure_at: float
    reason: str = ""
    capacity: Capacity = Capacity.ON_DEMAND

    @property
    def slot(self) -> tuple[str, str, Capacity]:
        return (self.region, self.gpu, self.capacity)

    def active(self, now: float) -> bool:
        return now < self.until


@dataclass(frozen=True)
class ServiceRecord:
    """Desired state of one service: its spec (as stored) and regions pinned by `expand`."""

    name: str
    spec: dict[str, Any]
    pinned_regions: tuple[str, ...]
    created_at: float
    updated_at: float
    generation: int = 1
    deleted: bool = False
    gateway_port: int | None = None  # where the local gateway serves it; None until assigned
    last_loss_at: float | None = None  # when it last lost a replica (launches soon after are failovers)


class EventKind(StrEnum):
    UP = "up"  # a service's spec was stored (a new service, or a new generation)
    PLACED = "placed"  # a replica is being launched
    READY = "ready"
    STOCKOUT = "stockout"
    BLOCKED = "blocked"
    FAILED = "failed"
    FAILOVER = "failover"
    DRAINED = "drained"
    RECOVERED = "recovered"
    EXPANDED = "expanded"
    SHRUNK = "shrunk"  # a region `expand` added was given back (`shrink`): placement drains it, make before break
    CHAOS = "chaos"
    ADOPTED = "adopted"
    ORPHAN = "orphan"
    SCALED_UP = "scaled-up"  # the autoscaler wants more replicas (the reason says why, with the figures)
    SCALED_DOWN = "scaled-down"
    SLEPT = "slept"  # a replicas.min 0 service drained every replica after its idle period
    WOKE = "woke"  # a request reached a sleeping service
    PREEMPTED = "preempted"  # the platform reclaims a Spot replica: out of routing at the notice, replaced at once


@dataclass(frozen=True)
class Event:
    """One line of the timeline the API and dashboard show; `id` is assigned by the store."""

    ts: float
    kind: EventKind
    message: str
    service: str | None = None
    region: str | None = None
    gpu: str | None = None
    replica: str | None = None
    id: int | None = None


@dataclass(frozen=True)
class ApiKey:
    """A key a service's endpoint accepts: only its SHA-256 is kept (the key is shown once, when made)."""

    service: str
    name: str
    sha256: str
    created_at: float
