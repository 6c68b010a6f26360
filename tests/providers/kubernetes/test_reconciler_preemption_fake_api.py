"""A Spot preemption on a cluster, end to end: GKE taints the node under a Spot replica, KubernetesProvider reads
it as a notice (through the real `kubernetes` client, against fake_kube_api), and the reconciler takes the
replica out, blocks its Spot slot and launches its replacement in the same pass. A real SQLite store, one
clock for the controller and the provider's wall time, passes run directly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fake_kube_api import FakeKubernetes

from gpuroam.catalog import load_catalog
from gpuroam.controller.reconciler import Reconciler
from gpuroam.controller.store import Store
from gpuroam.providers.kubernetes.provider import KubernetesProvider
from gpuroam.records import Capacity, EventKind, Replica, ReplicaState
from gpuroam.spec import parse_spec, spec_to_dict

REGIONS = ["us-central1", "europe-west4", "asia-southeast1"]
IMPENDING = "cloud.google.com/impending-node-termination"


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    store: Store
    fake: FakeKubernetes
    reconciler: Reconciler
    clock: Clock

    def run(self, passes: int = 1) -> None:
        for _ in range(passes):
            self.reconciler.reconcile()
            self.fake.make_ready()
            self.clock.now += 1.0

    def ready(self) -> list[Replica]:
        return [r for r in self.store.list_replicas() if r.state is ReplicaState.READY]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    data = yaml.safe_load(Path("examples/stable-diffusion.yaml").read_text())
    data["placement"].update(provision_timeout_s=90, block_ttl_s=30, block_max_s=60, move_back_after_s=2)
    data["resources"]["spot"] = "only"
    spec, catalog, clock = parse_spec(data), load_catalog(), Clock()
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    with FakeKubernetes(REGIONS) as fake:
        provider = KubernetesProvider(fake.clients(), catalog=catalog, clock=clock, wall_clock=clock)
        store.put_service(spec.name, spec_to_dict(spec), clock.now)
        yield World(store, fake, Reconciler(store, provider, catalog, clock), clock)
    store.close()


def test_fake_api_a_spot_node_termination_notice_replaces_the_replica_at_the_notice(world: World) -> None:
    world.run(passes=10)
    ready = world.ready()
    assert len(ready) == 2 and {r.capacity for r in ready} == {Capacity.SPOT}
    doomed = ready[0]
    (pod,) = world.fake.pods_of(doomed.region, doomed.id)
    world.fake.taint_node(doomed.region, pod["spec"]["nodeName"], IMPENDING)

    world.reconciler.reconcile()  # one pass, the pod still running
    after = {r.id: r for r in world.store.list_replicas()}
    assert after[doomed.id].state is ReplicaState.DRAINING and after[doomed.id].reason == "preempted"
    assert any(r.state is ReplicaState.PROVISIONING for r in after.values()), "its replacement, in the same pass"
    (event,) = [e for e in world.store.list_events() if e.kind is EventKind.PREEMPTED]
    assert event.replica == doomed.id and "reclaimed in 25 s" in event.message
    block = world.store.get_block(doomed.region, doomed.gpu, Capacity.SPOT)
    assert block is not None and block.active(world.clock.now) and block.reason == "preempted"
    assert world.store.get_block(doomed.region, doomed.gpu, Capacity.ON_DEMAND) is None, "Spot alone is blocked"

    world.run(passes=40)  # the drain ends, the doomed replica's Deployment goes; the replacement serves
    assert world.store.get_replica(doomed.id).state is ReplicaState.TERMINATED  # type: ignore[union-attr]
    assert len(world.ready()) == 2 and doomed.id not in {r.id for r in world.ready()}
    with world.fake.lock:
        names = {d["metadata"]["name"] for c in world.fake.clusters.values() for d in c.items("deployments")}
    assert names == {r.id for r in world.store.list_replicas() if r.state.live}
