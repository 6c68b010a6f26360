"""KubernetesProvider reads preemption notices through the real `kubernetes` client from a fake API server
(fake_kube_api): a Spot node's taints, a pod's DisruptionTarget condition and deletion, and the events a
pod leaves when it vanishes; and what each costs in requests."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from fake_kube_api import FakeKubernetes

from gpuroam.catalog import load_catalog
from gpuroam.providers.base import Observed, ObservedState
from gpuroam.providers.kubernetes.provider import KubernetesProvider
from gpuroam.records import Capacity, Replica, ReplicaState
from gpuroam.spec import ServiceSpec, load_spec, parse_spec, spec_to_dict

REGION = "us-central1"
NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
IMPENDING = "cloud.google.com/impending-node-termination"
NODES = "/api/v1/nodes/"


def spot_spec() -> ServiceSpec:
    data = spec_to_dict(load_spec("examples/stable-diffusion.yaml"))
    data["resources"]["spot"] = "prefer"
    return parse_spec(data)


SPEC = spot_spec()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def at(seconds: float) -> str:
    """The API's timestamp `seconds` after NOW."""
    return datetime.fromtimestamp(NOW + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replica(suffix: str, capacity: Capacity = Capacity.SPOT) -> Replica:
    rid = f"stable-diffusion-{REGION}-l4-{suffix}"
    made = Replica(rid, "stable-diffusion", REGION, "nvidia-l4", ReplicaState.PROVISIONING, 0.0, 0.0)
    return replace(made, capacity=capacity)


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes([REGION, "europe-west4"]) as server:
        yield server


@pytest.fixture
def provider(fake: FakeKubernetes) -> KubernetesProvider:
    return KubernetesProvider(fake.clients(), catalog=load_catalog(), clock=Clock(1000.0), wall_clock=Clock(NOW))


def observed(provider: KubernetesProvider) -> dict[str, Observed]:
    return {o.replica_id: o for o in provider.observe()}


def node_reads(fake: FakeKubernetes) -> list[str]:
    return [path for _, path in fake.calls(REGION, methods=("GET",)) if path.startswith(NODES)]


def launched(fake: FakeKubernetes, provider: KubernetesProvider, *made: Replica) -> list[str]:
    """Launch and bring up `made`; the name of each one's pod."""
    for r in made:
        provider.launch(r, SPEC)
    fake.make_ready()
    return [fake.pods_of(REGION, r.id)[0]["metadata"]["name"] for r in made]


def node_of(fake: FakeKubernetes, r: Replica) -> str:
    return str(fake.pods_of(REGION, r.id)[0]["spec"]["nodeName"])


def test_fake_api_a_spot_node_given_a_termination_notice_reclaims_its_replica(fake, provider) -> None:  # type: ignore[no-untyped-def]
    spot, on_demand = replica("abc123"), replica("def456", Capacity.ON_DEMAND)
    launched(fake, provider, spot, on_demand)
    seen = observed(provider)
    assert {o.state for o in seen.values()} == {ObservedState.READY}
    assert all(o.reclaim_at is None for o in seen.values())
    assert node_reads(fake) == [NODES + node_of(fake, spot)], "the Spot pod's node alone, once"

    fake.taint_node(REGION, node_of(fake, spot), IMPENDING)
    seen = observed(provider)
    assert seen[spot.id].state is ObservedState.READY, "it still serves until the notice runs out"
    assert seen[spot.id].reclaim_at == NOW + 25 and IMPENDING in seen[spot.id].detail
    assert seen[on_demand.id].reclaim_at is None
    assert len(node_reads(fake)) == 2


def test_fake_api_spot_pods_on_one_node_cost_one_node_read_per_observe(fake, provider) -> None:  # type: ignore[no-untyped-def]
    first, second = replica("abc123"), replica("def456")
    launched(fake, provider, first, second)
    with fake.lock:
        fake.pods_of(REGION, second.id)[0]["spec"]["nodeName"] = node_of(fake, first)
    fake.taint_node(REGION, node_of(fake, first), "ToBeDeletedByClusterAutoscaler", str(int(NOW) - 5))
    seen = observed(provider)
    assert [seen[r.id].reclaim_at for r in (first, second)] == [NOW + 20, NOW + 20]
    assert node_reads(fake) == [NODES + node_of(fake, first)]


def test_fake_api_a_node_that_cannot_be_read_is_no_signal_and_observe_goes_on(  # type: ignore[no-untyped-def]
    fake, provider, caplog
) -> None:
    spot = replica("abc123")
    launched(fake, provider, spot)
    fake.taint_node(REGION, node_of(fake, spot), IMPENDING)
    fake.clusters[REGION].forbidden.add("nodes")  # RBAC: no `get` on nodes
    with caplog.at_level(logging.WARNING, "gpuroam.providers.kubernetes"):
        for _ in range(3):
            (seen,) = provider.observe()
            assert seen.state is ObservedState.READY and seen.reclaim_at is None
    assert len([r for r in caplog.records if "cannot read nodes" in r.getMessage()]) == 1, "logged once"
    fake.clusters[REGION].forbidden.clear()
    assert provider.observe()[0].reclaim_at == NOW + 25
    with fake.lock:
        fake.clusters[REGION].objects.pop(("nodes", "", node_of(fake, spot)))  # 404: gone from the API
    assert provider.observe()[0].reclaim_at is None


def test_fake_api_a_graceful_node_shutdown_is_a_notice_then_a_reclaim_already_past(fake, provider) -> None:  # type: ignore[no-untyped-def]
    spot = replica("abc123")
    (pod,) = launched(fake, provider, spot)
    fake.disrupt(REGION, pod, "TerminationByKubelet", at(-2))
    (seen,) = provider.observe()
    assert seen.state is ObservedState.READY and seen.reclaim_at == NOW - 2 + 25
    assert "TerminationByKubelet" in seen.detail
    fake.disrupt(REGION, pod, "TerminationByKubelet", at(-2), phase="Failed")  # its containers have stopped
    (seen,) = provider.observe()
    assert seen.state is ObservedState.STARTING, "the Deployment's replacement pod is pending"
    assert seen.reclaim_at == NOW


def test_fake_api_a_spot_pod_deleted_is_reclaimed_when_its_grace_ends(fake, provider) -> None:  # type: ignore[no-untyped-def]
    spot, on_demand = replica("abc123"), replica("def456", Capacity.ON_DEMAND)
    pods = launched(fake, provider, spot, on_demand)
    for pod in pods:
        fake.delete_pod(REGION, pod, at(25), grace_s=25)
    seen = observed(provider)
    assert seen[spot.id].reclaim_at == NOW + 25 and "deleted" in seen[spot.id].detail
    assert seen[on_demand.id].reclaim_at is None, "deleting an on-demand pod is someone's choice"
    assert {o.state for o in seen.values()} == {ObservedState.STARTING}, "the replacements are pending"
    fake.make_ready()
    assert all(o.reclaim_at is None and o.state is ObservedState.READY for o in observed(provider).values())


def test_fake_api_a_pod_preempted_between_two_observes_is_a_capacity_failure(fake, provider) -> None:  # type: ignore[no-untyped-def]
    spot, other = replica("abc123"), replica("def456")
    preempted, _ = launched(fake, provider, spot, other)
    provider.observe()
    fake.vanish(REGION, preempted, "Preempted", "Preempted by pod 9a8b on node gke-us-central1-nvidia-l4-1")
    seen = observed(provider)
    assert seen[spot.id].state is ObservedState.FAILED and seen[spot.id].capacity_failure
    assert f"pod {preempted} gone: preempted: Preempted by pod 9a8b" in seen[spot.id].detail
    assert seen[other.id].state is ObservedState.READY
    assert observed(provider)[spot.id].state is ObservedState.STARTING, "read once: then as before"
    reads = [c.query["fieldSelector"] for c in fake.clusters[REGION].calls if c.path.endswith("/events")]
    assert reads.count(f"involvedObject.name={preempted}") == 1, "the replacement's own are read as before"


def test_fake_api_a_vanished_pod_whose_node_shut_down_is_a_capacity_failure(fake, provider) -> None:  # type: ignore[no-untyped-def]
    spot = replica("abc123")
    (pod,) = launched(fake, provider, spot)
    node = node_of(fake, spot)
    provider.observe()
    fake.node_event(REGION, node, "Shutdown", "Shutdown manager detected shutdown event")
    fake.vanish(REGION, pod)  # gone with no event of its own
    (seen,) = provider.observe()
    assert seen.state is ObservedState.FAILED and seen.capacity_failure and "shutdown event" in seen.detail
    node_events = [c for c in fake.clusters[REGION].calls if c.path == "/api/v1/namespaces/default/events"]
    assert [c.query["fieldSelector"] for c in node_events] == [f"involvedObject.kind=Node,involvedObject.name={node}"]


def test_fake_api_a_pod_that_vanished_for_no_preemption_is_still_starting(fake, provider) -> None:  # type: ignore[no-untyped-def]
    spot = replica("abc123")
    (pod,) = launched(fake, provider, spot)
    provider.observe()
    fake.vanish(REGION, pod, "Killing", "Stopping container app")
    (seen,) = provider.observe()
    assert seen.state is ObservedState.STARTING and not seen.capacity_failure and seen.reclaim_at is None
