"""A fake Kubernetes API at the HTTP level, so the real `kubernetes` client's requests are what is tested.

One in-process HTTP server holds every cluster; a cluster is a path prefix (`http://127.0.0.1:PORT/us-central1`
is that region's API server). It implements only what the provider calls: server-side apply (PATCH with
application/apply-patch+yaml) of namespaces, deployments and services; lists by label selector (and events
by field selector); deletecollection of deployments; delete of a service. Applied objects replace what was
there (gpuroam is the only field manager). A tiny "deployment controller" gives each Deployment its pods and
garbage-collects pods whose Deployment is gone; the test plays the scheduler and the cluster autoscaler:
`make_ready` puts pending pods on new GPU nodes (Node objects too, which GET /api/v1/nodes/NAME reads),
`stockout` makes new pods there get the autoscaler's FailedScaleUp "GCE out of resources" event and stay
pending, `lose_pods` deletes running pods (a lost node). For preemption, the test writes what the cluster
would: `taint_node`, `disrupt` (a pod's DisruptionTarget condition), `delete_pod` (a graceful deletion),
`vanish` (a pod gone, its events kept) and `node_event`.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import yaml
from kubernetes.client import ApiClient, Configuration

Obj = dict[str, Any]
_PATH = re.compile(
    r"^/(?P<cluster>[^/]+)/(?P<group>api/v1|apis/apps/v1)/namespaces(?:/(?P<ns>[^/]+)(?:/(?P<res>[^/]+)(?:/(?P<name>[^/]+))?)?)?$"
)
_NODE_PATH = re.compile(r"^/(?P<cluster>[^/]+)/api/v1/nodes/(?P<name>[^/]+)$")
_GROUPS = {
    "namespaces": "api/v1",
    "pods": "api/v1",
    "services": "api/v1",
    "events": "api/v1",
    "secrets": "api/v1",
    "deployments": "apis/apps/v1",
}
_KINDS = {"namespaces": "Namespace", "deployments": "Deployment", "services": "Service"}
ACCELERATOR = "cloud.google.com/gke-accelerator"
SPOT = "cloud.google.com/gke-spot"
REPLICA = "gpuroam.dev/replica"
STOCKOUT = "Node scale up in zones {zone} associated with this pod failed: GCE out of resources. Pod is at risk of not being scheduled."


@dataclass(frozen=True)
class Call:
    """One request as the server saw it."""

    cluster: str
    method: str
    path: str  # without the cluster prefix, e.g. /apis/apps/v1/namespaces/gpuroam/deployments/x
    query: dict[str, str]
    content_type: str | None
    status: int


@dataclass
class FakeCluster:
    """One cluster's objects, keyed (resource, namespace, name); namespaces have namespace ''."""

    name: str
    objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    stockout: set[str] = field(default_factory=set)  # GPU types the autoscaler cannot get here
    down: bool = False  # every request answers 503, as an API server under maintenance
    forbidden: set[str] = field(default_factory=set)  # resources RBAC denies us (403)
    calls: list[Call] = field(default_factory=list)

    def items(self, resource: str, ns: str | None = None) -> list[Obj]:
        return [o for (res, where, _), o in self.objects.items() if res == resource and ns in (None, where)]

    def pods(self) -> list[Obj]:
        return self.items("pods")


