"""Fakes of what the gke provider talks to: GKE's ClusterManager, the GKE Hub, Google credentials, and
the Kubernetes API server with GKE's custom resources.

The Google fakes take the same keyword calls as the real clients, build the real request messages from
them (so a wrong field name fails here as it would there), answer with the real response types and
raise the real `google.api_core.exceptions`. A cluster's creation is an Operation that is RUNNING for
`polls` get_operation calls, then DONE with the cluster RUNNING; while `gate` is clear a poll blocks,
so a creation can be held "in progress" for as long as a test needs. Hub calls
return real `google.api_core.operation.Operation`s that finish on their first poll.
"""

from __future__ import annotations

import base64
import itertools
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.api_core import operation as lro
from google.cloud import container_v1, gkehub_v1
from google.longrunning import operations_pb2
from google.protobuf import any_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kubernetes"))
from fake_kube_api import Call, FakeKubernetes, _Handler, _status

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
CA = base64.b64encode(PEM.encode()).decode()


class Clock:
    """Monotonic seconds and the wall time (naive UTC) together; `sleep` moves both."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.start = datetime(2030, 1, 1, 12, 0, 0)

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return self.start + timedelta(seconds=self.now - 1000.0)

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeCredentials:
    """google.auth credentials: each refresh gives a new token that lasts an hour from the clock's now."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.token: str | None = None
        self.expiry: datetime | None = None
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = f"ya29.token-{self.refreshes}"
        self.expiry = self.clock.utc() + timedelta(hours=1)


class FakeClusterManager:
    """container_v1.ClusterManagerClient: get_cluster, create_cluster, get_operation."""

    def __init__(self, polls: int = 2) -> None:
        self.polls = polls
        self.gate = threading.Event()  # get_operation blocks while it is clear: a creation in progress
        self.gate.set()
        self.clusters: dict[str, container_v1.Cluster] = {}  # full name -> cluster
        self.operations: dict[str, tuple[container_v1.Operation, str]] = {}  # full name -> (operation, cluster)
        self.remaining: dict[str, int] = {}
        self.requests: list[Any] = []  # the real request messages, in order
        self.fail: dict[str, Exception] = {}  # method -> raised (once) instead of answering
        self.endpoints = (f"203.0.113.{n}" for n in itertools.count(10))
        self.lock = threading.RLock()

    def calls(self, kind: type) -> list[Any]:
        with self.lock:
            return [r for r in self.requests if isinstance(r, kind)]

    def _record(self, method: str, request: Any) -> None:
        with self.lock:
            self.requests.append(request)
            if method in self.fail:
                raise self.fail.pop(method)

    def get_cluster(self, *, name: str, **_: Any) -> container_v1.Cluster:
        self._record("get_cluster", container_v1.GetClusterRequest(name=name))
        with self.lock:
            if name not in self.clusters:
                raise gexc.NotFound(f"Not found: {name}.")
            return container_v1.Cluster(self.clusters[name])

    def create_cluster(self, *, parent: str, cluster: container_v1.Cluster, **_: Any) -> container_v1.Operation:
        self._record("create_cluster", container_v1.CreateClusterRequest(parent=parent, cluster=cluster))
        name = f"{parent}/clusters/{cluster.name}"
        with self.lock:
            if name in self.clusters:
                raise gexc.AlreadyExists(f"Already exists: {name}.")
            created = container_v1.Cluster(cluster)
            created.status = container_v1.Cluster.Status.PROVISIONING
            created.location = parent.rsplit("/", 1)[-1]
            self.clusters[name] = created
            op_id = f"operation-{len(self.operations) + 1}"
            operation = container_v1.Operation(
                name=op_id,
                operation_type=container_v1.Operation.Type.CREATE_CLUSTER,
                status=container_v1.Operation.Status.RUNNING,
                location=created.location,
                target_link=f"https://container.googleapis.com/v1/{name}",
            )
            self.operations[f"{parent}/operations/{op_id}"] = (operation, name)
            self.remaining[f"{parent}/operations/{op_id}"] = self.polls
            return container_v1.Operation(operation)

    def get_operation(self, *, name: str, **_: Any) -> container_v1.Operation:
        self._record("get_operation", container_v1.GetOperationRequest(name=name))
        self.gate.wait(timeout=30)
        with self.lock:
            if name not in self.operations:
                raise gexc.NotFound(f"Not found: {name}.")
            operation, cluster = self.operations[name]
            if operation.status != container_v1.Operation.Status.DONE:
                self.remaining[name] -= 1
                if self.remaining[name] <= 0:
                    self.finish(cluster)
                    operation.status = container_v1.Operation.Status.DONE
            return container_v1.Operation(operation)

    def finish(self, name: str) -> None:
        """The cluster is up: RUNNING, with its API server's address and CA."""
        with self.lock:
            cluster = self.clusters[name]
            cluster.status = container_v1.Cluster.Status.RUNNING
            cluster.endpoint = next(self.endpoints)
            cluster.master_auth = container_v1.MasterAuth(cluster_ca_certificate=CA)


