"""The global endpoint's objects on GKE: pure functions from a spec and its regions to plain dicts.

One GKE cluster per region, each registered as a fleet membership; one of them is the fleet's config
cluster, where the objects below make one anycast global load balancer over every region's pods.
Two ways, as the user picks:
- "ingress": Multi Cluster Ingress. MultiClusterService + MultiClusterIngress + BackendConfig, all in
  the config cluster; the MCS derives a Service (with network endpoint groups) in each member cluster.
- "gateway": the multi-cluster Gateway API. Each workload cluster exports the service's region-wide
  Service (ServiceExport); the fleet imports it as one ServiceImport of the same name; the config
  cluster routes a Gateway's HTTPRoute to that ServiceImport, with a HealthCheckPolicy on it.
Field names follow GKE's documentation and its published CRDs (GoogleCloudPlatform/gke-gateway-api,
kubernetes/ingress-gce); the tests check each kind against a schema of those fields.
"""

from __future__ import annotations

import json
from typing import Literal, cast, get_args

from gpuroam.providers.kubernetes.manifests import (
    DEFAULT_NAMESPACE,
    GRACE_S,
    PORT_NAME,
    SERVICE_PORT,
    Manifest,
    namespace,
    service,
)
from gpuroam.providers.kubernetes.names import dns_label, selector_labels, service_labels
from gpuroam.spec import ServiceSpec

Endpoint = Literal["ingress", "gateway"]
ENDPOINTS: tuple[str, ...] = get_args(Endpoint)

GATEWAY_CLASS = "gke-l7-global-external-managed-mc"  # global external Application LB, multi-cluster
MCS_API = "networking.gke.io/v1"  # MultiClusterService, MultiClusterIngress, HealthCheckPolicy, GCPBackendPolicy
GATEWAY_API = "gateway.networking.k8s.io/v1"
MCS_GROUP = "net.gke.io"  # ServiceExport / ServiceImport
PRE_SHARED_CERTS = "networking.gke.io/pre-shared-certs"  # names Compute Engine SSL certificates (MCI, Gateway)
CLUSTER_NAME_MAX = 40  # GKE's limit on a cluster's name

# The load balancer's health check, as gke.md gives it: HTTP on the readiness path every 5 s,
# 2 failures to mark a backend down and 2 successes to bring it back (timeout <= interval).
HEALTH_INTERVAL_S = 5
HEALTH_TIMEOUT_S = 5
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 2
# The backend service's request timeout. GCP's default, 30 s, would cut off a long generation
# (a big batch on a T4); the gateway's own retries happen before this.
REQUEST_TIMEOUT_S = 600
DRAIN_S = GRACE_S  # connection draining matches the pods' termination grace


def cluster_name(region: str) -> str:
    """The GKE cluster gpuroam makes in `region`: `gpuroam-<region>`."""
    return dns_label(f"gpuroam-{region}", CLUSTER_NAME_MAX)


def membership_name(region: str) -> str:
    """The cluster's fleet membership: named as the cluster, as GKE does by default when registering."""
    return cluster_name(region)


def cluster_link(region: str) -> str:
    """How a MultiClusterService names a member cluster: `<location>/<cluster name>` (Autopilot clusters
    are regional, so the location is the region)."""
    return f"{region}/{cluster_name(region)}"


def _metadata(spec: ServiceSpec, ns: str, **annotations: str) -> Manifest:
    notes = {"gpuroam.dev/service": spec.name, **annotations}
    return {
        "name": dns_label(spec.name),
        "namespace": dns_label(ns),
        "labels": service_labels(spec.name),
        "annotations": notes,
    }


# -- Multi Cluster Ingress (config cluster) ---------------------------------------------------------


def backend_config(spec: ServiceSpec, ns: str = DEFAULT_NAMESPACE) -> Manifest:
    """The load balancer's health check on the readiness path, its request timeout and draining."""
    health = {
        "type": "HTTP",
        "requestPath": spec.app.readiness_path,
        "port": spec.app.port,  # with NEGs the check goes straight to the pod's port
        "checkIntervalSec": HEALTH_INTERVAL_S,
        "timeoutSec": HEALTH_TIMEOUT_S,
        "healthyThreshold": HEALTHY_THRESHOLD,
        "unhealthyThreshold": UNHEALTHY_THRESHOLD,
    }
    return {
        "apiVersion": "cloud.google.com/v1",
        "kind": "BackendConfig",
        "metadata": _metadata(spec, ns),
        "spec": {
            "healthCheck": health,
            "timeoutSec": REQUEST_TIMEOUT_S,
            "connectionDraining": {"drainingTimeoutSec": DRAIN_S},
        },
    }


def multi_cluster_service(spec: ServiceSpec, regions: list[str], ns: str = DEFAULT_NAMESPACE) -> Manifest:
    """The service's pods on any GPU type in the regions' clusters, with the BackendConfig's health check."""
    config = json.dumps({"ports": {str(SERVICE_PORT): backend_config(spec, ns)["metadata"]["name"]}})
    port = {"name": PORT_NAME, "protocol": "TCP", "port": SERVICE_PORT, "targetPort": spec.app.port}
    return {
        "apiVersion": MCS_API,
        "kind": "MultiClusterService",
        "metadata": _metadata(spec, ns, **{"cloud.google.com/backend-config": config}),
        "spec": {
            "template": {"spec": {"selector": selector_labels(spec.name), "ports": [port]}},
            "clusters": [{"link": cluster_link(region)} for region in regions],
        },
    }


def gcp_certificate(spec: ServiceSpec) -> str | None:
    """The Compute Engine SSL certificate the load balancer terminates HTTPS with (`endpoint.tls.gcp_certificate`)."""
    return spec.endpoint.tls.gcp_certificate if spec.endpoint.tls else None


