"""GkeProvider against fakes: GKE's ClusterManager and Hub (real request/response types and exceptions),
Google credentials, and the fake Kubernetes API server (with GKE's custom resources) behind the real
`kubernetes` client. Never against real GCP.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import google.auth
import pytest
import yaml
from fake_gke import Clock, FakeClusterManager, FakeCredentials, FakeGkeHub, FakeGkeKubernetes, rest_stub
from gke_schemas import validate
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import container_v1, gkehub_v1

from gpuroam.catalog import load_catalog
from gpuroam.controller.reconciler import Reconciler
from gpuroam.controller.store import Store
from gpuroam.providers.base import CapacityError, ObservedState, ProviderError
from gpuroam.providers.gke.clusters import ClusterUnavailable, Fleet
from gpuroam.providers.gke.credentials import BearerToken
from gpuroam.providers.gke.provider import GkeProvider
from gpuroam.records import Capacity, Replica, ReplicaState
from gpuroam.spec import load_spec, parse_spec, spec_to_dict

PROJECT = "gpuroam-test"
REGIONS = ["us-central1", "europe-west4", "asia-southeast1"]
SPEC = load_spec("examples/stable-diffusion.yaml")
LINK = "//container.googleapis.com/projects/gpuroam-test/locations/{}/clusters/gpuroam-{}"
MEMBERSHIP = "projects/gpuroam-test/locations/global/memberships/gpuroam-{}"


def replica(region: str, suffix: str = "abc123") -> Replica:
    rid = f"stable-diffusion-{region}-l4-{suffix}"
    return Replica(rid, "stable-diffusion", region, "nvidia-l4", ReplicaState.PROVISIONING, 0.0, 0.0)


@dataclass
class Gcp:
    clock: Clock
    clusters: FakeClusterManager
    hub: FakeGkeHub
    credentials: FakeCredentials
    kube: FakeGkeKubernetes

    def fleet(self, **options: Any) -> Fleet:
        options = {"poll_s": 10.0, "clock": self.clock, "sleep": self.clock.sleep, **options}
        return Fleet(PROJECT, self.clusters, self.hub, **options)

    def provider(self, **options: Any) -> GkeProvider:
        fleet = {"poll_s": 10.0, "clock": self.clock, "sleep": self.clock.sleep, **options.pop("fleet_options", {})}
        defaults: dict[str, Any] = {
            "cluster_manager": self.clusters,
            "hub": self.hub,
            "credentials": BearerToken(self.credentials, now=self.clock.utc),
            "api_host": lambda region, cluster: self.kube.url(region),
            "catalog": load_catalog(),
            "fleet_options": fleet,
            "clock": self.clock,
        }
        return GkeProvider(PROJECT, REGIONS, **{**defaults, **options})

    def creates(self) -> list[container_v1.CreateClusterRequest]:
        return self.clusters.calls(container_v1.CreateClusterRequest)

    def applies(self, region: str, plural: str) -> int:
        return sum(1 for method, path in self.kube.calls(region) if method == "PATCH" and f"/{plural}/" in path)


@pytest.fixture
def gcp() -> Iterator[Gcp]:
    clock = Clock()
    with FakeGkeKubernetes(REGIONS) as kube:
        yield Gcp(clock, FakeClusterManager(), FakeGkeHub(), FakeCredentials(clock), kube)


@pytest.fixture
def provider(gcp: Gcp) -> Iterator[GkeProvider]:
    made = gcp.provider()
    yield made
    made.close()


def mcs_regions(gcp: Gcp, region: str = "us-central1") -> list[str]:
    (mcs,) = gcp.kube.objects(region, "multiclusterservices")
    return [c["link"].split("/")[0] for c in mcs["spec"]["clusters"]]


# -- clusters and the fleet --------------------------------------------------------------------------------


def test_fake_api_ensure_cluster_creates_an_autopilot_cluster_once_and_polls_its_operation(
    gcp: Gcp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gpuroam.providers.gke")
    fleet = gcp.fleet(progress_every_s=10.0)
    cluster = fleet.ensure_cluster("us-central1")
    (create,) = gcp.creates()
    assert create.parent == "projects/gpuroam-test/locations/us-central1"
    assert create.cluster.name == "gpuroam-us-central1"
    assert create.cluster.autopilot.enabled
    assert create.cluster.release_channel.channel == container_v1.ReleaseChannel.Channel.REGULAR
    assert create.cluster.workload_identity_config.workload_pool == "gpuroam-test.svc.id.goog"
    assert not create.cluster.node_pools and not create.cluster.initial_node_count, "Autopilot runs the nodes"
    polls = gcp.clusters.calls(container_v1.GetOperationRequest)
    assert [p.name for p in polls] == ["projects/gpuroam-test/locations/us-central1/operations/operation-1"] * 2
    assert cluster.status == container_v1.Cluster.Status.RUNNING and cluster.endpoint
    assert cluster.master_auth.cluster_ca_certificate
    text = caplog.text
    assert "creating GKE Autopilot cluster gpuroam-us-central1" in text and "RUNNING for 10 s" in text
    assert "created in 20 s" in text

    before = len(gcp.clusters.requests)
    assert fleet.ensure_cluster("us-central1").endpoint == cluster.endpoint
    assert [type(r) for r in gcp.clusters.requests[before:]] == [container_v1.GetClusterRequest]


def test_fake_api_cluster_creation_times_out_and_the_next_ensure_waits_for_the_same_cluster(gcp: Gcp) -> None:
    gcp.clusters.polls = 10**6  # the operation never finishes
    fleet = gcp.fleet(create_timeout_s=60.0)
    with pytest.raises(ClusterUnavailable, match="did not finish in 60 s"):
        fleet.ensure_cluster("europe-west4")
    assert len(gcp.clusters.calls(container_v1.GetOperationRequest)) == 6
    # GKE carries on; another ensure finds it PROVISIONING and polls the cluster, creating nothing.
    name = "projects/gpuroam-test/locations/europe-west4/clusters/gpuroam-europe-west4"
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            gcp.clusters.finish(name)

    cluster = gcp.fleet(sleep=sleep).ensure_cluster("europe-west4")
    assert cluster.status == container_v1.Cluster.Status.RUNNING and len(sleeps) == 3
    assert len(gcp.creates()) == 1


def test_fake_api_create_cluster_already_exists_is_waited_for_not_an_error(gcp: Gcp) -> None:
    class Racing(FakeClusterManager):
        def create_cluster(self, **request: Any) -> container_v1.Operation:
            super().create_cluster(**request)  # another controller's create lands first
            raise gexc.AlreadyExists("Already exists: projects/gpuroam-test/locations/us-central1/clusters/...")

    racing = Racing()
    name = "projects/gpuroam-test/locations/us-central1/clusters/gpuroam-us-central1"
    fleet = Fleet(PROJECT, racing, gcp.hub, poll_s=10.0, clock=gcp.clock, sleep=lambda s: racing.finish(name))
    assert fleet.ensure_cluster("us-central1").status == container_v1.Cluster.Status.RUNNING
    assert not racing.calls(container_v1.GetOperationRequest)


def test_fake_api_failed_creation_reports_quota_as_capacity(gcp: Gcp) -> None:
    gcp.clusters.fail["create_cluster"] = gexc.ResourceExhausted("Insufficient regional quota: CPUS")
    with pytest.raises(ClusterUnavailable, match="quota") as caught:
        gcp.fleet().ensure_cluster("asia-southeast1")
    assert caught.value.capacity
    gcp.clusters.fail["get_cluster"] = gexc.PermissionDenied("container.clusters.get denied")
    with pytest.raises(ClusterUnavailable, match="denied") as caught:
        gcp.fleet().ensure_cluster("asia-southeast1")
    assert not caught.value.capacity


def test_fake_api_fleet_memberships_and_the_multiclusteringress_feature(gcp: Gcp) -> None:
    fleet = gcp.fleet()
    for region in ("us-central1", "europe-west4"):
        fleet.ensure_membership(region)
        fleet.ensure_membership(region)  # idempotent
    creates = gcp.hub.calls(gkehub_v1.CreateMembershipRequest)
    assert [(c.parent, c.membership_id) for c in creates] == [
        ("projects/gpuroam-test/locations/global", "gpuroam-us-central1"),
        ("projects/gpuroam-test/locations/global", "gpuroam-europe-west4"),
    ]
    assert creates[0].resource.endpoint.gke_cluster.resource_link == LINK.format("us-central1", "us-central1")
    assert creates[0].resource.authority.issuer == (
        "https://container.googleapis.com/v1/projects/gpuroam-test/locations/us-central1/clusters/gpuroam-us-central1"
    )
    assert set(gcp.hub.memberships) == {MEMBERSHIP.format("us-central1"), MEMBERSHIP.format("europe-west4")}

    fleet.ensure_features("us-central1")
    fleet.ensure_features("us-central1")  # idempotent
    (feature,) = gcp.hub.calls(gkehub_v1.CreateFeatureRequest)
    assert (feature.parent, feature.feature_id) == ("projects/gpuroam-test/locations/global", "multiclusteringress")
    assert feature.resource.spec.multiclusteringress.config_membership == MEMBERSHIP.format("us-central1")
    assert not gcp.hub.calls(gkehub_v1.UpdateFeatureRequest)

    fleet.ensure_features("europe-west4")  # the config cluster moves: an update with its field mask
    (update,) = gcp.hub.calls(gkehub_v1.UpdateFeatureRequest)
    assert update.name == "projects/gpuroam-test/locations/global/features/multiclusteringress"
    assert list(update.update_mask.paths) == ["spec.multiclusteringress.config_membership"]
    feature_now = gcp.hub.features[update.name]
    assert feature_now.spec.multiclusteringress.config_membership == MEMBERSHIP.format("europe-west4")

    gcp.fleet(gateway_api=True).ensure_features("europe-west4")  # the Gateway also needs service discovery
    ids = [c.feature_id for c in gcp.hub.calls(gkehub_v1.CreateFeatureRequest)]
    assert ids == ["multiclusteringress", "multiclusterservicediscovery"]


def test_fake_api_bearer_token_is_refreshed_before_it_expires(gcp: Gcp, provider: GkeProvider) -> None:
    token = BearerToken(gcp.credentials, now=gcp.clock.utc)
    assert token.value() == "ya29.token-1"
    gcp.clock.now += 50 * 60  # 10 minutes left: kept
    assert token.value() == "ya29.token-1" and gcp.credentials.refreshes == 1
    gcp.clock.now += 6 * 60  # 4 minutes left: refreshed
    assert token.value() == "ya29.token-2" and gcp.credentials.refreshes == 2

    # Through the kubernetes client: every request carries the current token.
    provider.ensure_clusters(["us-central1"], timeout_s=10)
    provider.launch(replica("us-central1"), SPEC)
    first = gcp.kube.authorizations[-1]
    assert first and first.startswith("Bearer ya29.token-")
    gcp.clock.now += 56 * 60
    provider.observe()
    assert gcp.kube.authorizations[-1] == f"Bearer ya29.token-{gcp.credentials.refreshes}" != first


# -- launching, the global endpoint ----------------------------------------------------------------------


def test_fake_api_launch_into_a_region_whose_cluster_is_still_creating(gcp: Gcp) -> None:
    provider = gcp.provider(launch_wait_s=0.05)
    gcp.clusters.gate.clear()  # creation stays in progress
    assert provider.observe() == []
    for _ in range(2):
        with pytest.raises(CapacityError, match="cluster creating: gpuroam-us-central1 is being prepared"):
            provider.launch(replica("us-central1"), SPEC)
    assert len(gcp.creates()) == 1, "the second launch waits on the same creation"
    assert "stable-diffusion" not in str(gcp.kube.calls("us-central1"))

    gcp.clusters.gate.set()
    provider.ensure_clusters(["us-central1"], timeout_s=10)
    handle = provider.launch(replica("us-central1"), SPEC)
    assert handle.details["gke_cluster"] == "projects/gpuroam-test/locations/us-central1/clusters/gpuroam-us-central1"
    assert {d["metadata"]["name"] for d in gcp.kube.clusters["us-central1"].items("deployments")} == {
        replica("us-central1").id
    }
    assert MEMBERSHIP.format("us-central1") in gcp.hub.memberships
    assert gcp.hub.features, "the config cluster's region turned the ingress feature on"
    provider.close()


def test_fake_api_a_failed_cluster_is_a_capacity_signal_retried_later(gcp: Gcp) -> None:
    provider = gcp.provider(retry_after_s=60.0)
    gcp.clusters.fail["create_cluster"] = gexc.PermissionDenied("container.clusters.create denied")
    for _ in range(2):  # the second within retry_after_s: no new attempt
        with pytest.raises(CapacityError, match="no usable cluster: cannot create cluster .*denied"):
            provider.launch(replica("asia-southeast1"), SPEC)
    assert len(gcp.clusters.calls(container_v1.GetClusterRequest)) == 1
    gcp.clock.now += 61
    provider.launch(replica("asia-southeast1"), SPEC)  # retried: created, and the replica launched
    assert len(gcp.creates()) == 2, "the refused create, then the one that worked"
    provider.close()


def test_fake_api_config_objects_are_applied_to_the_config_cluster_and_reapplied_on_expand(
    gcp: Gcp, provider: GkeProvider
) -> None:
    provider.ensure_clusters(timeout_s=10)
    provider.launch(replica("us-central1"), SPEC)
    kinds = {"backendconfigs", "multiclusterservices", "multiclusteringresses"}
    for plural in kinds:
        (obj,) = gcp.kube.objects("us-central1", plural)
        validate({key: value for key, value in obj.items() if key != "status"})  # as applied
    assert mcs_regions(gcp) == ["us-central1"]
    assert not any(gcp.kube.objects(r, p) for r in REGIONS[1:] for p in kinds), "config objects go to one cluster"
    provider.observe()
    provider.observe()
    assert gcp.applies("us-central1", "multiclusterservices") == 1, "the same regions: nothing re-applied"

    provider.launch(replica("europe-west4"), SPEC)  # expand: the MCS now names both clusters
    assert mcs_regions(gcp) == ["us-central1", "europe-west4"]
    assert gcp.applies("us-central1", "multiclusterservices") == 2
    (mcs,) = gcp.kube.objects("us-central1", "multiclusterservices")
    assert mcs["spec"]["clusters"][1] == {"link": "europe-west4/gpuroam-europe-west4"}

    provider.terminate(replica("europe-west4").id)
    provider.observe()  # the region no longer serves: re-applied without it
    assert mcs_regions(gcp) == ["us-central1"]
    assert not gcp.kube.clusters["europe-west4"].items("deployments")


def test_fake_api_endpoint_is_none_until_the_load_balancer_has_a_vip(gcp: Gcp, provider: GkeProvider) -> None:
    assert provider.endpoint("stable-diffusion") is None, "no config cluster yet"
    provider.ensure_clusters(["us-central1"], timeout_s=10)
    provider.launch(replica("us-central1"), SPEC)
    gcp.clock.now += 11
    assert provider.endpoint("stable-diffusion") is None, "the MCI has no VIP yet"
    gcp.kube.set_status("us-central1", "multiclusteringresses", {"VIP": "34.117.10.20"})
    assert provider.endpoint("stable-diffusion") is None, "read at most every endpoint_poll_s"
    gcp.clock.now += 11
    assert provider.endpoint("stable-diffusion") == "http://34.117.10.20"
    gcp.kube.clusters["us-central1"].down = True
    assert provider.endpoint("stable-diffusion") == "http://34.117.10.20", "kept once found"


def test_fake_api_gateway_endpoint_exports_from_each_region_and_reads_the_gateway_address(gcp: Gcp) -> None:
    provider = gcp.provider(endpoint="gateway")
    provider.ensure_clusters(["us-central1", "europe-west4"], timeout_s=10)
    assert all(c.cluster.network_config.gateway_api_config.channel == 4 for c in gcp.creates())  # STANDARD
    ids = [c.feature_id for c in gcp.hub.calls(gkehub_v1.CreateFeatureRequest)]
    assert ids == ["multiclusteringress", "multiclusterservicediscovery"]
    provider.launch(replica("us-central1"), SPEC)
    provider.launch(replica("europe-west4"), SPEC)
    for plural in ("gateways", "httproutes", "healthcheckpolicies", "gcpbackendpolicies"):
        (obj,) = gcp.kube.objects("us-central1", plural)
        validate({key: value for key, value in obj.items() if key != "status"})  # as applied
    for region in ("us-central1", "europe-west4"):
        (export,) = gcp.kube.objects(region, "serviceexports")
        assert export["metadata"]["name"] == "stable-diffusion"
        services = {s["metadata"]["name"] for s in gcp.kube.clusters[region].items("services")}
        assert "stable-diffusion" in services, "the region-wide Service the export names"
    assert gcp.applies("us-central1", "httproutes") == 1, "the Gateway set names no regions: unchanged, not re-applied"
    gcp.clock.now += 11
    gcp.kube.set_status("us-central1", "gateways", {"addresses": [{"type": "IPAddress", "value": "34.98.1.2"}]})
    assert provider.endpoint("stable-diffusion") == "http://34.98.1.2"
    provider.close()


def test_fake_api_config_objects_wait_for_the_fleet_to_install_their_crds(
    gcp: Gcp, provider: GkeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.ensure_clusters(["us-central1"], timeout_s=10)
    installed = set(gcp.kube.custom["us-central1"].crds)
    gcp.kube.custom["us-central1"].crds.clear()
    provider.launch(replica("us-central1"), SPEC)  # the replica is up; its endpoint comes later
    assert "CRDs are not installed yet" in caplog.text
    assert not gcp.kube.objects("us-central1", "multiclusteringresses")
    gcp.kube.custom["us-central1"].crds |= installed
    provider.observe()
    assert mcs_regions(gcp) == ["us-central1"]


def test_fake_api_a_restarted_provider_finds_its_clusters_and_replicas(gcp: Gcp, provider: GkeProvider) -> None:
    provider.ensure_clusters(["us-central1", "europe-west4"], timeout_s=10)
    provider.launch(replica("us-central1"), SPEC)
    provider.launch(replica("europe-west4"), SPEC)
    gcp.kube.make_ready()
    creates = len(gcp.creates())

    restarted = gcp.provider()
    seen = {(o.replica_id, o.region, o.state.value) for o in restarted.observe()}
    assert seen == {(replica(r).id, r, "ready") for r in ("us-central1", "europe-west4")}
    assert len(gcp.creates()) == creates and len(gcp.hub.calls(gkehub_v1.CreateMembershipRequest)) == 2
    restarted.terminate(replica("europe-west4").id)
    assert not gcp.kube.clusters["europe-west4"].items("deployments")
    restarted.close()


def test_fake_api_a_spot_preemption_notice_in_a_region_reaches_observe(gcp: Gcp) -> None:
    """The region's KubernetesProvider reads the notice (its own tests say how); gke reports it unchanged."""
    data = spec_to_dict(SPEC)
    data["resources"]["spot"] = "only"
    provider = gcp.provider(kubernetes_options={"wall_clock": lambda: 1_900_000_000.0})
    provider.ensure_clusters(["us-central1"], timeout_s=10)
    spot = replace(replica("us-central1"), capacity=Capacity.SPOT)
    provider.launch(spot, parse_spec(data))
    gcp.kube.make_ready()
    assert [o.reclaim_at for o in provider.observe()] == [None]
    (pod,) = gcp.kube.pods_of("us-central1", spot.id)
    gcp.kube.taint_node("us-central1", pod["spec"]["nodeName"], "cloud.google.com/impending-node-termination")
    (seen,) = provider.observe()
    assert (seen.replica_id, seen.state, seen.reclaim_at) == (spot.id, ObservedState.READY, 1_900_000_025.0)
    provider.close()