def matches_labels(obj: Obj, selector: str) -> bool:
    """Equality-based label selectors: `k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated (all must hold)."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def matches_fields(obj: Obj, selector: str) -> bool:
    """Field selectors `a.b=v`, comma-separated."""
    for term in filter(None, selector.split(",")):
        path, value = term.split("=", 1)
        found: Any = obj
        for part in path.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        if found != value:
            return False
    return True


class FakeKubernetes:
    """The server and its clusters; `with FakeKubernetes([...]) as fake:` starts and stops it."""

    def __init__(self, regions: list[str]) -> None:
        self.clusters = {region: FakeCluster(region) for region in regions}
        self.lock = threading.RLock()
        self._version = 0
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def client(self, region: str) -> ApiClient:
        """A real kubernetes ApiClient whose API server is this fake's `region` cluster."""
        config = Configuration(host=f"http://127.0.0.1:{self.server.server_address[1]}/{region}")
        return ApiClient(config)

    def clients(self) -> dict[str, ApiClient]:
        return {region: self.client(region) for region in self.clusters}

    def calls(self, region: str, *, methods: tuple[str, ...] = ("PATCH", "DELETE")) -> list[tuple[str, str]]:
        """(method, path) of the region's requests, the mutating ones by default."""
        with self.lock:
            return [(c.method, c.path) for c in self.clusters[region].calls if c.method in methods]

    # -- the test plays scheduler and autoscaler ------------------------------------------------------

    def make_ready(self, region: str | None = None) -> None:
        """Every pending pod that can get a GPU gets a node, runs and passes its readiness probe."""
        with self.lock:
            for cluster in self._selected(region):
                self._settle(cluster)
                for pod in cluster.pods():
                    if pod["status"]["phase"] == "Pending" and _gpu(pod) not in cluster.stockout:
                        pod["spec"]["nodeName"] = f"gke-{cluster.name}-{_gpu(pod)}-{secrets.token_hex(2)}"
                        pod["status"] = _running()
                        self._store(cluster, "nodes", _node(pod))

    def set_stockout(self, region: str, gpu: str, out: bool = True) -> None:
        with self.lock:
            (self.clusters[region].stockout.add if out else self.clusters[region].stockout.discard)(gpu)

    def lose_pods(self, region: str, gpu: str) -> list[str]:
        """The nodes under these pods are gone (preempted, repaired): the pods go, replacements are made."""
        with self.lock:
            cluster = self.clusters[region]
            lost = [p for p in cluster.pods() if _gpu(p) == gpu]
            for pod in lost:
                self._delete(cluster, "pods", pod["metadata"])
            self._settle(cluster)
            return [p["metadata"]["name"] for p in lost]

    def crash(self, region: str) -> None:
        """Every container in the region crash-loops."""
        with self.lock:
            for pod in self.clusters[region].pods():
                waiting = {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}
                pod["status"] = {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [{"name": "app", "ready": False, "state": {"waiting": waiting}}],
                }

    def pods_of(self, region: str, replica: str) -> list[Obj]:
        """The replica's pods, the stored objects themselves (change them under `lock`)."""
        with self.lock:
            return [p for p in self.clusters[region].pods() if p["metadata"]["labels"].get(REPLICA) == replica]

    def taint_node(self, region: str, node: str, key: str, value: str = "", effect: str = "NoSchedule") -> None:
        with self.lock:
            spec = self.clusters[region].objects[("nodes", "", node)]["spec"]
            spec.setdefault("taints", []).append({"key": key, "value": value, "effect": effect})

    def disrupt(self, region: str, pod: str, reason: str, at: str, phase: str = "Running") -> None:
        """The pod's DisruptionTarget condition, as the kubelet, scheduler or taint manager sets it."""
        with self.lock:
            found = self.clusters[region].objects[("pods", "gpuroam", pod)]
            condition = {"type": "DisruptionTarget", "status": "True", "reason": reason, "lastTransitionTime": at}
            found["status"] = {**found["status"], "phase": phase}
            found["status"]["conditions"] = [*found["status"].get("conditions", []), condition]

    def delete_pod(self, region: str, pod: str, at: str, grace_s: int) -> None:
        """A graceful deletion: the pod stays, marked, until `at` (the end of its grace); its Deployment
        makes a replacement at once, as a ReplicaSet does."""
        with self.lock:
            cluster = self.clusters[region]
            cluster.objects[("pods", "gpuroam", pod)]["metadata"].update(
                deletionTimestamp=at, deletionGracePeriodSeconds=grace_s
            )
            self._settle(cluster)

    def vanish(self, region: str, pod: str, reason: str | None = None, message: str = "") -> None:
        """The pod is gone from the API (its events stay, as a real API keeps them for an hour), with an
        event `reason` first if given; its Deployment makes a replacement."""
        with self.lock:
            cluster = self.clusters[region]
            found = cluster.objects[("pods", "gpuroam", pod)]
            if reason is not None:
                self._event(cluster, found, reason, message)
            self._delete(cluster, "pods", found["metadata"], keep_events=True)
            self._settle(cluster)

    def node_event(self, region: str, node: str, reason: str, message: str) -> None:
        """An event on a Node: in namespace default, as the API keeps events of cluster-scoped objects."""
        with self.lock:
            involved = {"kind": "Node", "name": node, "uid": node}
            meta = {"name": f"{node}.{secrets.token_hex(4)}", "namespace": "default"}
            event = {"apiVersion": "v1", "kind": "Event", "metadata": meta, "involvedObject": involved}
            self._store(self.clusters[region], "events", {**event, "reason": reason, "message": message})

    def add_secret(self, region: str, name: str, entries: dict[str, str], ns: str = "gpuroam") -> None:
        """A Secret as `kubectl create secret generic` makes it: each entry base64-encoded."""
        data = {key: base64.b64encode(value.encode()).decode() for key, value in entries.items()}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "data": data}
        with self.lock:
            self._store(self.clusters[region], "secrets", secret)

    def _selected(self, region: str | None) -> list[FakeCluster]:
        return [c for name, c in self.clusters.items() if region in (None, name)]

    # -- the deployment controller and the garbage collector --------------------------------------------

    def _settle(self, cluster: FakeCluster) -> None:
        deployments = {d["metadata"]["uid"]: d for d in cluster.items("deployments")}
        for pod in cluster.pods():
            owner = pod["metadata"]["ownerReferences"][0]["uid"]
            if owner not in deployments:
                self._delete(cluster, "pods", pod["metadata"])
        for deploy in deployments.values():
            selector = ",".join(f"{k}={v}" for k, v in deploy["spec"]["selector"]["matchLabels"].items())
            have = [  # active pods, as a ReplicaSet counts them: not being deleted, not ended
                p
                for p in cluster.items("pods", deploy["metadata"]["namespace"])
                if matches_labels(p, selector)
                and not p["metadata"].get("deletionTimestamp")
                and p["status"].get("phase") not in ("Succeeded", "Failed")
            ]
            for _ in range(deploy["spec"]["replicas"] - len(have)):
                self._new_pod(cluster, deploy)

    def _new_pod(self, cluster: FakeCluster, deploy: Obj) -> None:
        template, ns = deploy["spec"]["template"], deploy["metadata"]["namespace"]
        name = f"{deploy['metadata']['name']}-{secrets.token_hex(3)}"
        owner = {"kind": "Deployment", "name": deploy["metadata"]["name"], "uid": deploy["metadata"]["uid"]}
        metadata = {
            **json.loads(json.dumps(template["metadata"])),
            "name": name,
            "namespace": ns,
            "ownerReferences": [owner],
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": json.loads(json.dumps(template["spec"])),
        }
        pod["status"] = {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
        }
        self._store(cluster, "pods", pod)
        self._event(
            cluster,
            pod,
            "FailedScheduling",
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
        )
        if _gpu(pod) in cluster.stockout:
            self._event(cluster, pod, "TriggeredScaleUp", f"pod triggered scale-up: [{_gpu(pod)} pool 0->1 (max: 4)]")
            self._event(cluster, pod, "FailedScaleUp", STOCKOUT.format(zone=f"{cluster.name}-a"))

    def _event(self, cluster: FakeCluster, pod: Obj, reason: str, message: str) -> None:
        meta = pod["metadata"]
        involved = {"kind": "Pod", "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(4)}", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Normal" if reason == "TriggeredScaleUp" else "Warning",
        }
        self._store(cluster, "events", event)

    def _store(self, cluster: FakeCluster, resource: str, obj: Obj) -> Obj:
        self._version += 1
        meta = obj["metadata"]
        old = cluster.objects.get((resource, meta.get("namespace", ""), meta["name"]))
        meta["uid"] = old["metadata"]["uid"] if old else meta.get("uid") or secrets.token_hex(8)
        meta["resourceVersion"] = str(self._version)
        meta.setdefault("creationTimestamp", "2030-01-01T00:00:00Z")
        obj.setdefault("status", old.get("status", {}) if old else {})
        cluster.objects[(resource, meta.get("namespace", ""), meta["name"])] = obj
        return obj

    def _delete(self, cluster: FakeCluster, resource: str, meta: Obj, keep_events: bool = False) -> None:
        cluster.objects.pop((resource, meta.get("namespace", ""), meta["name"]), None)
        if resource == "pods" and not keep_events:
            for event in cluster.items("events"):
                if event["involvedObject"]["uid"] == meta["uid"]:
                    cluster.objects.pop(("events", event["metadata"]["namespace"], event["metadata"]["name"]))

    # -- the API -------------------------------------------------------------------------------------------

    def handle(self, method: str, url: str, content_type: str | None, body: bytes) -> tuple[int, Obj]:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        node = _NODE_PATH.match(parts.path)
        if node and node["cluster"] in self.clusters and method == "GET":
            return self._read_node(self.clusters[node["cluster"]], node["name"], parts.path)
        found = _PATH.match(parts.path)
        if not found or found["cluster"] not in self.clusters:
            return 404, _status(404, f"no route {parts.path}")
        cluster, ns, res, name = self.clusters[found["cluster"]], found["ns"], found["res"], found["name"]
        if res is None:  # /namespaces/NAME is the namespace itself
            res, name, ns = ("namespaces", ns, "")
        with self.lock:
            if cluster.down:
                code, answer = 503, _status(503, "the API server is unavailable")
            elif res in cluster.forbidden:
                code, answer = 403, _status(403, f'{res} is forbidden: User "me" cannot {method.lower()}', "Forbidden")
            elif _GROUPS.get(res) != found["group"]:
                code, answer = 404, _status(404, f"the server could not find the requested resource {res}")
            else:
                self._settle(cluster)
                code, answer = self._route(cluster, method, res, ns or "", name, query, content_type, body)
                self._settle(cluster)
            path = parts.path.removeprefix(f"/{cluster.name}")
            cluster.calls.append(Call(cluster.name, method, path, query, content_type, code))
            return code, json.loads(json.dumps(answer))

    def _read_node(self, cluster: FakeCluster, name: str, path: str) -> tuple[int, Obj]:
        with self.lock:
            if cluster.down:
                code, answer = 503, _status(503, "the API server is unavailable")
            elif "nodes" in cluster.forbidden:
                code, answer = 403, _status(403, f'nodes "{name}" is forbidden: User "me" cannot get', "Forbidden")
            elif ("nodes", "", name) not in cluster.objects:
                code, answer = 404, _status(404, f'nodes "{name}" not found', reason="NotFound")
            else:
                code, answer = 200, cluster.objects[("nodes", "", name)]
            cluster.calls.append(Call(cluster.name, "GET", path.removeprefix(f"/{cluster.name}"), {}, None, code))
            return code, json.loads(json.dumps(answer))

    def _route(
        self,
        cluster: FakeCluster,
        method: str,
        res: str,
        ns: str,
        name: str | None,
        query: dict[str, str],
        content_type: str | None,
        body: bytes,
    ) -> tuple[int, Obj]:
        if method == "PATCH" and name:
            return self._apply(cluster, res, ns, name, query, content_type, body)
        if method == "GET" and name is None:
            items = [
                o
                for o in cluster.items(res, ns)
                if matches_labels(o, query.get("labelSelector", ""))
                and matches_fields(o, query.get("fieldSelector", ""))
            ]
            kind = {"events": "Event", "pods": "Pod"}.get(res, _KINDS.get(res, res))
            return 200, {
                "kind": f"{kind}List",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": sorted(items, key=lambda o: o["metadata"]["name"]),
            }
        if method == "GET" and name is not None:
            found = cluster.objects.get((res, ns, name))
            if found is None:
                return 404, _status(404, f'{res} "{name}" not found', reason="NotFound")
            return 200, found
        if method == "DELETE" and name is None and res == "deployments":
            gone = [o for o in cluster.items(res, ns) if matches_labels(o, query.get("labelSelector", ""))]
            for obj in gone:
                self._delete(cluster, res, obj["metadata"])
            return 200, {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {}, "items": gone}
        if method == "DELETE" and name and res in ("services", "deployments"):
            obj = cluster.objects.get((res, ns, name))
            if obj is None:
                return 404, _status(404, f'{res} "{name}" not found', reason="NotFound")
            self._delete(cluster, res, obj["metadata"])
            return 200, _status(200, "deleted", reason="")
        return 405, _status(405, f"{method} on {res} is not implemented by the fake")

    def _apply(
        self,
        cluster: FakeCluster,
        res: str,
        ns: str,
        name: str,
        query: dict[str, str],
        content_type: str | None,
        body: bytes,
    ) -> tuple[int, Obj]:
        if content_type != "application/apply-patch+yaml":
            return 415, _status(415, f"the fake accepts only server-side apply, not {content_type}")
        if not query.get("fieldManager") or query.get("force") != "true":
            return 422, _status(422, "apply needs fieldManager, and gpuroam always forces")
        obj = yaml.safe_load(body)
        meta = obj.get("metadata") or {}
        if obj.get("kind") != _KINDS.get(res) or meta.get("name") != name or meta.get("namespace", "") != ns:
            return 400, _status(
                400, f"body {obj.get('kind')}/{meta.get('name')} does not match the URL", reason="BadRequest"
            )
        if ns and ("namespaces", "", ns) not in cluster.objects:
            return 404, _status(404, f'namespaces "{ns}" not found', reason="NotFound")
        existed = (res, ns, name) in cluster.objects
        if res == "services":
            old = cluster.objects.get((res, ns, name))
            taken = len(cluster.items("services")) + 10
            obj["spec"]["clusterIP"] = old["spec"]["clusterIP"] if old else f"10.0.0.{taken}"
            obj.setdefault("status", {"loadBalancer": {}})
        return (200 if existed else 201), self._store(cluster, res, obj)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubernetes
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stall per reply

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        code, answer = self.fake.handle(self.command, self.path, self.headers.get("Content-Type"), body)
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PATCH = do_DELETE = _serve

    def log_message(self, *_: Any) -> None:
        pass


def _status(code: int, message: str, reason: str = "") -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Success" if code < 300 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _gpu(pod: Obj) -> str:
    return pod["spec"].get("nodeSelector", {}).get(ACCELERATOR, "")


def _node(pod: Obj) -> Obj:
    """The GPU node a pod was put on: GKE's accelerator label, and its Spot label for a Spot pod."""
    labels = {ACCELERATOR: _gpu(pod)}
    if pod["spec"].get("nodeSelector", {}).get(SPOT) == "true":
        labels[SPOT] = "true"
    meta = {"name": pod["spec"]["nodeName"], "labels": labels}
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": {}, "status": {}}


def _running() -> Obj:
    ready = [{"type": t, "status": "True"} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    return {
        "phase": "Running",
        "conditions": ready,
        "containerStatuses": [{"name": "app", "ready": True, "state": {"running": {}}}],
    }


def all_items(fake: FakeKubernetes, resource: str) -> Iterator[tuple[str, Obj]]:
    """(region, object) for every object of `resource` in every cluster."""
    with fake.lock:
        for region, cluster in fake.clusters.items():
            for obj in cluster.items(resource):
                yield region, obj
