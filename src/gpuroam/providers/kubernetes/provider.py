"""The kubernetes provider: any set of clusters, one per region, each reached through its own API client.

A replica is a one-pod Deployment and its own Service, both named for the replica id, applied with
server-side apply (field manager "gpuroam", forced), so `launch` is idempotent and a second controller
converges on the same objects. `observe` lists what carries the `gpuroam.dev/replica` label and reads
pod conditions and, for a pod that cannot get a node, its events (see events.py); and preemption notices
(below).

Choices, and their limits:
- URL. How a gateway reaches a replica on a real cluster is not decided yet. A replica's URL is its
  Service's load-balancer address (`status.loadBalancer.ingress[0]`) when it has one (pass
  `service_type="LoadBalancer"`: one external address per replica, public, billed, a minute to come),
  else the cluster DNS name `http://<svc>.<ns>.svc.cluster.local:80`, which resolves only inside that
  cluster: a gateway outside it cannot use it. The gke provider's global endpoint (MCI) avoids both.
- API outage. The reconciler fails a replica that observe() stops reporting (and blocks its pair), so
  an unreachable cluster must not read as "everything there is gone". For `outage_grace_s` after the
  first failed list, its replicas are reported as last seen (detail says so); past it the region counts
  as lost and they are left out, so the controller replaces them elsewhere. A cluster never seen since
  this provider started is not known at all: observe() raises (the pass is skipped and retried) until
  the grace runs out. The data plane keeps its own health checks meanwhile.
- Launch into an unreachable cluster raises CapacityError: for placement the region has no capacity now,
  and the block's backoff keeps the controller from retrying it every pass.
- drain is a no-op: the gateway stops routing once the controller drops the replica from the ready set,
  and terminate comes after the drain grace; the pod's termination grace lets requests in flight finish.
- terminate deletes by label in the replica's cluster (every cluster if unknown); 404 is success. An
  unreachable cluster is skipped with a warning: when it is back, observe() reports the leftovers and
  the controller terminates them as orphans.
- A launch gets the service's whole spec and the replica: the spec's GPU count and the replica's capacity
  (Spot or on-demand) shape its Deployment.
- Preemption notices (preemption.py says which signals, and why those). observe reads each pod's deletion
  and DisruptionTarget condition from the pod list it makes anyway, and, for the running pods of Spot
  replicas only, their nodes' taints: one `read_node` per distinct node per cluster per observe (nodes are
  cluster-scoped: `get` on nodes needs a ClusterRole). A node that cannot be read (403, 404, timeout) is
  no signal, logged once per region until a read succeeds, and never fails observe. A replica with a
  notice is reported with `reclaim_at` (UNIX time; `wall_clock` says now), so the controller replaces it
  at the notice; its state is read as before (a pod being deleted is not READY: its Service has dropped
  it). No notice while another pod of the replica serves without one (a rollout's old pod going, a
  preempted pod already replaced).
- A pod lost between two observes. A pod of the last list that is gone, while its replica reads as
  STARTING (no ready pod in its place, no other verdict), has its events read once (and its node's, in namespace `default`, which needs `list` on events there):
  a preemption among them (events.py) reports the replica FAILED as a capacity failure. A failed read is
  no signal. A restarted provider does not know which pods are gone; the controller's grace for a
  replica that stops answering covers that case, as it covers a loss with no such event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException

from gpuroam.catalog import Catalog, load_catalog
from gpuroam.providers.base import CapacityError, Launched, Observed, ObservedState, ProviderError, Regions
from gpuroam.providers.kubernetes.api import (
    API_FAILURES,
    APPLY_PATCH,
    FIELD_MANAGER,
    brief,
    read_secret,
    response_json,
    unreachable,
)
from gpuroam.providers.kubernetes.events import CapacitySignal, first_capacity_signal
from gpuroam.providers.kubernetes.manifests import (
    DEFAULT_NAMESPACE,
    SERVICE_PORT,
    Manifest,
    deployment,
    namespace,
    service,
)
from gpuroam.providers.kubernetes.names import (
    GPU_LABEL,
    MANAGED_BY,
    REGION_LABEL,
    REPLICA_LABEL,
    SERVICE_LABEL,
    dns_label,
    exact_annotations,
    label_value,
    replica_name,
    workload_labels,
)
from gpuroam.providers.kubernetes.preemption import (
    TERMINAL_PHASES,
    Node,
    condition,
    node_name,
    nodes_to_read,
    phase,
    replica_notice,
)
from gpuroam.records import Replica
from gpuroam.spec import ServiceSpec

log = logging.getLogger("gpuroam.providers.kubernetes")

OWNED = f"{REPLICA_LABEL},app.kubernetes.io/managed-by={MANAGED_BY}"
# Container states that will not fix themselves: the replica is broken, not short of capacity.
BROKEN_REASONS = frozenset(
    {"CrashLoopBackOff", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)


def _meta(obj: Mapping[str, Any], key: str) -> str:
    """gpuroam's exact value from the annotations, else the (possibly shortened) label."""
    metadata = obj.get("metadata") or {}
    return (metadata.get("annotations") or {}).get(key) or (metadata.get("labels") or {}).get(key) or ""