def _done(result: Any, result_type: type) -> lro.Operation:
    """A real api_core long-running Operation, pending until its first poll, then done with `result`."""
    packed = any_pb2.Any()
    packed.Pack(result_type.pb(result))
    finished = operations_pb2.Operation(name="operations/fake", done=True, response=packed)
    pending = operations_pb2.Operation(name="operations/fake", done=False)
    return lro.Operation(pending, lambda **_: finished, lambda **_: None, result_type=result_type)


class FakeGkeHub:
    """gkehub_v1.GkeHubClient: memberships and features in the global location."""

    def __init__(self) -> None:
        self.memberships: dict[str, gkehub_v1.Membership] = {}
        self.features: dict[str, gkehub_v1.Feature] = {}
        self.requests: list[Any] = []
        self.lock = threading.RLock()

    def calls(self, kind: type) -> list[Any]:
        with self.lock:
            return [r for r in self.requests if isinstance(r, kind)]

    def get_membership(self, *, name: str, **_: Any) -> gkehub_v1.Membership:
        with self.lock:
            self.requests.append(gkehub_v1.GetMembershipRequest(name=name))
            if name not in self.memberships:
                raise gexc.NotFound(f"Resource '{name}' was not found")
            return gkehub_v1.Membership(self.memberships[name])

    def create_membership(
        self, *, parent: str, membership_id: str, resource: gkehub_v1.Membership, **_: Any
    ) -> lro.Operation:
        request = gkehub_v1.CreateMembershipRequest(parent=parent, membership_id=membership_id, resource=resource)
        name = f"{parent}/memberships/{membership_id}"
        with self.lock:
            self.requests.append(request)
            if name in self.memberships:
                raise gexc.AlreadyExists(f"Membership '{name}' already exists")
            created = gkehub_v1.Membership(resource, name=name)
            created.state = gkehub_v1.MembershipState(code=gkehub_v1.MembershipState.Code.READY)
            self.memberships[name] = created
        return _done(created, gkehub_v1.Membership)

    def get_feature(self, *, name: str, **_: Any) -> gkehub_v1.Feature:
        with self.lock:
            self.requests.append(gkehub_v1.GetFeatureRequest(name=name))
            if name not in self.features:
                raise gexc.NotFound(f"Resource '{name}' was not found")
            return gkehub_v1.Feature(self.features[name])

    def create_feature(self, *, parent: str, feature_id: str, resource: gkehub_v1.Feature, **_: Any) -> lro.Operation:
        request = gkehub_v1.CreateFeatureRequest(parent=parent, feature_id=feature_id, resource=resource)
        name = f"{parent}/features/{feature_id}"
        with self.lock:
            self.requests.append(request)
            if name in self.features:
                raise gexc.AlreadyExists(f"Feature '{name}' already exists")
            self.features[name] = gkehub_v1.Feature(resource, name=name)
            return _done(self.features[name], gkehub_v1.Feature)

    def update_feature(self, *, name: str, resource: gkehub_v1.Feature, update_mask: Any, **_: Any) -> lro.Operation:
        request = gkehub_v1.UpdateFeatureRequest(name=name, resource=resource, update_mask=update_mask)
        with self.lock:
            self.requests.append(request)
            if name not in self.features:
                raise gexc.NotFound(f"Resource '{name}' was not found")
            if list(update_mask.paths) != ["spec.multiclusteringress.config_membership"]:
                raise gexc.InvalidArgument(f"unexpected update mask {list(update_mask.paths)}")
            feature = self.features[name]
            feature.spec.multiclusteringress.config_membership = resource.spec.multiclusteringress.config_membership
            return _done(feature, gkehub_v1.Feature)


# -- the Kubernetes API server, with GKE's custom resources ----------------------------------------------

_CUSTOM = re.compile(
    r"^/(?P<cluster>[^/]+)/apis/(?P<group>[^/]+\.[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)"
    r"/(?P<plural>[^/]+)/(?P<name>[^/]+)$"
)
MCI_CRDS = {"multiclusterservices", "multiclusteringresses", "backendconfigs"}
GATEWAY_CRDS = {"gateways", "httproutes", "healthcheckpolicies", "gcpbackendpolicies", "serviceexports"}


@dataclass
class CustomObjects:
    """One cluster's custom objects by (plural, namespace, name), and the CRDs it has."""

    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    crds: set[str] = field(default_factory=set)


class _RecordingHandler(_Handler):
    """Keeps each request's Authorization header, to see the bearer token the client sends."""

    def _serve(self) -> None:
        with self.fake.lock:
            self.fake.authorizations.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        super()._serve()

    do_GET = do_PATCH = do_DELETE = _serve


