"""Schemas of the documented fields of the custom kinds gpuroam writes, and one validator for every kind.

Built-in kinds (Namespace, Deployment, Service) are checked by kubernetes-validate against the
upstream Kubernetes OpenAPI schemas it bundles (strict: unknown fields fail). kubernetes-validate
ships no GKE CRDs and no Gateway API kinds, so each gets a small JSON schema here that lists only
the fields its source documents, with `additionalProperties: false` at every level we write, so a
misspelt or invented field fails. Sources:
- MultiClusterService, MultiClusterIngress (networking.gke.io/v1): GKE docs "Deploying Ingress across
  clusters" and "Multi Cluster Ingress" (template.spec.selector/ports, clusters[].link as
  "<location>/<cluster>", template.spec.backend.serviceName/servicePort, the
  cloud.google.com/backend-config annotation on the MCS).
- BackendConfig (cloud.google.com/v1): kubernetes/ingress-gce pkg/apis/backendconfig/v1/types.go
  (BackendConfigSpec.healthCheck/timeoutSec/connectionDraining, HealthCheckConfig fields).
- ServiceExport (net.gke.io/v1): GKE docs "Configuring multi-cluster Services": metadata only, the
  name and namespace of the Service it exports.
- HealthCheckPolicy, GCPBackendPolicy (networking.gke.io/v1): GoogleCloudPlatform/gke-gateway-api
  apis/networking/v1/healthcheck_types.go and gcpbackendpolicy_types.go (targetRef is a Gateway API
  PolicyTargetReference: group, kind, name).
- Gateway, HTTPRoute (gateway.networking.k8s.io/v1): kubernetes-sigs/gateway-api
  config/crd/standard/gateway.networking.k8s.io_gateways.yaml and _httproutes.yaml.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate

KUBERNETES_VERSION = "1.35.0"  # a recent release that kubernetes-validate 1.37.0 bundles schemas for

_DNS_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
_NAME = {"type": "string", "pattern": _DNS_LABEL}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_PATH = {"type": "string", "pattern": r"^/"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}


_METADATA = _object(["name", "namespace"], name=_NAME, namespace=_NAME, labels=_STRINGS, annotations=_STRINGS)


def _kind(api_version: str, kind: str, spec: dict[str, Any] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": _METADATA}
    if spec is None:
        return _object(["apiVersion", "kind", "metadata"], **fields)
    return _object(["apiVersion", "kind", "metadata", "spec"], **fields, spec=spec)


_SERVICE_PORT = _object(
    ["port"],
    name=_NAME,
    protocol={"enum": ["TCP", "UDP", "SCTP"]},
    port=_PORT,
    targetPort={"type": ["integer", "string"]},
)
# ingress-gce HealthCheckConfig.
_BACKEND_HEALTH = _object(
    [],
    checkIntervalSec={"type": "integer", "minimum": 1},
    timeoutSec={"type": "integer", "minimum": 1},
    healthyThreshold={"type": "integer", "minimum": 1},
    unhealthyThreshold={"type": "integer", "minimum": 1},
    type={"enum": ["HTTP", "HTTPS", "HTTP2"]},
    port=_PORT,
    requestPath=_PATH,
)
# gke-gateway-api: targetRef (PolicyTargetReference) and the documented bounds of each field.
_POLICY_TARGET = _object(["group", "kind", "name"], group={"type": "string"}, kind={"type": "string"}, name=_NAME)
_HTTP_HEALTH = _object(
    [],
    portSpecification={"enum": ["USE_FIXED_PORT", "USE_NAMED_PORT", "USE_SERVING_PORT"]},
    port=_PORT,
    portName=_NAME,
    host={"type": "string"},
    requestPath=_PATH,
    proxyHeader={"enum": ["NONE", "PROXY_V1"]},
    response={"type": "string"},
)
_HEALTH_POLICY_CONFIG = _object(
    [],
    checkIntervalSec={"type": "integer", "minimum": 1, "maximum": 300},
    timeoutSec={"type": "integer", "minimum": 1, "maximum": 300},
    healthyThreshold={"type": "integer", "minimum": 1, "maximum": 10},
    unhealthyThreshold={"type": "integer", "minimum": 1, "maximum": 10},
    config=_object(["type", "httpHealthCheck"], type={"const": "HTTP"}, httpHealthCheck=_HTTP_HEALTH),
    logConfig=_object([], enabled={"type": "boolean"}),
)
_BACKEND_POLICY_CONFIG = _object(
    [],
    timeoutSec={"type": "integer", "minimum": 1, "maximum": 2147483647},
    connectionDraining=_object([], drainingTimeoutSec={"type": "integer", "minimum": 0, "maximum": 3600}),
    logging=_object([], enabled={"type": "boolean"}, sampleRate={"type": "integer"}),
    securityPolicy={"type": "string"},
    maxRatePerEndpoint={"type": "integer", "minimum": 1},
)
# gateway-api standard channel.
_LISTENER = _object(
    ["name", "port", "protocol"],
    name=_NAME,
    hostname={"type": "string"},
    port=_PORT,
    protocol={"type": "string"},
    tls=_object(
        [],
        mode={"enum": ["Terminate", "Passthrough"]},
        certificateRefs={"type": "array"},
        options={"type": "object", "additionalProperties": {"type": "string"}, "maxProperties": 16},
    ),
    allowedRoutes=_object(
        [],
        namespaces=_object([], **{"from": {"enum": ["All", "Same", "Selector"]}}),
        kinds={"type": "array", "items": _object(["kind"], group={"type": "string"}, kind={"type": "string"})},
    ),
)
_PARENT_REF = _object(
    ["name"],
    group={"type": "string"},
    kind={"type": "string"},
    namespace=_NAME,
    name=_NAME,
    sectionName=_NAME,
    port=_PORT,
)
_BACKEND_REF = _object(
    ["name"],
    group={"type": "string"},
    kind={"type": "string"},
    namespace=_NAME,
    name=_NAME,
    port=_PORT,
    weight={"type": "integer", "minimum": 0, "maximum": 1000000},
)
_MATCH = _object(
    [],
    path=_object([], type={"enum": ["Exact", "PathPrefix", "RegularExpression"]}, value=_PATH),
    method={"type": "string"},
)

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("networking.gke.io/v1", "MultiClusterService"): _kind(
        "networking.gke.io/v1",
        "MultiClusterService",
        _object(
            ["template"],
            template=_object(
                ["spec"],
                spec=_object(
                    ["selector", "ports"],
                    selector=_STRINGS,
                    ports={"type": "array", "minItems": 1, "items": _SERVICE_PORT},
                ),
            ),
            clusters={
                "type": "array",
                "items": _object(
                    ["link"], link={"type": "string", "pattern": r"^[a-z0-9-]+/[a-z]([-a-z0-9]*[a-z0-9])?$"}
                ),
            },
        ),
    ),
    ("networking.gke.io/v1", "MultiClusterIngress"): _kind(
        "networking.gke.io/v1",
        "MultiClusterIngress",
        _object(
            ["template"],
            template=_object(
                ["spec"],
                spec=_object(
                    [],
                    backend=_object(["serviceName", "servicePort"], serviceName=_NAME, servicePort=_PORT),
                    rules={"type": "array"},
                    tls={"type": "array"},
                ),
            ),
        ),
    ),
    ("cloud.google.com/v1", "BackendConfig"): _kind(
        "cloud.google.com/v1",
        "BackendConfig",
        _object(
            [],
            healthCheck=_BACKEND_HEALTH,
            timeoutSec={"type": "integer", "minimum": 1},
            connectionDraining=_object([], drainingTimeoutSec={"type": "integer", "minimum": 0}),
        ),
    ),
    ("net.gke.io/v1", "ServiceExport"): _kind("net.gke.io/v1", "ServiceExport", None),
    ("networking.gke.io/v1", "HealthCheckPolicy"): _kind(
        "networking.gke.io/v1",
        "HealthCheckPolicy",
        _object(["targetRef"], targetRef=_POLICY_TARGET, default=_HEALTH_POLICY_CONFIG),
    ),
    ("networking.gke.io/v1", "GCPBackendPolicy"): _kind(
        "networking.gke.io/v1",
        "GCPBackendPolicy",
        _object(["targetRef"], targetRef=_POLICY_TARGET, default=_BACKEND_POLICY_CONFIG),
    ),
    ("gateway.networking.k8s.io/v1", "Gateway"): _kind(
        "gateway.networking.k8s.io/v1",
        "Gateway",
        _object(
            ["gatewayClassName", "listeners"],
            gatewayClassName=_NAME,
            listeners={"type": "array", "minItems": 1, "maxItems": 64, "items": _LISTENER},
        ),
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): _kind(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        _object(
            [],
            parentRefs={"type": "array", "maxItems": 32, "items": _PARENT_REF},
            hostnames={"type": "array", "items": {"type": "string"}},
            rules={
                "type": "array",
                "maxItems": 16,
                "items": _object(
                    [],
                    matches={"type": "array", "items": _MATCH},
                    backendRefs={"type": "array", "items": _BACKEND_REF},
                ),
            },
        ),
    ),
}

BUILT_IN = {("v1", "Namespace"), ("apps/v1", "Deployment"), ("v1", "Service")}


def validate(doc: dict[str, Any]) -> None:
    """Raise if `doc` does not fit its kind's upstream (built-in) or documented (custom) schema."""
    key = (doc["apiVersion"], doc["kind"])
    if key in BUILT_IN:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    elif key in SCHEMAS:
        jsonschema.validate(doc, SCHEMAS[key])
    else:
        raise AssertionError(f"no schema for {key}: add one with its documented fields")