def test_fake_api_from_environment_builds_the_real_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    scopes_seen: list[Any] = []

    def default(scopes: list[str] | None = None, **_: Any) -> tuple[Any, str]:
        scopes_seen.append(scopes)
        return AnonymousCredentials(), "project-from-adc"

    monkeypatch.setattr(google.auth, "default", default)
    provider = GkeProvider.from_environment(None, ["us-central1"], endpoint="gateway")
    assert scopes_seen == [["https://www.googleapis.com/auth/cloud-platform"]]
    assert isinstance(provider.fleet.cluster_manager, container_v1.ClusterManagerClient)
    assert isinstance(provider.fleet.hub, gkehub_v1.GkeHubClient)
    assert provider.project == "project-from-adc" and provider.endpoint_kind == "gateway"
    provider.close()


def test_fake_api_the_real_clients_send_the_expected_http_requests() -> None:
    """The real google clients over REST, their HTTP session stubbed: the URLs and bodies on the wire."""
    sent: list[Any] = []
    with mock.patch("google.auth.transport.requests.AuthorizedSession.request", rest_stub(sent)):
        creds = AnonymousCredentials()
        manager = container_v1.ClusterManagerClient(credentials=creds, transport="rest")
        hub = gkehub_v1.GkeHubClient(credentials=creds, transport="rest")
        fleet = Fleet(PROJECT, manager, hub, poll_s=0.0, sleep=lambda _: None)
        assert fleet.ensure_cluster("us-central1").endpoint == "203.0.113.5"
        fleet.ensure_membership("us-central1")
        fleet.ensure_features("us-central1")
    calls = [(method, url.removeprefix("https://")) for method, url, _, _ in sent]
    cluster_url = "container.googleapis.com/v1/projects/gpuroam-test/locations/us-central1/clusters"
    assert calls == [
        ("GET", f"{cluster_url}/gpuroam-us-central1"),
        ("POST", cluster_url),
        ("GET", "container.googleapis.com/v1/projects/gpuroam-test/locations/us-central1/operations/operation-1"),
        ("GET", f"{cluster_url}/gpuroam-us-central1"),
        ("GET", "gkehub.googleapis.com/v1/projects/gpuroam-test/locations/global/memberships/gpuroam-us-central1"),
        ("POST", "gkehub.googleapis.com/v1/projects/gpuroam-test/locations/global/memberships"),
        ("GET", "gkehub.googleapis.com/v1/projects/gpuroam-test/locations/global/features/multiclusteringress"),
        ("POST", "gkehub.googleapis.com/v1/projects/gpuroam-test/locations/global/features"),
    ]
    cluster = sent[1][3]["cluster"]
    assert cluster["autopilot"] == {"enabled": True} and cluster["releaseChannel"] == {"channel": 2}  # REGULAR
    assert sent[5][2]["membershipId"] == "gpuroam-us-central1"
    assert sent[5][3]["endpoint"] == {"gkeCluster": {"resourceLink": LINK.format("us-central1", "us-central1")}}
    assert sent[7][2]["featureId"] == "multiclusteringress"
    assert sent[7][3]["spec"] == {"multiclusteringress": {"configMembership": MEMBERSHIP.format("us-central1")}}


