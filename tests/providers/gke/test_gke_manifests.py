"""The global endpoint's objects: documented fields only, and every cross-reference lands."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
from gke_schemas import SCHEMAS, validate

from gpuroam.catalog import load_catalog
from gpuroam.providers.gke import manifests as gke
from gpuroam.providers.kubernetes.manifests import SERVICE_PORT, deployment, service
from gpuroam.spec import ServiceSpec, parse_spec

REGIONS = ["us-central1", "europe-west4", "asia-southeast1"]


def make_spec(**app: Any) -> ServiceSpec:
    return parse_spec({"name": "stable-diffusion", "app": app, "resources": {"gpus": ["nvidia-l4", "nvidia-tesla-t4"]}})


@pytest.fixture
def spec() -> ServiceSpec:
    return make_spec(port=7861, readiness_path="/healthz")


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [doc["kind"] for doc in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {doc["kind"]: doc for doc in objects}


@pytest.mark.parametrize("endpoint", gke.ENDPOINTS)
def test_every_object_fits_its_schema(spec: ServiceSpec, endpoint: gke.Endpoint) -> None:
    objects = gke.config_cluster_manifests(spec, REGIONS, endpoint)
    for region in REGIONS:
        objects += gke.workload_cluster_manifests(spec, region, endpoint)
    for doc in objects:
        validate(doc)


def test_the_schemas_reject_an_undocumented_field(spec: ServiceSpec) -> None:
    """The schemas bite: a typo in any kind's spec fails (so passing above means something)."""
    objects = gke.config_cluster_manifests(spec, REGIONS, "ingress") + gke.config_cluster_manifests(
        spec, REGIONS, "gateway"
    )
    for doc in objects:
        if (doc["apiVersion"], doc["kind"]) in SCHEMAS and "spec" in doc:
            bad = copy.deepcopy(doc)
            bad["spec"]["tiemoutSec"] = 5
            with pytest.raises(jsonschema.ValidationError):
                validate(bad)


def test_ingress_objects_reference_each_other(spec: ServiceSpec) -> None:
    kinds = by_kind(gke.config_cluster_manifests(spec, REGIONS, "ingress"))
    assert set(kinds) == {"Namespace", "BackendConfig", "MultiClusterService", "MultiClusterIngress"}
    mcs, mci, config = kinds["MultiClusterService"], kinds["MultiClusterIngress"], kinds["BackendConfig"]
    namespaces = {doc["metadata"]["namespace"] for kind, doc in kinds.items() if kind != "Namespace"}
    assert namespaces == {kinds["Namespace"]["metadata"]["name"]}
    # MCI -> MCS, by name and port.
    backend = mci["spec"]["template"]["spec"]["backend"]
    ports = mcs["spec"]["template"]["spec"]["ports"]
    assert backend["serviceName"] == mcs["metadata"]["name"]
    assert backend["servicePort"] in [port["port"] for port in ports]
    # MCS -> BackendConfig, by the annotation, for a port the MCS has.
    annotation = json.loads(mcs["metadata"]["annotations"]["cloud.google.com/backend-config"])
    assert list(annotation["ports"].values()) == [config["metadata"]["name"]]
    assert [int(port) for port in annotation["ports"]] == [port["port"] for port in ports]
    # The MCS targets the app's port; the health check probes it on the readiness path.
    assert ports == [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT, "targetPort": 7861}]
    health = config["spec"]["healthCheck"]
    assert (health["requestPath"], health["port"], health["type"]) == ("/healthz", 7861, "HTTP")
    assert (health["checkIntervalSec"], health["healthyThreshold"], health["unhealthyThreshold"]) == (5, 2, 2)
    assert health["timeoutSec"] <= health["checkIntervalSec"]