class FakeGkeKubernetes(FakeKubernetes):
    """fake_kube_api's clusters, plus server-side apply and get of custom objects (any group with a dot)."""

    def __init__(self, regions: list[str]) -> None:
        super().__init__(regions)
        self.custom = {region: CustomObjects(crds=set(MCI_CRDS | GATEWAY_CRDS)) for region in regions}
        self.authorizations: list[str | None] = []
        self.server.RequestHandlerClass = type("Handler", (_RecordingHandler,), {"fake": self})

    def url(self, region: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{region}"

    def objects(self, region: str, plural: str) -> list[dict[str, Any]]:
        with self.lock:
            return [o for (p, _, _), o in self.custom[region].objects.items() if p == plural]

    def set_status(self, region: str, plural: str, status: dict[str, Any]) -> None:
        """What GKE's controllers write back, e.g. the MultiClusterIngress's VIP."""
        with self.lock:
            for (p, _, _), obj in self.custom[region].objects.items():
                if p == plural:
                    obj["status"] = status

    def handle(self, method: str, url: str, content_type: str | None, body: bytes) -> tuple[int, dict[str, Any]]:
        path = url.split("?", 1)[0]
        found = _CUSTOM.match(path)
        if not found or found["cluster"] not in self.custom:
            return super().handle(method, url, content_type, body)
        query = dict(pair.split("=", 1) for pair in url.partition("?")[2].split("&") if "=" in pair)
        with self.lock:
            code, answer = self._custom(found, method, query, content_type, body)
            cluster = self.clusters[found["cluster"]]
            cluster.calls.append(
                Call(cluster.name, method, path.removeprefix(f"/{cluster.name}"), query, content_type, code)
            )
            return code, answer

    def _custom(
        self, found: re.Match[str], method: str, query: dict[str, str], content_type: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        import yaml

        region, plural, ns, name = found["cluster"], found["plural"], found["ns"], found["name"]
        store = self.custom[region]
        if self.clusters[region].down:
            return 503, _status(503, "the API server is unavailable")
        if plural not in store.crds:
            return 404, _status(404, "the server could not find the requested resource", "NotFound")
        key = (plural, ns, name)
        if method == "GET":
            if key not in store.objects:
                return 404, _status(404, f'{plural} "{name}" not found', "NotFound")
            return 200, store.objects[key]
        if method != "PATCH" or content_type != "application/apply-patch+yaml":
            return 415, _status(415, f"the fake takes only server-side apply, not {method} {content_type}")
        if not query.get("fieldManager") or query.get("force") != "true":
            return 422, _status(422, "apply needs fieldManager, and gpuroam always forces")
        if ("namespaces", "", ns) not in self.clusters[region].objects:
            return 404, _status(404, f'namespaces "{ns}" not found', "NotFound")
        obj = yaml.safe_load(body)
        if obj["metadata"]["name"] != name or f"{found['group']}/{found['version']}" != obj["apiVersion"]:
            return 400, _status(400, "body does not match the URL", "BadRequest")
        old = store.objects.get(key)
        obj["status"] = old.get("status", {}) if old else {}
        store.objects[key] = obj
        return (200 if old else 201), obj


# -- GCP's REST endpoints, under the real clients ----------------------------------------------------------


def rest_stub(sent: list[tuple[str, str, dict[str, str], dict[str, Any] | None]]) -> Any:
    """A stand-in for `AuthorizedSession.request` under the real clients (transport="rest"): records each
    HTTP request as (method, url, query, JSON body) and answers as GCP would for a first-time setup."""
    import json

    import requests

    created: set[str] = set()

    def request(session: Any, method: str, url: str, data: Any = None, params: Any = None, **_: Any) -> Any:
        sent.append((method, url, dict(params or []), json.loads(data) if data else None))
        response = requests.Response()
        response.request = requests.Request(method, url).prepare()
        response.status_code = 200
        kind = "Membership" if "/memberships" in url else "Feature"
        if "/operations/" in url:
            body: dict[str, Any] = {"name": url.rsplit("/", 1)[-1], "status": "DONE"}
        elif url.endswith("/clusters") and method == "POST":
            created.add(f"{url}/{json.loads(data)['cluster']['name']}")
            body = {"name": "operation-1", "status": "RUNNING"}
        elif "/clusters/" in url and url in created:
            body = {"name": url.rsplit("/", 1)[-1], "status": "RUNNING", "endpoint": "203.0.113.5"}
            body["masterAuth"] = {"clusterCaCertificate": CA}
        elif method == "GET":
            response.status_code = 404
            body = {"error": {"code": 404, "message": f"{url} not found", "status": "NOT_FOUND"}}
        else:
            body = {
                "name": "operations/1",
                "done": True,
                "response": {"@type": f"type.googleapis.com/google.cloud.gkehub.v1.{kind}"},
            }
        response._content = json.dumps(body).encode()
        response.headers["content-type"] = "application/json"
        return response

    return request
