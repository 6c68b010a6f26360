"""KubernetesProvider through the real `kubernetes` client against a fake API server (fake_kube_api).

What is checked is the sequence of HTTP requests the client makes and what the provider reads back from
the API's JSON: server-side apply in order, idempotence, pod states, autoscaler events, deletes, outages.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from fake_kube_api import FakeKubernetes

from gpuroam.catalog import load_catalog
from gpuroam.providers.base import CapacityError, ObservedState, ProviderError
from gpuroam.providers.kubernetes.provider import APPLY_PATCH, KubernetesProvider
from gpuroam.records import Capacity, Replica, ReplicaState
from gpuroam.spec import load_spec, parse_spec, spec_to_dict

REGIONS = ["us-central1", "europe-west4", "asia-southeast1"]
SPEC = load_spec("examples/stable-diffusion.yaml")
NS = "/api/v1/namespaces/gpuroam"
APPS = "/apis/apps/v1/namespaces/gpuroam"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(region: str = "us-central1", gpu: str = "nvidia-l4", suffix: str = "abc123") -> Replica:
    rid = f"stable-diffusion-{region}-{gpu.removeprefix('nvidia-')}-{suffix}"
    return Replica(rid, "stable-diffusion", region, gpu, ReplicaState.PROVISIONING, 0.0, 0.0)


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(REGIONS) as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(fake: FakeKubernetes, clock: Clock) -> KubernetesProvider:
    return KubernetesProvider(fake.clients(), catalog=load_catalog(), outage_grace_s=60, clock=clock)


def test_fake_api_launch_applies_namespace_then_deployment_then_service(fake, provider) -> None:  # type: ignore[no-untyped-def]
    r = replica()
    handle = provider.launch(r, SPEC)
    assert fake.calls("us-central1") == [
        ("PATCH", NS),
        ("PATCH", f"{APPS}/deployments/{r.id}"),
        ("PATCH", f"{NS}/services/{r.id}"),
    ]
    for call in fake.clusters["us-central1"].calls:
        assert call.content_type == APPLY_PATCH and call.status in (200, 201)
        assert call.query == {"fieldManager": "gpuroam", "force": "true"}
    assert not fake.calls("europe-west4") and not fake.calls("asia-southeast1")
    assert handle.url == f"http://{r.id}.gpuroam.svc.cluster.local:80"
    assert handle.details == {
        "cluster": "us-central1",
        "namespace": "gpuroam",
        "deployment": r.id,
        "service": r.id,
        "url": f"http://{r.id}.gpuroam.svc.cluster.local:80",
    }
    svc = fake.clusters["us-central1"].objects[("services", "gpuroam", r.id)]
    assert svc["spec"]["selector"]["gpuroam.dev/replica"] == r.id, "the Service reaches this replica alone"


def test_fake_api_launch_again_is_idempotent(fake, provider) -> None:  # type: ignore[no-untyped-def]
    r = replica()
    first = provider.launch(r, SPEC)
    cluster = fake.clusters["us-central1"]
    uid = cluster.objects[("deployments", "gpuroam", r.id)]["metadata"]["uid"]
    assert provider.launch(r, SPEC) == first
    assert [c.status for c in cluster.calls if c.method == "PATCH"] == [201, 201, 201, 200, 200, 200]
    assert cluster.objects[("deployments", "gpuroam", r.id)]["metadata"]["uid"] == uid
    assert len(cluster.pods()) == 1 and len(cluster.items("deployments")) == 1


def test_fake_api_observe_reports_starting_then_ready_from_labels(fake, provider) -> None:  # type: ignore[no-untyped-def]
    r = replica("europe-west4", "nvidia-tesla-t4")
    provider.launch(r, SPEC)
    (seen,) = provider.observe()
    assert (seen.replica_id, seen.service, seen.region, seen.gpu) == (r.id, r.service, r.region, r.gpu)
    assert seen.state is ObservedState.STARTING and not seen.capacity_failure
    assert seen.url == f"http://{r.id}.gpuroam.svc.cluster.local:80"
    fake.make_ready("europe-west4")
    (seen,) = provider.observe()
    assert seen.state is ObservedState.READY
    lists = [path for _, path in fake.calls("europe-west4", methods=("GET",))]
    assert f"{APPS}/deployments" in lists and f"{NS}/pods" in lists and f"{NS}/services" in lists
    calls = fake.clusters["europe-west4"].calls
    selectors = {c.query.get("labelSelector") for c in calls if c.method == "GET" and not c.path.endswith("/events")}
    assert selectors == {"gpuroam.dev/replica,app.kubernetes.io/managed-by=gpuroam"}


def test_fake_api_a_load_balancer_address_is_the_url(fake, provider) -> None:  # type: ignore[no-untyped-def]
    r = replica()
    provider.launch(r, SPEC)
    with fake.lock:
        fake.clusters["us-central1"].objects[("services", "gpuroam", r.id)]["status"] = {
            "loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}
        }
    assert provider.observe()[0].url == "http://203.0.113.7:80"


def test_fake_api_a_gce_stockout_event_is_a_capacity_failure(fake, provider) -> None:  # type: ignore[no-untyped-def]
    fake.set_stockout("us-central1", "nvidia-l4")
    r = replica()
    provider.launch(r, SPEC)
    fake.make_ready()  # the autoscaler cannot get an L4 node: the pod stays pending
    (seen,) = provider.observe()
    assert seen.state is ObservedState.FAILED and seen.capacity_failure
    assert "stockout" in seen.detail and "GCE out of resources" in seen.detail
    pod = fake.clusters["us-central1"].pods()[0]["metadata"]["name"]
    event_lists = [c for c in fake.clusters["us-central1"].calls if c.path == f"{NS}/events"]
    assert [c.query["fieldSelector"] for c in event_lists] == [f"involvedObject.name={pod}"]


def test_fake_api_a_pending_pod_without_autoscaler_verdict_is_still_starting(fake, provider) -> None:  # type: ignore[no-untyped-def]
    provider.launch(replica(), SPEC)
    (seen,) = provider.observe()  # FailedScheduling alone: a node is being added
    assert seen.state is ObservedState.STARTING and not seen.capacity_failure


def test_fake_api_a_crash_loop_is_a_failure_but_not_for_capacity(fake, provider) -> None:  # type: ignore[no-untyped-def]
    provider.launch(replica(), SPEC)
    fake.make_ready()
    fake.crash("us-central1")
    (seen,) = provider.observe()
    assert seen.state is ObservedState.FAILED and not seen.capacity_failure
    assert "CrashLoopBackOff" in seen.detail


def test_fake_api_a_gpu_quota_refusal_of_the_pod_is_a_capacity_failure(fake, provider) -> None:  # type: ignore[no-untyped-def]
    r = replica()
    provider.launch(r, SPEC)
    message = 'pods "x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, limited: 0'
    condition = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message}
    with fake.lock:
        cluster = fake.clusters["us-central1"]
        cluster.objects[("deployments", "gpuroam", r.id)]["status"] = {"conditions": [condition]}
        for pod in cluster.pods():
            cluster.objects.pop(("pods", "gpuroam", pod["metadata"]["name"]))
        cluster.objects[("deployments", "gpuroam", r.id)]["spec"]["replicas"] = 0  # no pod can be made
    (seen,) = provider.observe()
    assert seen.state is ObservedState.FAILED and seen.capacity_failure and "exceeded quota" in seen.detail


def test_fake_api_terminate_deletes_by_label_and_is_idempotent(fake, provider) -> None:  # type: ignore[no-untyped-def]
    r = replica("asia-southeast1", "nvidia-tesla-t4")
    provider.launch(r, SPEC)
    fake.make_ready()
    provider.terminate(r.id)
    assert fake.calls("asia-southeast1")[3:] == [
        ("DELETE", f"{APPS}/deployments"),
        ("DELETE", f"{NS}/services/{r.id}"),
    ]
    delete = next(c for c in fake.clusters["asia-southeast1"].calls if c.method == "DELETE")
    assert delete.query == {"labelSelector": f"gpuroam.dev/replica={r.id}", "propagationPolicy": "Background"}
    cluster = fake.clusters["asia-southeast1"]
    assert not cluster.items("deployments") and not cluster.items("services") and not cluster.pods()
    assert provider.observe() == []
    provider.terminate(r.id)  # gone already, and no longer known: every cluster is asked, none complains
    for region in REGIONS:
        assert ("DELETE", f"{APPS}/deployments") in fake.calls(region)


def test_fake_api_an_unreachable_cluster_keeps_its_replicas_for_the_grace_then_drops_them(  # type: ignore[no-untyped-def]
    fake, provider, clock
) -> None:
    a, b = replica("us-central1"), replica("europe-west4")
    provider.launch(a, SPEC)
    provider.launch(b, SPEC)
    fake.make_ready()
    assert {o.state for o in provider.observe()} == {ObservedState.READY}
    fake.clusters["europe-west4"].down = True
    clock.now += 30
    seen = {o.replica_id: o for o in provider.observe()}
    assert seen[b.id].state is ObservedState.READY and "unreachable" in seen[b.id].detail
    clock.now += 61  # past outage_grace_s=60 since the first failed list
    assert [o.replica_id for o in provider.observe()] == [a.id], "a region lost for longer is given up"
    provider.terminate(b.id)  # the cluster is down: logged, not raised; the orphan goes when it is back
    fake.clusters["europe-west4"].down = False
    assert {o.replica_id for o in provider.observe()} == {a.id, b.id}


def test_fake_api_a_cluster_never_reached_stops_the_pass_until_the_grace_ends(fake, provider, clock) -> None:  # type: ignore[no-untyped-def]
    fake.clusters["asia-southeast1"].down = True
    with pytest.raises(ProviderError, match="asia-southeast1"):
        provider.observe()
    clock.now += 61
    assert provider.observe() == []


def test_fake_api_launch_into_an_unreachable_cluster_is_a_capacity_error(fake, provider) -> None:  # type: ignore[no-untyped-def]
    fake.clusters["us-central1"].down = True
    with pytest.raises(CapacityError, match="unreachable") as refused:
        provider.launch(replica(), SPEC)
    assert (refused.value.region, refused.value.gpu) == ("us-central1", "nvidia-l4")
    with pytest.raises(CapacityError, match="no cluster"):
        provider.launch(replica("me-west1"), SPEC)


def test_fake_api_a_refused_apply_is_a_provider_error_not_capacity(fake, provider) -> None:  # type: ignore[no-untyped-def]
    fake.clusters["us-central1"].forbidden.add("deployments")
    with pytest.raises(ProviderError, match="HTTP 403 Forbidden: deployments is forbidden") as refused:
        provider.launch(replica(), SPEC)
    assert not isinstance(refused.value, CapacityError)


def test_fake_api_regions_from_the_catalog_or_a_known_inventory(fake) -> None:  # type: ignore[no-untyped-def]
    inventory = {"europe-west4": {"nvidia-l4": 1, "nvidia-tesla-t4": None}}
    provider = KubernetesProvider(fake.clients(), catalog=load_catalog(), inventory=inventory)
    regions = provider.regions()
    assert set(regions) == set(REGIONS) and provider.endpoint("stable-diffusion") is None
    assert regions["us-central1"]["nvidia-l4"] is None and "nvidia-tesla-a100" in regions["us-central1"]
    assert regions["europe-west4"] == {"nvidia-l4": 1, "nvidia-tesla-t4": None}
    provider.launch(replica("europe-west4"), SPEC)
    assert provider.regions()["europe-west4"]["nvidia-l4"] == 0
    with pytest.raises(CapacityError, match="inventory"):
        provider.launch(replica("europe-west4", suffix="def456"), SPEC)


def test_fake_api_the_spec_sets_gpu_count_and_the_replicas_capacity_sets_spot(fake) -> None:  # type: ignore[no-untyped-def]
    data = spec_to_dict(SPEC)
    data["resources"].update(gpu_count=2, spot="prefer")
    spec = parse_spec(data)
    provider = KubernetesProvider(fake.clients(), catalog=load_catalog())
    spot, on_demand = replica(), replica(suffix="def456")
    provider.launch(replace(spot, capacity=Capacity.SPOT), spec)
    provider.launch(on_demand, spec)
    objects = fake.clusters["us-central1"].objects
    pods = {r.id: objects[("deployments", "gpuroam", r.id)]["spec"]["template"] for r in (spot, on_demand)}
    assert pods[spot.id]["spec"]["nodeSelector"]["cloud.google.com/gke-spot"] == "true"
    assert pods[spot.id]["spec"]["terminationGracePeriodSeconds"] == 25
    assert "cloud.google.com/gke-spot" not in pods[on_demand.id]["spec"]["nodeSelector"], "its own Deployment"
    assert [pods[r.id]["metadata"]["labels"]["gpuroam.dev/capacity"] for r in (spot, on_demand)] == [
        "spot",
        "on-demand",
    ]
    assert pods[spot.id]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_fake_api_from_kubeconfig_maps_contexts_to_regions(fake, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = fake.client("us-central1").configuration.host.rsplit("/", 1)[0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": r, "cluster": {"server": f"{base}/{r}"}} for r in REGIONS],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [{"name": f"gke_{r}", "context": {"cluster": r, "user": "me"}} for r in REGIONS],
        "current-context": "gke_us-central1",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    contexts = {"us-central1": "gke_us-central1", "europe-west4": "gke_europe-west4"}
    provider = KubernetesProvider.from_kubeconfig(path, contexts, catalog=load_catalog())
    assert set(provider.regions()) == {"us-central1", "europe-west4"}
    provider.launch(replica("europe-west4"), SPEC)
    assert len(fake.calls("europe-west4")) == 3 and not fake.calls("us-central1")


def test_fake_api_a_secret_is_read_from_the_first_cluster_that_has_it(fake, provider) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ProviderError, match="kubectl -n gpuroam create secret generic sd-keys"):
        provider.read_secret("sd-keys")
    fake.add_secret("europe-west4", "sd-keys", {"alice": "alice-key-0123456789abcdef"})
    assert provider.read_secret("sd-keys") == {"alice": "alice-key-0123456789abcdef"}
    fake.clusters["europe-west4"].down = True  # its API answers 503: not "no such Secret"
    with pytest.raises(ProviderError, match="cannot read Secret sd-keys"):
        provider.read_secret("sd-keys")
