"""The one interface every provider implements, and what it reports back.

The controller records an intent in the store, then asks the provider to act; the provider
reports what it observes. Every method is idempotent and keyed by replica id, so a controller
that restarts can call them again without creating duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from gpuroam.records import Replica
from gpuroam.spec import ServiceSpec

Regions = dict[str, dict[str, int | None]]  # region -> GPU type -> free slots now (None: cannot know)
SpecLookup = Callable[[str], ServiceSpec | None]  # service name -> its spec as the store holds it now


class ProviderError(RuntimeError):
    """The provider could not act for a reason that is not lack of capacity."""


class CapacityError(ProviderError):
    """No capacity for this (region, GPU) now: a stockout, a quota, an unschedulable GPU pod.

    A signal, not a fault: the controller blocks the pair with backoff and places elsewhere."""

    def __init__(self, region: str, gpu: str, reason: str) -> None:
        super().__init__(f"no {gpu} capacity in {region}: {reason}")
        self.region = region
        self.gpu = gpu
        self.reason = reason


class ObservedState(StrEnum):
    STARTING = "starting"  # exists, not ready yet
    READY = "ready"  # answers its readiness check
    FAILED = "failed"  # exists but broken, or could not be scheduled (see capacity_failure)


@dataclass(frozen=True)
class Observed:
    """A replica as the provider sees it, labelled with what gpuroam gave it at launch."""

    replica_id: str
    service: str
    region: str
    gpu: str
    state: ObservedState
    url: str | None = None
    detail: str = ""
    capacity_failure: bool = False
    # A preemption notice: the platform reclaims this (Spot) replica at this UNIX time (already, when
    # past). The controller takes it out of routing and launches its replacement at the notice.
    reclaim_at: float | None = None


@dataclass(frozen=True)
class Launched:
    """What a launch started: where the replica will answer (if known yet) and what the provider needs
    to find it again, kept in the store with the replica (e.g. a pid and log file, or a cluster and a
    Deployment name). A replica with no `details` was never launched."""

    url: str | None
    details: Mapping[str, str | int] = field(default_factory=dict)


class Provider(Protocol):
    """Regions with GPU inventory, and replicas in them."""

    name: str

    def regions(self) -> Regions:
        """Region -> GPU type -> free on-demand slots now (None when the provider cannot know)."""
        ...

    def spot_regions(self) -> Regions:
        """The same for Spot: where Spot GPUs can be asked for (empty: this provider has no Spot)."""
        ...

    def launch(self, replica: Replica, spec: ServiceSpec) -> Launched:
        """Start `replica` of the service `spec` (idempotent by id). Raises CapacityError."""
        ...

    def observe(self) -> list[Observed]:
        """Every replica this provider runs for gpuroam, whatever the store says."""
        ...

    def drain(self, replica_id: str) -> None:
        """Stop sending new work to the replica (a no-op where the gateway does it)."""
        ...

    def terminate(self, replica_id: str) -> None:
        """Remove the replica and what was created for it; fine if it is already gone."""
        ...

    def endpoint(self, service: str) -> str | None:
        """The service's global endpoint as this provider exposes it, if it has one."""
        ...


@runtime_checkable
class ChaosControls(Protocol):
    """Capacity taken away and given back on purpose: providers that simulate capacity offer it."""

    def fail_region(self, region: str) -> list[str]:
        """Lose every GPU of `region`; its replicas die abruptly. The ids of the replicas killed."""
        ...

    def fail_gpu(self, gpu: str, region: str | None = None) -> list[str]:
        """Lose a GPU type everywhere, or in one region. The ids of the replicas killed."""
        ...

    def preempt(self, region: str | None = None, replica: str | None = None, notice_s: float = 30.0) -> list[str]:
        """Reclaim Spot replicas (one, a region's with its Spot capacity, or all) after `notice_s`, reported
        as Observed.reclaim_at meanwhile. The ids of the replicas doomed."""
        ...

    def recover(self, region: str | None = None, gpu: str | None = None) -> list[tuple[str, str]]:
        """Give back what was taken in `region` and/or of `gpu` (all when both are None): the pairs restored."""
        ...


@runtime_checkable
class SecretSource(Protocol):
    """Secrets the provider's platform keeps (Kubernetes Secrets): where a spec's `endpoint.api_keys: secret:NAME`
    is read from."""

    def read_secret(self, name: str) -> dict[str, str]:
        """The Secret's entries, decoded (entry name -> value). ProviderError when it cannot be read."""
        ...
