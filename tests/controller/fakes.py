"""An in-memory provider for reconciler tests: capacity, launches and readiness on command."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuroam.providers.base import CapacityError, Launched, Observed, ObservedState
from gpuroam.records import Capacity, Replica
from gpuroam.spec import ServiceSpec


@dataclass
class FakeReplica:
    replica: Replica
    ready: bool = False


@dataclass
class FakeProvider:
    """Sites with capacity, on demand and as Spot; `make_ready()` brings every started replica up,
    `take_away()` kills, `notice()` gives a preemption notice."""

    capacity: dict[str, dict[str, int]]
    spot: dict[str, dict[str, int]] = field(default_factory=dict)
    name: str = "fake"
    running: dict[str, FakeReplica] = field(default_factory=dict)
    launches: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    reclaim_at: dict[str, float] = field(default_factory=dict)
    stockouts: set[tuple[str, str, Capacity]] = field(default_factory=set)  # listed as free, refused at launch

    def regions(self) -> dict[str, dict[str, int | None]]:
        return self._regions(Capacity.ON_DEMAND)

    def spot_regions(self) -> dict[str, dict[str, int | None]]:
        return self._regions(Capacity.SPOT)

    def _regions(self, capacity: Capacity) -> dict[str, dict[str, int | None]]:
        inventory = self.spot if capacity is Capacity.SPOT else self.capacity
        return {region: {gpu: self._free(region, gpu, capacity) for gpu in gpus} for region, gpus in inventory.items()}

    def _free(self, region: str, gpu: str, capacity: Capacity = Capacity.ON_DEMAND) -> int:
        inventory = self.spot if capacity is Capacity.SPOT else self.capacity
        slot = (region, gpu, capacity)
        used = sum(1 for r in self.running.values() if (r.replica.region, r.replica.gpu, r.replica.capacity) == slot)
        return inventory.get(region, {}).get(gpu, 0) - used

    def launch(self, replica: Replica, spec: ServiceSpec) -> Launched:
        launched = Launched(f"http://fake/{replica.id}", {"fake": replica.id})
        if replica.id in self.running:
            return launched
        slot = (replica.region, replica.gpu, replica.capacity)
        if self._free(*slot) <= 0 or slot in self.stockouts:
            raise CapacityError(replica.region, replica.gpu, "fake stockout")
        self.running[replica.id] = FakeReplica(replica)
        self.launches.append(replica.id)
        return launched

    def observe(self) -> list[Observed]:
        return [
            Observed(
                r.replica.id,
                r.replica.service,
                r.replica.region,
                r.replica.gpu,
                ObservedState.READY if r.ready else ObservedState.STARTING,
                url=f"http://fake/{r.replica.id}",
                reclaim_at=self.reclaim_at.get(r.replica.id),
            )
            for r in self.running.values()
        ]

    def drain(self, replica_id: str) -> None:
        pass

    def terminate(self, replica_id: str) -> None:
        if self.running.pop(replica_id, None) is not None:
            self.terminated.append(replica_id)

    def endpoint(self, service: str) -> str | None:
        return None

    def make_ready(self) -> None:
        for replica in self.running.values():
            replica.ready = True

    def notice(self, replica_id: str, reclaim_at: float) -> None:
        """The platform's preemption notice: the replica goes at `reclaim_at` (take_away does it)."""
        self.reclaim_at[replica_id] = reclaim_at

    def take_away(self, region: str | None = None, gpu: str | None = None) -> None:
        for site, gpus in [*self.capacity.items(), *self.spot.items()]:
            for kind in gpus:
                if region in (None, site) and gpu in (None, kind):
                    gpus[kind] = 0
        for replica_id, running in list(self.running.items()):
            if region in (None, running.replica.region) and gpu in (None, running.replica.gpu):
                del self.running[replica_id]

    def give_back(self, capacity: dict[str, dict[str, int]]) -> None:
        for site, gpus in capacity.items():
            self.capacity.setdefault(site, {}).update(gpus)
