"""An in-memory provider for reconciler tests: capacity, launches and readiness on command."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpuroam.providers.base import CapacityError, Launched, Observed, ObservedState
from gpuroam.records import Replica
from gpuroam.spec import ServiceSpec


@dataclass
class FakeReplica:
    replica: Replica
    ready: bool = False


@dataclass
class FakeProvider:
    """Sites with capacity; `make_ready()` brings every started replica up, `take_away()` kills."""

    capacity: dict[str, dict[str, int]]
    name: str = "fake"
    running: dict[str, FakeReplica] = field(default_factory=dict)
    launches: list[str] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)

    def regions(self) -> dict[str, dict[str, int | None]]:
        return {region: {gpu: self._free(region, gpu) for gpu in gpus} for region, gpus in self.capacity.items()}

    def _free(self, region: str, gpu: str) -> int:
        used = sum(1 for r in self.running.values() if (r.replica.region, r.replica.gpu) == (region, gpu))
        return self.capacity.get(region, {}).get(gpu, 0) - used

    def launch(self, replica: Replica, spec: ServiceSpec) -> Launched:
        launched = Launched(f"http://fake/{replica.id}", {"fake": replica.id})
        if replica.id in self.running:
            return launched
        if self._free(replica.region, replica.gpu) <= 0:
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

    def take_away(self, region: str | None = None, gpu: str | None = None) -> None:
        for site, gpus in self.capacity.items():
            for kind in gpus:
                if region in (None, site) and gpu in (None, kind):
                    gpus[kind] = 0
        for replica_id, running in list(self.running.items()):
            if region in (None, running.replica.region) and gpu in (None, running.replica.gpu):
                del self.running[replica_id]

    def give_back(self, capacity: dict[str, dict[str, int]]) -> None:
        for site, gpus in capacity.items():
            self.capacity.setdefault(site, {}).update(gpus)
