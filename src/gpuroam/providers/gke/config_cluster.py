"""Server-side apply of the global endpoint's objects, and reading the load balancer's address back.

The kubernetes provider applies only Namespaces, Deployments and Services; the endpoint's kinds are
GKE's custom resources (MultiClusterIngress, Gateway, ServiceExport, ...), applied here through
CustomObjectsApi with the same field manager, forced, so a re-apply is a no-op and converges.
Tested only against a fake API server, never against a real GKE cluster here.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from gpuroam.providers.gke.manifests import Endpoint, gateway, multi_cluster_ingress
from gpuroam.providers.kubernetes.api import APPLY_PATCH, FIELD_MANAGER, response_json
from gpuroam.providers.kubernetes.manifests import Manifest
from gpuroam.spec import ServiceSpec

# The plural resource names of the kinds gke/manifests.py builds (from their CRDs).
PLURALS = {
    "BackendConfig": "backendconfigs",
    "MultiClusterService": "multiclusterservices",
    "MultiClusterIngress": "multiclusteringresses",
    "Gateway": "gateways",
    "HTTPRoute": "httproutes",
    "HealthCheckPolicy": "healthcheckpolicies",
    "GCPBackendPolicy": "gcpbackendpolicies",
    "ServiceExport": "serviceexports",
}


def apply(api: ApiClient, manifest: Manifest, timeout_s: float) -> None:
    """Create or update `manifest` to exactly this, owned by gpuroam. ApiException 404 when its CRD is
    not installed yet (the fleet feature installs MCI's a few minutes after it is enabled)."""
    options: dict[str, Any] = {
        "field_manager": FIELD_MANAGER,
        "force": True,
        "_content_type": APPLY_PATCH,
        "_preload_content": False,
        "_request_timeout": timeout_s,
    }
    kind, meta = manifest["kind"], manifest["metadata"]
    if kind == "Namespace":
        response_json(CoreV1Api(api).patch_namespace(meta["name"], manifest, **options))
    elif kind == "Service":
        response_json(CoreV1Api(api).patch_namespaced_service(meta["name"], meta["namespace"], manifest, **options))
    else:
        group, version = manifest["apiVersion"].split("/", 1)
        custom = CustomObjectsApi(api)
        response_json(
            custom.patch_namespaced_custom_object(
                group, version, meta["namespace"], PLURALS[kind], meta["name"], manifest, **options
            )
        )


def read_address(api: ApiClient, spec: ServiceSpec, endpoint: Endpoint, ns: str, timeout_s: float) -> str | None:
    """The load balancer's IP: MultiClusterIngress `status.VIP`, or the Gateway's `status.addresses[0].value`.

    None while it is not assigned yet (up to about 10 minutes) or the object is not there."""
    balancer = multi_cluster_ingress(spec, ns) if endpoint == "ingress" else gateway(spec, ns)
    group, version = balancer["apiVersion"].split("/", 1)
    meta = balancer["metadata"]
    try:
        response = CustomObjectsApi(api).get_namespaced_custom_object(
            group,
            version,
            meta["namespace"],
            PLURALS[balancer["kind"]],
            meta["name"],
            _preload_content=False,
            _request_timeout=timeout_s,
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    status = response_json(response).get("status") or {}
    if endpoint == "ingress":
        return status.get("VIP") or None
    addresses = status.get("addresses") or []
    return (addresses[0].get("value") or None) if addresses else None