# -- the reconciler on top ----------------------------------------------------------------------------------


def test_fake_api_reconciler_places_replicas_once_their_clusters_are_created(gcp: Gcp, tmp_path: Path) -> None:
    data = yaml.safe_load(Path("examples/stable-diffusion.yaml").read_text())
    data["placement"].update(provision_timeout_s=90, block_ttl_s=3, block_max_s=20, move_back_after_s=2)
    spec = parse_spec(data)
    store = Store.open(f"sqlite:///{tmp_path / 'state.db'}")
    store.put_service(spec.name, spec_to_dict(spec), gcp.clock.now)
    provider = gcp.provider(launch_wait_s=0.05, specs=lambda name: spec if name == spec.name else None)
    reconciler = Reconciler(store, provider, load_catalog(), gcp.clock)
    gcp.clusters.gate.clear()
    reconciler.reconcile()  # every launch meets a cluster being created: blocked, nothing placed
    assert all(r.state is ReplicaState.FAILED for r in store.list_replicas())
    assert any("cluster creating" in e.message for e in store.list_events())

    gcp.clusters.gate.set()
    provider.ensure_clusters(timeout_s=10)
    for _ in range(30):
        gcp.clock.now += 2
        reconciler.reconcile()
        gcp.kube.make_ready()
    ready = {(r.region, r.gpu) for r in store.list_replicas() if r.state is ReplicaState.READY}
    assert ready == {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
    assert sorted(mcs_regions(gcp)) == ["europe-west4", "us-central1"]
    provider.close()
    store.close()


def test_fake_api_a_secret_is_read_from_the_config_cluster(gcp: Gcp, provider: GkeProvider) -> None:
    with pytest.raises(ProviderError, match="not ready yet"):
        provider.read_secret("sd-keys")
    provider.ensure_clusters(["us-central1"], timeout_s=10)
    provider.launch(replica("us-central1"), SPEC)
    with pytest.raises(ProviderError, match="no Secret sd-keys in namespace gpuroam of the config cluster"):
        provider.read_secret("sd-keys")
    gcp.kube.add_secret("us-central1", "sd-keys", {"alice": "alice-key-0123456789abcdef"})
    assert provider.read_secret("sd-keys") == {"alice": "alice-key-0123456789abcdef"}
