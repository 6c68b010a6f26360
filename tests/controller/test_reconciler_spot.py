"""Spot through the reconciler: preference, fallback on a Spot stockout, a preemption notice handled at the
notice, and the move back to Spot, against the in-memory provider and the example's local sites (a real store,
SQLite and PostgreSQL)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeProvider

from gpuroam.catalog import load_catalog
from gpuroam.controller.reconciler import Reconciler
from gpuroam.controller.store import Store
from gpuroam.providers.local import LocalProvider, load_sites
from gpuroam.records import Capacity, EventKind, Replica, ReplicaState
from gpuroam.spec import load_spec, spec_to_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SITES = load_sites(EXAMPLES / "local-regions.yaml")
NOW = 1_800_000_000.0
SPOT, ON_DEMAND = Capacity.SPOT, Capacity.ON_DEMAND


def example_spec(spot: str, on_demand_base: int = 0) -> dict[str, object]:
    spec = spec_to_dict(load_spec(EXAMPLES / "stable-diffusion.yaml"))
    spec["resources"].update(spot=spot, on_demand_base=on_demand_base)
    return spec


class World:
    """The example's sites (on demand and Spot) in the in-memory provider, a clock and a reconciler."""

    def __init__(self, store: Store, spot: str, on_demand_base: int = 0) -> None:
        self.store, self.now = store, NOW
        self.provider = FakeProvider(copy.deepcopy(SITES.on_demand), spot=copy.deepcopy(SITES.spot))
        self.reconciler = Reconciler(store, self.provider, load_catalog(), lambda: self.now)
        store.put_service("stable-diffusion", example_spec(spot, on_demand_base), self.now)

    def run(self, passes: int = 3, step: float = 1.0) -> None:
        for _ in range(passes):
            self.reconciler.reconcile()
            self.provider.make_ready()
            self.now += step

    def live(self, state: ReplicaState | None = None) -> list[Replica]:
        return [r for r in self.store.list_replicas() if r.state.live and (state is None or r.state is state)]

    def placement(self) -> set[tuple[str, str, Capacity]]:
        return {(r.region, r.gpu, r.capacity) for r in self.live(ReplicaState.READY)}


@pytest.mark.parametrize(
    ("spot", "base", "expected"),
    [
        ("never", 0, {("us-central1", "nvidia-l4", ON_DEMAND), ("europe-west4", "nvidia-l4", ON_DEMAND)}),
        ("prefer", 0, {("us-central1", "nvidia-l4", SPOT), ("europe-west4", "nvidia-l4", SPOT)}),
        ("only", 0, {("us-central1", "nvidia-l4", SPOT), ("europe-west4", "nvidia-l4", SPOT)}),
        ("prefer", 1, {("us-central1", "nvidia-l4", ON_DEMAND), ("europe-west4", "nvidia-l4", SPOT)}),
    ],
)
def test_the_spot_choice_places_each_replica_on_spot_or_on_demand(
    spot: str, base: int, expected: set[tuple[str, str, Capacity]], store: Store
) -> None:
    world = World(store, spot, base)
    world.run(10)
    assert world.placement() == expected
    assert {r.capacity for r in world.provider.running.values() for r in [r.replica]} == {c for *_, c in expected}


def test_a_spot_stockout_blocks_spot_alone_and_the_replacement_runs_on_demand_at_once(store: Store) -> None:
    world = World(store, "prefer")
    world.provider.stockouts.add(("us-central1", "nvidia-l4", SPOT))  # listed, but the launch is refused
    world.run(10)
    assert ("us-central1", "nvidia-l4", ON_DEMAND) in world.placement()
    blocked = {b.slot for b in store.list_blocks() if b.active(world.now)}
    assert ("us-central1", "nvidia-l4", SPOT) in blocked and ("us-central1", "nvidia-l4", ON_DEMAND) not in blocked


def test_a_preemption_notice_takes_the_replica_out_and_replaces_it_in_the_same_pass(store: Store) -> None:
    world = World(store, "prefer")
    world.run(10)
    doomed = next(r for r in world.live(ReplicaState.READY) if r.region == "europe-west4")
    world.provider.notice(doomed.id, world.now + 10)
    world.reconciler.reconcile()
    after = {r.id: r for r in store.list_replicas()}
    assert after[doomed.id].state is ReplicaState.DRAINING and after[doomed.id].reason == "preempted"
    starting = [r for r in after.values() if r.state is ReplicaState.PROVISIONING]
    assert starting, "the replacement launches at the notice, while the doomed replica still runs"
    assert doomed.id in world.provider.running
    assert all((r.region, r.gpu, r.capacity) != (doomed.region, doomed.gpu, SPOT) for r in starting)
    events = [e for e in store.list_events() if e.kind is EventKind.PREEMPTED]
    assert [e.replica for e in events] == [doomed.id] and "reclaimed in 10 s" in events[0].message
    block = store.get_block(doomed.region, doomed.gpu, SPOT)
    assert block is not None and block.active(world.now) and block.reason == "preempted"
    world.provider.make_ready()
    world.now += 10
    world.provider.take_away("europe-west4")  # the cloud reclaims it at the deadline
    world.run(10)
    assert len(world.live(ReplicaState.READY)) == 2 and store.get_replica(doomed.id).state is ReplicaState.TERMINATED


def test_on_demand_replicas_above_the_floor_move_back_to_spot_once_it_is_stable(store: Store) -> None:
    world = World(store, "prefer")
    for gpus in world.provider.spot.values():
        for gpu in gpus:
            gpus[gpu] = 0  # no Spot anywhere: everything on demand
    world.run(10)
    assert {c for *_, c in world.placement()} == {ON_DEMAND}
    world.provider.spot = copy.deepcopy(SITES.spot)  # Spot is back
    ready = []
    for _ in range(120):
        world.run(1, step=10.0)
        ready.append(len(world.live(ReplicaState.READY)))
    assert world.placement() == {("us-central1", "nvidia-l4", SPOT), ("europe-west4", "nvidia-l4", SPOT)}
    assert min(ready) >= 2, "make before break: never fewer ready than asked for"
    assert any(e.kind is EventKind.RECOVERED for e in store.list_events())


@pytest.fixture
def local(tmp_path: Path, fake_python: str) -> Iterator[LocalProvider]:
    provider = LocalProvider(SITES.on_demand, tmp_path / "sites", python=fake_python, spot=SITES.spot)
    try:
        yield provider
    finally:
        for seen in provider.observe():
            provider.terminate(seen.replica_id)


def test_local_sites_launch_spot_replicas_into_their_spot_slots(store: Store, local: LocalProvider) -> None:
    store.put_service("stable-diffusion", example_spec("prefer"), NOW)
    Reconciler(store, local, load_catalog(), lambda: NOW).reconcile()
    launched = [r for r in store.list_replicas() if r.handle]  # those that got a worker
    assert launched and {r.capacity for r in launched} == {SPOT}
    taken = sum(SITES.spot[region][gpu] - free for region, gpus in local.spot_regions().items()
                for gpu, free in gpus.items())  # fmt: skip
    assert taken == len(launched)
    assert local.regions() == {region: dict(gpus) for region, gpus in SITES.on_demand.items()}, "none on demand"