def multi_cluster_ingress(spec: ServiceSpec, ns: str = DEFAULT_NAMESPACE) -> Manifest:
    """The global load balancer: every request to the MultiClusterService; HTTPS too with a pre-shared certificate."""
    backend = {"serviceName": dns_label(spec.name), "servicePort": SERVICE_PORT}
    certificate = gcp_certificate(spec)
    notes = {PRE_SHARED_CERTS: certificate} if certificate else {}
    return {
        "apiVersion": MCS_API,
        "kind": "MultiClusterIngress",
        "metadata": _metadata(spec, ns, **notes),
        "spec": {"template": {"spec": {"backend": backend}}},
    }


# -- multi-cluster Gateway ---------------------------------------------------------------------------


def service_export(spec: ServiceSpec, ns: str = DEFAULT_NAMESPACE) -> Manifest:
    """Exports the region-wide Service of the same name and namespace to the fleet (workload clusters)."""
    return {"apiVersion": f"{MCS_GROUP}/v1", "kind": "ServiceExport", "metadata": _metadata(spec, ns)}


def _service_import_ref(spec: ServiceSpec) -> Manifest:
    """A policy's target: the fleet-wide ServiceImport, which the fleet names after the exported Service."""
    return {"group": MCS_GROUP, "kind": "ServiceImport", "name": dns_label(spec.name)}


def gateway(spec: ServiceSpec, ns: str = DEFAULT_NAMESPACE) -> Manifest:
    """The global external Application Load Balancer: HTTP on port 80, or with `endpoint.tls.gcp_certificate`
    HTTPS alone on 443 (keys must not cross the internet in clear), terminated with that certificate."""
    routes = {"kinds": [{"kind": "HTTPRoute"}]}
    listener: Manifest = {"name": PORT_NAME, "protocol": "HTTP", "port": 80, "allowedRoutes": routes}
    if certificate := gcp_certificate(spec):
        tls = {"mode": "Terminate", "options": {PRE_SHARED_CERTS: certificate}}
        listener = {"name": "https", "protocol": "HTTPS", "port": 443, "tls": tls, "allowedRoutes": routes}
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": _metadata(spec, ns),
        "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [listener]},
    }


def http_route(spec: ServiceSpec, ns: str = DEFAULT_NAMESPACE) -> Manifest:
    """Every path on the Gateway to the ServiceImport: the closest healthy region answers."""
    backend = {**_service_import_ref(spec), "port": SERVICE_PORT}
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": _metadata(spec, ns),
        "spec": {
            "parentRefs": [{"name": gateway(spec, ns)["metadata"]["name"]}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [backend]}],
        },
    }


def health_check_policy(spec: ServiceSpec, ns: str = DEFAULT_NAMESPACE) -> Manifest:
    """The load balancer's health check on the readiness path (multi-cluster: it targets the ServiceImport)."""
    http = {"portSpecification": "USE_FIXED_PORT", "port": spec.app.port, "requestPath": spec.app.readiness_path}
    return {
        "apiVersion": MCS_API,
        "kind": "HealthCheckPolicy",
        "metadata": _metadata(spec, ns),
        "spec": {
            "default": {
                "checkIntervalSec": HEALTH_INTERVAL_S,
                "timeoutSec": HEALTH_TIMEOUT_S,
                "healthyThreshold": HEALTHY_THRESHOLD,
                "unhealthyThreshold": UNHEALTHY_THRESHOLD,
                "config": {"type": "HTTP", "httpHealthCheck": http},
            },
            "targetRef": _service_import_ref(spec),
        },
    }


def backend_policy(spec: ServiceSpec, ns: str = DEFAULT_NAMESPACE) -> Manifest:
    """The backend service's request timeout and draining (GCP's 30 s default is too short)."""
    return {
        "apiVersion": MCS_API,
        "kind": "GCPBackendPolicy",
        "metadata": _metadata(spec, ns),
        "spec": {
            "default": {"timeoutSec": REQUEST_TIMEOUT_S, "connectionDraining": {"drainingTimeoutSec": DRAIN_S}},
            "targetRef": _service_import_ref(spec),
        },
    }


# -- what goes where ---------------------------------------------------------------------------------


def check_endpoint(endpoint: str) -> Endpoint:
    """`endpoint` if it names a kind of global endpoint; a ValueError naming the valid ones if not."""
    for kind in get_args(Endpoint):
        if endpoint == kind:
            return cast(Endpoint, kind)
    raise ValueError(f"unknown endpoint {endpoint!r}; use one of: {', '.join(ENDPOINTS)}")


def workload_cluster_manifests(
    spec: ServiceSpec, region: str, endpoint: Endpoint, ns: str = DEFAULT_NAMESPACE
) -> list[Manifest]:
    """What a region's cluster needs for the global endpoint, besides its Deployment and Service.

    Gateway: the region-wide Service and its ServiceExport. Ingress: nothing (the MCS derives its own)."""
    if check_endpoint(endpoint) == "ingress":
        return []
    return [service(spec, region, None, ns, neg=True), service_export(spec, ns)]


def config_cluster_manifests(
    spec: ServiceSpec, regions: list[str], endpoint: Endpoint, ns: str = DEFAULT_NAMESPACE
) -> list[Manifest]:
    """What the fleet's config cluster needs for the global endpoint, in the order to apply them."""
    if check_endpoint(endpoint) == "ingress":
        objects = [backend_config(spec, ns), multi_cluster_service(spec, regions, ns), multi_cluster_ingress(spec, ns)]
    else:
        objects = [gateway(spec, ns), http_route(spec, ns), health_check_policy(spec, ns), backend_policy(spec, ns)]
    return [namespace(ns), *objects]
