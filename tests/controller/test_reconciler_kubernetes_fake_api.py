"""The reconciler driving KubernetesProvider, through the real `kubernetes` client, against a fake API server.

Three clusters (us-central1, europe-west4, asia-southeast1), the bundled catalog (free slots unknown, as on
real clusters), a real SQLite store and a controllable clock; passes are run directly, no threads.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gpuroam.catalog import load_catalog
from gpuroam.controller.reconciler import Reconciler
from gpuroam.controller.store import Store
from gpuroam.providers.kubernetes.provider import KubernetesProvider
from gpuroam.records import EventKind, Replica, ReplicaState
from gpuroam.spec import ServiceSpec, load_spec, parse_spec, spec_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers" / "kubernetes"))
from fake_kube_api import FakeKubernetes

REGIONS = ["us-central1", "europe-west4", "asia-southeast1"]
PREFERRED = {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
OUTAGE_GRACE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    store: Store
    fake: FakeKubernetes
    provider: KubernetesProvider
    reconciler: Reconciler
    clock: Clock

    def run(self, passes: int = 1, step: float = 1.0, ready: bool = True) -> None:
        """Reconcile; the clusters then bring up whatever can get a GPU node; time moves on."""
        for _ in range(passes):
            self.reconciler.reconcile()
            if ready:
                self.fake.make_ready()
            self.clock.now += step

    def live(self, state: ReplicaState | None = None) -> list[Replica]:
        return [r for r in self.store.list_replicas() if r.state.live and (state is None or r.state is state)]

    def placement(self) -> set[tuple[str, str]]:
        return {(r.region, r.gpu) for r in self.live(ReplicaState.READY)}

    def deployments(self) -> set[str]:
        with self.fake.lock:
            return {d["metadata"]["name"] for c in self.fake.clusters.values() for d in c.items("deployments")}

    def events(self, kind: EventKind) -> list[str]:
        return [e.message for e in self.store.list_events() if e.kind is kind]


def fast_spec() -> ServiceSpec:
    """The example service with test-length timings, as test_control_plane.fast_spec has them."""
    data = yaml.safe_load(Path("examples/stable-diffusion.yaml").read_text())
    data["placement"].update(provision_timeout_s=90, block_ttl_s=3, block_max_s=20, move_back_after_s=2)
    return parse_spec(data)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    assert load_spec("examples/stable-diffusion.yaml").resources.gpus[0] == "nvidia-l4"
    spec, catalog, clock = fast_spec(), load_catalog(), Clock()
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")

    with FakeKubernetes(REGIONS) as fake:
        provider = KubernetesProvider(fake.clients(), catalog=catalog, outage_grace_s=OUTAGE_GRACE_S, clock=clock)
        store.put_service(spec.name, spec_to_dict(spec), clock.now)
        yield World(store, fake, provider, Reconciler(store, provider, catalog, clock), clock)
    store.close()


def test_fake_api_reconciler_places_ready_replicas_in_two_regions_on_the_preferred_gpu(world: World) -> None:
    world.run(passes=10)  # past the drain grace of the raced extra
    assert world.placement() == PREFERRED
    assert world.deployments() == {r.id for r in world.live()}, "a cluster runs exactly what the store wants"
    for region, _ in PREFERRED:
        (call, *_) = world.fake.calls(region)
        assert call == ("PATCH", "/api/v1/namespaces/gpuroam"), "the namespace is applied first"
    replicas, events = world.store.list_replicas(), world.store.list_events()
    world.run(passes=5)
    assert world.store.list_replicas() == replicas and world.store.list_events() == events, "a settled pass is a no-op"


def test_fake_api_reconciler_moves_a_replica_out_of_a_stocked_out_region(world: World) -> None:
    world.run(passes=10)
    (lost,) = [r for r in world.live() if r.region == "europe-west4"]
    # The L4 node in europe-west4 goes away and the autoscaler cannot get another: the replacement pod
    # stays pending with FailedScaleUp "GCE out of resources".
    world.fake.set_stockout("europe-west4", "nvidia-l4")
    assert world.fake.lose_pods("europe-west4", "nvidia-l4")
    world.run(passes=10)
    assert world.store.get_replica(lost.id).state is ReplicaState.FAILED
    assert any("GCE out of resources" in m and lost.id in m for m in world.events(EventKind.FAILED))
    assert any("nvidia-l4 in europe-west4 blocked" in m for m in world.events(EventKind.BLOCKED))
    assert world.events(EventKind.FAILOVER), "the launches after the loss are failovers"
    assert ("europe-west4", "nvidia-l4") not in world.placement()
    assert len({region for region, _ in world.placement()}) == 2
    assert ("us-central1", "nvidia-l4") in world.placement(), "the healthy region is untouched"
    assert lost.id not in world.deployments(), "the failed replica's Deployment was deleted"
    assert world.deployments() == {r.id for r in world.live()}

    world.fake.set_stockout("europe-west4", "nvidia-l4", out=False)  # capacity returns; the L4 move stays
    world.run(passes=20, step=2.0)
    assert {gpu for _, gpu in world.placement()} == {"nvidia-l4"} and len(world.placement()) == 2
    assert world.deployments() == {r.id for r in world.live()}


def test_fake_api_reconciler_rides_out_a_short_api_outage_and_replaces_a_region_lost_for_longer(
    world: World,
) -> None:
    world.run(passes=10)
    before = {r.id for r in world.live(ReplicaState.READY)}
    world.fake.clusters["europe-west4"].down = True
    world.run(passes=int(OUTAGE_GRACE_S) - 5)  # within the grace: nothing is failed or replaced
    assert {r.id for r in world.live(ReplicaState.READY)} == before
    assert not world.events(EventKind.FAILED)
    world.run(passes=20)  # past it: the region counts as lost
    assert "europe-west4" not in {region for region, _ in world.placement()}
    assert len({region for region, _ in world.placement()}) == 2
    assert any("europe-west4" in m for m in world.events(EventKind.BLOCKED))
    world.fake.clusters["europe-west4"].down = False  # back: what it still runs is no longer wanted
    world.run(passes=3)
    assert world.events(EventKind.ORPHAN)
    assert world.deployments() == {r.id for r in world.live()}


def test_fake_api_clusters_follow_the_autoscaler_out_and_to_sleep(tmp_path: Path) -> None:
    """No HPA in the loop: the same controller adds Deployments where the demand is and deletes them all
    when the service sleeps, on the clusters' real API (faked)."""
    from test_reconciler_autoscale import HandSignals

    data = spec_to_dict(fast_spec())
    data["regions"]["min_regions"] = 1
    data["replicas"].update(min=0, max=3)
    data["autoscale"] = {"target_in_flight": 1, "scale_up_after_s": 2, "scale_down_after_s": 5, "sleep_after_s": 10}
    spec, catalog, clock, signals = parse_spec(data), load_catalog(), Clock(), HandSignals()
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    with FakeKubernetes(REGIONS) as fake:
        provider = KubernetesProvider(fake.clients(), catalog=catalog, outage_grace_s=OUTAGE_GRACE_S, clock=clock)
        store.put_service(spec.name, spec_to_dict(spec), clock.now)
        world = World(store, fake, provider, Reconciler(store, provider, catalog, clock, signals=signals), clock)
        signals.load()
        world.run(passes=5)
        assert world.deployments() == set(), "asleep: nothing on any cluster"
        signals.load(held=1, at=clock.now, europe_west1=1.0)
        world.run(passes=3)
        assert world.placement() == {("europe-west4", "nvidia-l4")}, "woken where the request came from"
        signals.load(in_flight=4, at=clock.now, europe_west1=2.0, us_east1=2.0)  # L4 2.2 x 1: two replicas
        world.run(passes=12)
        assert world.placement() == PREFERRED
        assert world.deployments() == {r.id for r in world.live()}
        signals.load(at=clock.now)
        world.run(passes=30)
        assert world.deployments() == set() and store.get_scale(spec.name).desired == 0  # type: ignore[union-attr]
    store.close()