@dataclass(frozen=True)
class _Cluster:
    region: str
    core: CoreV1Api
    apps: AppsV1Api


class KubernetesProvider:
    """Clusters by region; replicas are one-pod Deployments with a Service each, in one namespace."""

    name = "kubernetes"

    def __init__(
        self,
        clusters: Mapping[str, ApiClient],
        *,
        catalog: Catalog | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        inventory: Mapping[str, Mapping[str, int | None]] | None = None,
        service_type: str = "ClusterIP",
        outage_grace_s: float = 300.0,
        request_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clusters = {region: _Cluster(region, CoreV1Api(api), AppsV1Api(api)) for region, api in clusters.items()}
        self.catalog = catalog or load_catalog()
        self.namespace = dns_label(namespace)
        self.inventory = {region: dict(gpus) for region, gpus in (inventory or {}).items()}
        self.service_type = service_type
        self.outage_grace_s = outage_grace_s
        self.timeout = request_timeout_s
        self.clock = clock
        self.wall_clock = wall_clock  # UNIX time, for reclaim_at; `clock` times outages
        self._known: dict[str, tuple[str, str]] = {}  # replica id -> (region, gpu), from observe and launch
        self._last_seen: dict[str, list[Observed]] = {}  # region -> its replicas at the last good list
        self._down_since: dict[str, float] = {}  # region -> first failed list of the current outage
        self._pods: dict[str, dict[str, dict[str, str]]] = {}  # region -> replica -> its pods' nodes, last list
        self._node_unread: set[str] = set()  # regions whose nodes could not be read (logged once)

    @classmethod
    def from_kubeconfig(cls, path: Path | str, contexts: Mapping[str, str], **options: Any) -> KubernetesProvider:
        """One API client per region from the kubeconfig contexts named in `contexts` (region -> context)."""
        from kubernetes.config import new_client_from_config

        clusters = {
            # kubernetes.config's functions carry no annotations
            region: new_client_from_config(config_file=str(path), context=ctx)  # type: ignore[no-untyped-call]
            for region, ctx in contexts.items()
        }
        return cls(clusters, **options)

    # -- the Provider interface -------------------------------------------------------------------

    def read_secret(self, name: str) -> dict[str, str]:
        """A Secret of the provider's namespace, from the first cluster (in region order) that has it."""
        failures = []
        for region, cluster in sorted(self._clusters.items()):
            try:
                found = read_secret(cluster.core, name, self.namespace, self.timeout)
            except API_FAILURES as error:
                failures.append(f"{region}: {brief(error)}")
                continue
            if found is not None:
                return found
        if failures:
            raise ProviderError(f"cannot read Secret {name} ({'; '.join(failures)})")
        raise ProviderError(
            f"no Secret {name} in namespace {self.namespace} of any cluster; create it, one entry per key: "
            f"kubectl -n {self.namespace} create secret generic {name} --from-literal=alice=KEY"
        )

    def regions(self) -> Regions:
        """Each mapped region with the GPU types the inventory (else the catalog) says it offers."""
        found: dict[str, dict[str, int | None]] = {}
        for region in self._clusters:
            if region in self.inventory:
                found[region] = {gpu: self._free(region, gpu) for gpu in self.inventory[region]}
            elif region in self.catalog.regions:
                found[region] = {offer.gpu: None for offer in self.catalog.offers_in(region)}
            else:
                found[region] = {}
        return found

    def spot_regions(self) -> Regions:
        """Spot wherever a GPU is offered, free slots unknown: GKE makes a Spot node on demand. A cluster
        with no Spot nodes leaves the pod unschedulable, a capacity failure that blocks Spot there."""
        return {region: dict.fromkeys(gpus) for region, gpus in self.regions().items()}

    def _free(self, region: str, gpu: str) -> int | None:
        total = self.inventory.get(region, {}).get(gpu)
        if total is None:
            return None
        return max(0, total - sum(1 for pair in list(self._known.values()) if pair == (region, gpu)))

    def launch(self, replica: Replica, spec: ServiceSpec) -> Launched:
        region, gpu = replica.region, replica.gpu
        cluster = self._clusters.get(region)
        if cluster is None:
            raise CapacityError(region, gpu, f"no cluster is mapped to region {region}")
        if replica.id not in self._known and self._free(region, gpu) == 0:
            raise CapacityError(region, gpu, f"the inventory of {region} has no free {gpu}")
        objects = [
            namespace(self.namespace),
            deployment(spec, region, gpu, self.namespace, replica=replica.id, capacity=replica.capacity),
            self._service(spec, replica),
        ]
        try:
            for manifest in objects:
                self._apply(cluster, manifest)
        except API_FAILURES as error:
            if unreachable(error):
                raise CapacityError(
                    region, gpu, f"the cluster API of {region} is unreachable: {brief(error)}"
                ) from error
            raise ProviderError(f"cannot apply {replica.id} in {region}: {brief(error)}") from error
        self._known[replica.id] = (region, gpu)
        name = replica_name(replica.id)
        url = self._dns_url(name)
        return Launched(
            url, {"cluster": region, "namespace": self.namespace, "deployment": name, "service": name, "url": url}
        )

    def observe(self) -> list[Observed]:
        clusters = list(self._clusters.values())
        with ThreadPoolExecutor(max_workers=max(1, len(clusters))) as pool:
            results = list(pool.map(self._observe_safely, clusters))
        seen: list[Observed] = []
        for cluster, result in zip(clusters, results, strict=True):
            if isinstance(result, Exception):
                seen += self._whileunreachable(cluster.region, result)
            else:
                self._down_since.pop(cluster.region, None)
                self._last_seen[cluster.region] = result
                seen += result
        self._known = {o.replica_id: (o.region, o.gpu) for o in seen}
        return seen

    def drain(self, replica_id: str) -> None:
        """Nothing to do: the gateway stops routing to it; terminate follows after the drain grace."""

    def terminate(self, replica_id: str) -> None:
        known = self._known.get(replica_id)
        regions = [known[0]] if known and known[0] in self._clusters else list(self._clusters)
        selector = f"{REPLICA_LABEL}={label_value(replica_id)}"
        for region in regions:
            cluster = self._clusters[region]
            try:
                delete = cluster.apps.delete_collection_namespaced_deployment
                self._call(delete, self.namespace, label_selector=selector, propagation_policy="Background")
                for svc in self._list(cluster.core.list_namespaced_service, selector):
                    self._delete_service(cluster, svc["metadata"]["name"])
            except API_FAILURES as error:
                if isinstance(error, ApiException) and error.status == 404:
                    continue
                if unreachable(error):
                    log.warning(
                        "cannot delete %s in %s now (%s); it is removed as an orphan later",
                        replica_id,
                        region,
                        brief(error),
                    )
                    continue
                raise ProviderError(f"cannot delete {replica_id} in {region}: {brief(error)}") from error
        self._known.pop(replica_id, None)

    def endpoint(self, service: str) -> str | None:
        """None: plain clusters give no global endpoint; gpuroam's gateway (or gke's MCI) does."""
        return None

    # -- applying ------------------------------------------------------------------------------------

    def _service(self, spec: ServiceSpec, replica: Replica) -> Manifest:
        """The replica's own Service (a GPU-wide one would mix replicas): named, labelled and selecting by replica."""
        manifest = service(spec, replica.region, replica.gpu, self.namespace)
        name = replica_name(replica.id)
        labels = workload_labels(spec.name, replica.region, replica.gpu, replica.id)
        manifest["metadata"].update(
            name=name, labels=labels, annotations=exact_annotations(spec.name, replica.region, replica.gpu, replica.id)
        )
        manifest["spec"]["selector"] = {**manifest["spec"]["selector"], REPLICA_LABEL: labels[REPLICA_LABEL]}
        manifest["spec"]["type"] = self.service_type
        return manifest

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One API call, its JSON read back raw (no model round trip), bounded by the request timeout."""
        return response_json(method(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs))

    def _apply(self, cluster: _Cluster, manifest: Manifest) -> None:
        """Server-side apply: create or update to exactly this, owned by gpuroam (forced over others)."""
        options = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
        name, kind = manifest["metadata"]["name"], manifest["kind"]
        if kind == "Namespace":
            self._call(cluster.core.patch_namespace, name, manifest, **options)
        elif kind == "Deployment":
            self._call(cluster.apps.patch_namespaced_deployment, name, self.namespace, manifest, **options)
        else:
            self._call(cluster.core.patch_namespaced_service, name, self.namespace, manifest, **options)

    def _delete_service(self, cluster: _Cluster, name: str) -> None:
        try:
            self._call(cluster.core.delete_namespaced_service, name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise

    # -- observing -----------------------------------------------------------------------------------

    def _observe_safely(self, cluster: _Cluster) -> list[Observed] | Exception:
        try:
            return self._observe(cluster)
        except API_FAILURES as error:
            return error

    def _whileunreachable(self, region: str, error: Exception) -> list[Observed]:
        """Last seen replicas during a short outage; none once it has lasted past the grace."""
        now = self.clock()
        since = self._down_since.setdefault(region, now)
        down_s = now - since
        log.warning("cluster of %s unreachable for %.0f s: %s", region, down_s, brief(error))
        if down_s > self.outage_grace_s:
            return []  # the region is lost: its replicas are replaced elsewhere
        last = self._last_seen.get(region)
        if last is None:
            raise ProviderError(f"the cluster of {region} has not been reachable yet ({brief(error)}); retrying")
        note = f"cluster API unreachable for {down_s:.0f} s; last seen state"
        return [replace(o, detail=f"{o.detail}; {note}" if o.detail else note) for o in last]

    def _list(self, method: Callable[..., Any], label_selector: str) -> list[dict[str, Any]]:
        return list(self._call(method, self.namespace, label_selector=label_selector).get("items") or [])

    def _observe(self, cluster: _Cluster) -> list[Observed]:
        deployments = self._list(cluster.apps.list_namespaced_deployment, OWNED)
        if not deployments:
            self._pods[cluster.region] = {}
            return []
        pods = self._list(cluster.core.list_namespaced_pod, OWNED)
        services = {_meta(s, REPLICA_LABEL): s for s in self._list(cluster.core.list_namespaced_service, OWNED)}
        nodes = {name: self._node(cluster, name) for name in nodes_to_read(pods)}
        now, before, seen = self.wall_clock(), self._pods.get(cluster.region, {}), {}
        found = []
        for deploy in deployments:
            if deploy["metadata"].get("deletionTimestamp"):
                continue  # on its way out: as good as gone
            replica_id = _meta(deploy, REPLICA_LABEL)
            mine = [p for p in pods if _meta(p, REPLICA_LABEL) == replica_id]
            seen[replica_id] = {p["metadata"]["name"]: node_name(p) or "" for p in mine}
            state, detail, capacity = self._state(cluster, deploy, mine)
            notice = replica_notice(mine, nodes, now)
            if notice is not None:
                detail = f"{detail}; reclaim notice: {notice.why}"
            elif state is ObservedState.STARTING:
                gone = self._vanished(cluster, before.get(replica_id, {}), seen[replica_id])
                if gone is not None:
                    state, detail, capacity = ObservedState.FAILED, gone, True
            found.append(
                Observed(
                    replica_id=replica_id,
                    service=_meta(deploy, SERVICE_LABEL),
                    region=_meta(deploy, REGION_LABEL) or cluster.region,
                    gpu=_meta(deploy, GPU_LABEL),
                    state=state,
                    url=self._url(services.get(replica_id), deploy["metadata"]["name"]),
                    detail=detail,
                    capacity_failure=capacity,
                    reclaim_at=None if notice is None else notice.at,
                )
            )
        self._pods[cluster.region] = seen
        return found

    def _state(
        self, cluster: _Cluster, deploy: dict[str, Any], pods: list[dict[str, Any]]
    ) -> tuple[ObservedState, str, bool]:
        """READY if a pod is Ready; FAILED (capacity or not) when it cannot come up; else STARTING."""
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp") and phase(p) not in TERMINAL_PHASES]
        for pod in live:
            if condition(pod, "Ready") == "True":
                return ObservedState.READY, f"pod {pod['metadata']['name']} ready", False
        for cond in (deploy.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
                message = str(cond.get("message") or cond.get("reason") or "")
                return ObservedState.FAILED, f"cannot create its pod: {message}", "exceeded quota" in message.lower()
        for pod in live:
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in BROKEN_REASONS:
                    detail = f"pod {pod['metadata']['name']}: {waiting['reason']}: {waiting.get('message', '')}"
                    return ObservedState.FAILED, detail.rstrip(": "), False
        for pod in live:
            if phase(pod) == "Pending" and not node_name(pod):
                signal = first_capacity_signal(self._events(cluster, pod["metadata"]["name"]))
                if signal is not None:
                    return ObservedState.FAILED, f"{signal.kind}: {signal.detail}", True
        if not live:
            return ObservedState.STARTING, "no pod yet", False
        pod = live[0]
        return ObservedState.STARTING, f"pod {pod['metadata']['name']} {phase(pod).lower() or 'pending'}", False

    def _events(self, cluster: _Cluster, name: str, namespace: str | None = None, kind: str = "") -> list[Any]:
        selector = (f"involvedObject.kind={kind}," if kind else "") + f"involvedObject.name={name}"
        found = self._call(cluster.core.list_namespaced_event, namespace or self.namespace, field_selector=selector)
        return list(found.get("items") or [])

    def _node(self, cluster: _Cluster, name: str) -> Node | None:
        """The node under a Spot pod, for its taints; None (no signal) when it cannot be read."""
        try:
            node = self._call(cluster.core.read_node, name)
        except API_FAILURES as error:
            if cluster.region not in self._node_unread:
                self._node_unread.add(cluster.region)
                log.warning(
                    "cannot read nodes in %s (%s): no node taints as preemption notices", cluster.region, brief(error)
                )
            return None
        self._node_unread.discard(cluster.region)
        return node

    def _vanished(self, cluster: _Cluster, before: Mapping[str, str], now: Mapping[str, str]) -> str | None:
        """Why a pod of the last list is gone, if its events (or its node's) say it was preempted; each
        vanished pod is read once. A failed read is no signal: the controller's unready grace still applies."""
        for pod, node in sorted(before.items()):
            if pod in now:
                continue
            try:
                signal: CapacitySignal | None = first_capacity_signal(self._events(cluster, pod))
                if signal is None and node:
                    signal = first_capacity_signal(self._events(cluster, node, "default", kind="Node"))
            except API_FAILURES as error:
                log.warning(
                    "cannot read the events of the vanished pod %s in %s: %s", pod, cluster.region, brief(error)
                )
                continue
            if signal is not None:
                return f"pod {pod} gone: {signal.kind}: {signal.detail}"
        return None

    def _url(self, svc: dict[str, Any] | None, name: str) -> str:
        """The Service's load-balancer address if it has one, else its cluster DNS name (see the module doc)."""
        ingress = (((svc or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        host = (ingress[0].get("ip") or ingress[0].get("hostname")) if ingress else None
        if host:
            return f"http://{host}:{SERVICE_PORT}"
        return self._dns_url((svc or {}).get("metadata", {}).get("name") or name)

    def _dns_url(self, name: str) -> str:
        return f"http://{name}.{self.namespace}.svc.cluster.local:{SERVICE_PORT}"