def test_mcs_lists_one_member_cluster_per_region_and_selects_pods_on_every_gpu(spec: ServiceSpec) -> None:
    mcs = gke.multi_cluster_service(spec, REGIONS)
    links = [cluster["link"] for cluster in mcs["spec"]["clusters"]]
    assert links == [f"{region}/{gke.membership_name(region)}" for region in REGIONS]
    assert links[0] == "us-central1/gpuroam-us-central1"
    selector = mcs["spec"]["template"]["spec"]["selector"]
    for region in REGIONS:
        for gpu in ("nvidia-l4", "nvidia-tesla-t4"):
            pod_labels = deployment(spec, region, gpu)["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= pod_labels.items()
    other = parse_spec({"name": "other-service", "resources": {"gpus": ["nvidia-l4"]}})
    other_labels = deployment(other, REGIONS[0], "nvidia-l4")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= other_labels.items()


def test_gateway_objects_reference_each_other(spec: ServiceSpec) -> None:
    kinds = by_kind(gke.config_cluster_manifests(spec, REGIONS, "gateway"))
    assert set(kinds) == {"Namespace", "Gateway", "HTTPRoute", "HealthCheckPolicy", "GCPBackendPolicy"}
    gw, route, health, backend = (kinds[k] for k in ("Gateway", "HTTPRoute", "HealthCheckPolicy", "GCPBackendPolicy"))
    assert gw["spec"]["gatewayClassName"] == "gke-l7-global-external-managed-mc"
    assert [ref["name"] for ref in route["spec"]["parentRefs"]] == [gw["metadata"]["name"]]
    assert route["metadata"]["namespace"] == gw["metadata"]["namespace"]
    (rule,) = route["spec"]["rules"]
    (ref,) = rule["backendRefs"]
    assert (ref["group"], ref["kind"], ref["port"]) == ("net.gke.io", "ServiceImport", SERVICE_PORT)
    # The ServiceImport is the fleet's import of each region's ServiceExport: same name, same namespace.
    for region in REGIONS:
        exported, export = gke.workload_cluster_manifests(spec, region, "gateway")
        assert export["kind"] == "ServiceExport" and exported["kind"] == "Service"
        assert export["metadata"]["name"] == exported["metadata"]["name"] == ref["name"]
        assert export["metadata"]["namespace"] == exported["metadata"]["namespace"] == route["metadata"]["namespace"]
        assert SERVICE_PORT in [port["port"] for port in exported["spec"]["ports"]]
    # Both policies target that ServiceImport, in its namespace.
    for policy in (health, backend):
        assert policy["spec"]["targetRef"] == {"group": "net.gke.io", "kind": "ServiceImport", "name": ref["name"]}
        assert policy["metadata"]["namespace"] == route["metadata"]["namespace"]
    config = health["spec"]["default"]
    http = config["config"]["httpHealthCheck"]
    assert (http["requestPath"], http["port"]) == ("/healthz", 7861)
    assert (config["checkIntervalSec"], config["healthyThreshold"], config["unhealthyThreshold"]) == (5, 2, 2)
    assert backend["spec"]["default"]["timeoutSec"] > 30  # GCP's default would cut off long generations


def test_exported_service_is_the_same_in_every_region_and_selects_every_gpu(spec: ServiceSpec) -> None:
    """One name across regions, so the fleet imports one ServiceImport, whatever GPU each region runs."""
    exported = [gke.workload_cluster_manifests(spec, region, "gateway")[0] for region in REGIONS]
    assert len({doc["metadata"]["name"] for doc in exported}) == 1
    assert {json.dumps(doc["spec"], sort_keys=True) for doc in exported} == {
        json.dumps(exported[0]["spec"], sort_keys=True)
    }
    for gpu in ("nvidia-l4", "nvidia-tesla-t4"):
        pod_labels = deployment(spec, REGIONS[0], gpu)["spec"]["template"]["metadata"]["labels"]
        assert exported[0]["spec"]["selector"].items() <= pod_labels.items()
        assert service(spec, REGIONS[0], gpu)["metadata"]["name"] != exported[0]["metadata"]["name"]


def test_ingress_needs_nothing_extra_in_workload_clusters(spec: ServiceSpec) -> None:
    assert gke.workload_cluster_manifests(spec, "us-central1", "ingress") == []


def test_an_unknown_endpoint_is_refused_with_the_valid_ones(spec: ServiceSpec) -> None:
    with pytest.raises(ValueError, match="unknown endpoint 'mci'; use one of: ingress, gateway"):
        gke.config_cluster_manifests(spec, REGIONS, "mci")  # type: ignore[arg-type]


def test_cluster_and_membership_names_are_valid_for_every_catalog_region() -> None:
    names = {gke.cluster_name(region) for region in load_catalog().regions}
    assert len(names) == len(load_catalog().regions)
    for region in load_catalog().regions:
        name = gke.cluster_name(region)
        assert name == gke.membership_name(region) == f"gpuroam-{region}"
        assert len(name) <= 40 and name[0].isalpha() and name[-1].isalnum()
    long = "northamerica-northeast1-and-then-some-more"
    assert len(gke.cluster_name(long)) <= 40 and gke.cluster_name(long) != gke.cluster_name(long + "x")


@pytest.mark.parametrize("endpoint", gke.ENDPOINTS)
def test_a_pre_shared_certificate_makes_the_load_balancer_terminate_https(endpoint: gke.Endpoint) -> None:
    spec = parse_spec(
        {
            "name": "stable-diffusion",
            "resources": {"gpus": ["nvidia-l4"]},
            "endpoint": {"tls": {"gcp_certificate": "sd-example-com"}},
        }
    )
    objects = by_kind(gke.config_cluster_manifests(spec, REGIONS, endpoint))
    for doc in objects.values():
        validate(doc)
    if endpoint == "ingress":
        notes = objects["MultiClusterIngress"]["metadata"]["annotations"]
        assert notes["networking.gke.io/pre-shared-certs"] == "sd-example-com"
    else:
        (listener,) = objects["Gateway"]["spec"]["listeners"]
        assert (listener["protocol"], listener["port"]) == ("HTTPS", 443), "HTTPS alone: keys never cross in clear"
        assert listener["tls"] == {
            "mode": "Terminate",
            "options": {"networking.gke.io/pre-shared-certs": "sd-example-com"},
        }
