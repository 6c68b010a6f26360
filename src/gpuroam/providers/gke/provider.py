"""The gke provider: GKE Autopilot clusters per region, one fleet, one global load balancer in front.

Never run against real GCP here: it is written against the installed google-cloud-container 2.67.0,
google-cloud-gke-hub 1.26.0 and google-auth 2.62.2 and tested with fakes of those clients and a fake
Kubernetes API server. Treat the first real run as a test.

How it works, and the choices made:
- Clusters. Each region gets the Autopilot cluster `cluster_name(region)` in the project, created on
  demand and registered to the fleet (clusters.py). Replica work in a cluster whose API server answers
  is done by a KubernetesProvider over that one cluster (one per region, built when the cluster is
  ready), so Deployments, Services, readiness, capacity events, Spot preemption notices and outage grace
  are the kubernetes provider's, unchanged (pass `kubernetes_options` to set its options, e.g. `wall_clock`).
- Launch into a region with no usable cluster starts its preparation (create, wait, register) in a
  background thread, waits `launch_wait_s` for it (enough when the cluster exists already), and
  otherwise raises CapacityError "cluster creating": for placement the region has no capacity now, the
  controller blocks the pair with backoff and places elsewhere, and a later launch finds the cluster
  ready. A preparation that failed (no permission, quota) is also a CapacityError, its reason logged as
  an error, so placement moves on rather than failing a replica there every pass; it is retried
  after `retry_after_s`.
- Restart. The first observe() finds the regions' existing clusters (get_cluster), so replicas already
  running are reported; a cluster that cannot be read or registered then makes observe() raise (the
  pass is retried).
- The global endpoint. The config-cluster objects (gke/manifests.py: MultiClusterService + Ingress +
  BackendConfig, or the Gateway set) are applied with server-side apply into the config cluster (the
  first region's unless `config_region` says otherwise) whenever they change, i.e. when the set of
  regions serving a service (or its spec) changes: checked after a launch and in every observe()
  (level-triggered: a failed apply, say before the fleet feature has installed the CRDs, is retried). With the Gateway endpoint each serving cluster also gets
  the region-wide Service and its ServiceExport. The objects stay when a service has no replicas left,
  so its address is kept for when they return; nothing here deletes them.
- endpoint(service) is `http://<IP>` (`https://` with `endpoint.tls.gcp_certificate`) from the MultiClusterIngress `status.VIP` or the Gateway's
  `status.addresses[0].value`, None until the load balancer has one (about 10 minutes); read at most
  every `endpoint_poll_s`, and kept once found.
- A replica's URL is the kubernetes provider's in-cluster DNS name: the global load balancer, not
  gpuroam's own gateway, is the way in from outside. So on GKE the endpoint does NOT enforce what
  gpuroam's gateway does (API keys, per-caller limits and rates, isolation by identity, the operator-only
  pages): the load balancer reaches the workers directly. Keys read here (`read_secret`) serve a gateway
  that fronts the workers; putting gpuroam's gateway in each cluster, behind the load balancer, is not built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from gpuroam.catalog import Catalog, load_catalog
from gpuroam.providers.base import CapacityError, Launched, Observed, ProviderError, Regions, SpecLookup
from gpuroam.providers.gke import config_cluster
from gpuroam.providers.gke.clusters import USABLE, ClusterUnavailable, Fleet
from gpuroam.providers.gke.credentials import CLOUD_PLATFORM, BearerToken, GoogleCredentials, cluster_api_client
from gpuroam.providers.gke.manifests import (
    check_endpoint,
    cluster_name,
    config_cluster_manifests,
    gcp_certificate,
    workload_cluster_manifests,
)
from gpuroam.providers.kubernetes.api import API_FAILURES, brief, read_secret
from gpuroam.providers.kubernetes.manifests import DEFAULT_NAMESPACE, Manifest
from gpuroam.providers.kubernetes.provider import KubernetesProvider
from gpuroam.records import Replica
from gpuroam.spec import ServiceSpec

log = logging.getLogger("gpuroam.providers.gke")

ApiHost = Callable[[str, Any], str]  # (region, container_v1.Cluster) -> the API server's base URL


@dataclass(eq=False)
class _Region:
    """One region's cluster as this provider holds it."""

    name: str
    replicas: KubernetesProvider | None = None  # set once the cluster answers
    api: ApiClient | None = None
    preparing: Future[None] | None = None
    started: float = 0.0
    failed: ClusterUnavailable | None = None
    failed_at: float = 0.0


class GkeProvider:
    """Regions -> GKE Autopilot clusters in one project and fleet; the global endpoint in the config cluster."""

    name = "gke"

    def __init__(
        self,
        project: str,
        regions: Sequence[str],
        *,
        cluster_manager: Any,
        hub: Any,
        credentials: GoogleCredentials | BearerToken,
        endpoint: str = "ingress",
        config_region: str | None = None,
        catalog: Catalog | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        specs: SpecLookup | None = None,
        inventory: Mapping[str, Mapping[str, int | None]] | None = None,
        api_host: ApiHost | None = None,
        launch_wait_s: float = 5.0,
        retry_after_s: float = 60.0,
        endpoint_poll_s: float = 10.0,
        request_timeout_s: float = 10.0,
        fleet_options: Mapping[str, Any] | None = None,
        kubernetes_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not regions:
            raise ValueError("the gke provider needs at least one region")
        self.project = project
        self.serving_regions = list(dict.fromkeys(regions))
        self.config_region = config_region or self.serving_regions[0]
        self.endpoint_kind = check_endpoint(endpoint)
        self.fleet = Fleet(
            project, cluster_manager, hub, gateway_api=self.endpoint_kind == "gateway", **(fleet_options or {})
        )
        self.token = credentials if isinstance(credentials, BearerToken) else BearerToken(credentials)
        self.catalog = catalog or load_catalog()
        self.namespace = namespace
        self.specs = specs
        self.inventory = {region: dict(gpus) for region, gpus in (inventory or {}).items()}
        self.api_host = api_host
        self.launch_wait_s = launch_wait_s
        self.retry_after_s = retry_after_s
        self.endpoint_poll_s = endpoint_poll_s
        self.timeout = request_timeout_s
        self.kubernetes_options = dict(kubernetes_options or {})
        self.clock = clock
        every = [*self.serving_regions, *([] if self.config_region in regions else [self.config_region])]
        self._regions = {region: _Region(region) for region in every}
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=len(every), thread_name_prefix="gpuroam-gke")
        self._discovered = False
        self._replicas: dict[str, tuple[str, str]] = {}  # replica id -> (service, region)
        self._service_specs: dict[str, ServiceSpec] = {}  # from launches: the spec lookup may have none
        self._applied: dict[str, list[Manifest]] = {}  # service -> its config objects as last applied
        self._exported: set[tuple[str, str]] = set()  # (service, region) with the Gateway's workload objects
        self._addresses: dict[str, str] = {}  # service -> the load balancer's IP, once it has one
        self._address_checked: dict[str, float] = {}

    @classmethod
    def from_environment(
        cls, project: str | None, regions: Sequence[str], endpoint: str = "ingress", **options: Any
    ) -> GkeProvider:
        """The real clients, on Application Default Credentials (the project defaults to theirs)."""
        import google.auth
        from google.cloud import container_v1, gkehub_v1

        credentials, found = google.auth.default(scopes=[CLOUD_PLATFORM])
        project = project or found
        if not project:
            raise ValueError("no GCP project: pass one, or set it in the environment (GOOGLE_CLOUD_PROJECT)")
        return cls(
            project,
            regions,
            cluster_manager=container_v1.ClusterManagerClient(credentials=credentials),
            hub=gkehub_v1.GkeHubClient(credentials=credentials),
            credentials=credentials,
            endpoint=endpoint,
            **options,
        )

    def close(self) -> None:
        """Stop waiting on cluster creations (GKE carries on with them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- clusters ------------------------------------------------------------------------------------

    def ensure_clusters(self, regions: Sequence[str] | None = None, timeout_s: float | None = None) -> None:
        """Create and register every region's cluster now, in parallel, and wait (for `gpuroam up`)."""
        futures = [self._start(region) for region in regions or list(self._regions)]
        for future in futures:
            future.result(timeout=timeout_s)

    def _start(self, region: str) -> Future[None]:
        """The region's preparation, started in the background unless it is running already."""
        with self._lock:
            state = self._regions[region]
            if state.replicas is not None:  # ready: preparing again would drop its replica provider's state
                done: Future[None] = Future()
                done.set_result(None)
                return done
            if state.preparing is None or state.preparing.done():
                state.preparing = self._pool.submit(self._prepare, state)
                state.started, state.failed = self.clock(), None
            return state.preparing

    def _prepare(self, state: _Region, cluster: Any = None) -> None:
        """Cluster running, in the fleet (with the feature, for the config cluster), its client installed."""
        try:
            cluster = cluster or self.fleet.ensure_cluster(state.name)
            self.fleet.ensure_membership(state.name)
            if state.name == self.config_region:
                self.fleet.ensure_features(state.name)
            api = cluster_api_client(
                cluster.endpoint,
                cluster.master_auth.cluster_ca_certificate,
                self.token,
                host=self.api_host(state.name, cluster) if self.api_host else None,
            )
        except Exception as error:
            failure = error if isinstance(error, ClusterUnavailable) else ClusterUnavailable(state.name, str(error))
            log.log(
                logging.WARNING if failure.capacity else logging.ERROR,
                "cluster %s in %s not ready: %s",
                cluster_name(state.name),
                state.name,
                failure,
            )
            with self._lock:
                state.failed, state.failed_at = failure, self.clock()
            raise failure from error
        replicas = KubernetesProvider(
            {state.name: api},
            catalog=self.catalog,
            namespace=self.namespace,
            inventory={k: v for k, v in self.inventory.items() if k == state.name},
            request_timeout_s=self.timeout,
            clock=self.clock,
            **self.kubernetes_options,
        )
        with self._lock:
            state.api, state.replicas = api, replicas
        log.info("cluster %s in %s is ready for replicas", cluster_name(state.name), state.name)

    def _ready(self, region: str, gpu: str) -> KubernetesProvider:
        """The region's replica provider; CapacityError while its cluster is being created or has failed."""
        with self._lock:
            state = self._regions.get(region)
            if state is None or region not in self.serving_regions:
                raise CapacityError(region, gpu, f"region {region} is not one of this gke provider's regions")
            if state.replicas is not None:
                return state.replicas
            if state.failed is not None and self.clock() - state.failed_at < self.retry_after_s:
                raise CapacityError(region, gpu, f"no usable cluster: {state.failed}")
            future = self._start(region)
        try:
            future.result(timeout=self.launch_wait_s)
        except FutureTimeout:
            pass
        except ClusterUnavailable as error:
            raise CapacityError(region, gpu, f"no usable cluster: {error}") from error
        with self._lock:
            if state.replicas is not None:
                return state.replicas
            waited = self.clock() - state.started
        raise CapacityError(
            region,
            gpu,
            f"cluster creating: {cluster_name(region)} is being prepared ({waited:.0f} s so far; "
            "a new Autopilot cluster takes 5-10 minutes)",
        )

    def _discover_once(self) -> None:
        """Pick up the clusters that exist already (a restart), so their replicas are reported."""
        if self._discovered:
            return
        with self._lock:
            todo = [s for s in self._regions.values() if s.replicas is None and s.preparing is None]
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            results = list(pool.map(self._discover, todo))
        errors = [error for error in results if error is not None]
        if errors:
            raise ProviderError(f"cannot read the gke clusters yet: {errors[0]}")
        self._discovered = True

    def _discover(self, state: _Region) -> Exception | None:
        try:
            cluster = self.fleet.get_cluster(state.name)
            if cluster is None:
                return None
            if cluster.status in USABLE and cluster.endpoint:
                self._prepare(state, cluster)
            else:
                self._start(state.name)  # still being created: it holds no replica of ours yet
        except ProviderError as error:
            return error
        return None

    # -- the Provider interface ------------------------------------------------------------------------

    def regions(self) -> Regions:
        """Every configured region, with the GPU types the inventory (else the catalog) says it offers."""
        found: dict[str, dict[str, int | None]] = {}
        for region in self.serving_regions:
            replicas = self._regions[region].replicas
            if replicas is not None:
                found[region] = replicas.regions().get(region, {})
            elif region in self.inventory:
                found[region] = dict(self.inventory[region])
            elif region in self.catalog.regions:
                found[region] = {offer.gpu: None for offer in self.catalog.offers_in(region)}
            else:
                found[region] = {}
        return found

    def spot_regions(self) -> Regions:
        """Spot wherever a GPU is offered, free slots unknown: Autopilot makes a Spot node on demand."""
        return {region: dict.fromkeys(gpus) for region, gpus in self.regions().items()}

    def launch(self, replica: Replica, spec: ServiceSpec) -> Launched:
        launched = self._ready(replica.region, replica.gpu).launch(replica, spec)
        with self._lock:
            self._replicas[replica.id] = (replica.service, replica.region)
            self._service_specs[replica.service] = spec
        self._sync_endpoint(replica.service)
        return Launched(launched.url, {**launched.details, "gke_cluster": self.fleet.cluster_path(replica.region)})

    def observe(self) -> list[Observed]:
        self._discover_once()
        with self._lock:
            ready = [(s.name, s.replicas) for s in self._regions.values() if s.replicas is not None]
        with ThreadPoolExecutor(max_workers=max(1, len(ready))) as pool:
            results = list(pool.map(lambda item: item[1].observe(), ready))  # a ProviderError skips the pass
        seen = [o for found in results for o in found]
        with self._lock:
            self._replicas = {
                o.replica_id: (o.service, region)
                for (region, _), found in zip(ready, results, strict=True)
                for o in found
            }
            services = {service for service, _ in self._replicas.values()} | set(self._applied)
        for service in sorted(services):
            self._sync_endpoint(service)
        return seen

    def drain(self, replica_id: str) -> None:
        """Nothing to do: the load balancer's health checks and the pod's termination grace handle it."""

    def terminate(self, replica_id: str) -> None:
        with self._lock:
            where = self._replicas.get(replica_id)
            known = self._regions[where[1]].replicas if where and where[1] in self._regions else None
            targets = [known] if known else [s.replicas for s in self._regions.values() if s.replicas]
        for replicas in targets:
            replicas.terminate(replica_id)
        with self._lock:
            self._replicas.pop(replica_id, None)

    def read_secret(self, name: str) -> dict[str, str]:
        """A Secret of the provider's namespace in the config cluster (where the endpoint's objects live)."""
        with self._lock:
            api = self._regions[self.config_region].api
        if api is None:
            raise ProviderError(f"the config cluster ({self.config_region}) is not ready yet; Secret {name} waits")
        try:
            found = read_secret(CoreV1Api(api), name, self.namespace, self.timeout)
        except API_FAILURES as error:
            raise ProviderError(f"cannot read Secret {name} from the config cluster: {brief(error)}") from None
        if found is None:
            raise ProviderError(
                f"no Secret {name} in namespace {self.namespace} of the config cluster ({self.config_region}); "
                f"create it, one entry per key: kubectl -n {self.namespace} create secret generic {name} "
                "--from-literal=alice=KEY"
            )
        return found

    def endpoint(self, service: str) -> str | None:
        with self._lock:
            if service in self._addresses:
                return self._url(service, self._addresses[service])
            now = self.clock()
            if now - self._address_checked.get(service, float("-inf")) < self.endpoint_poll_s:
                return None
            self._address_checked[service] = now
            api = self._regions[self.config_region].api
        spec = self._spec(service)
        if api is None or spec is None:
            return None
        try:
            address = config_cluster.read_address(api, spec, self.endpoint_kind, self.namespace, self.timeout)
        except API_FAILURES as error:
            log.warning("cannot read the global endpoint of %s: %s", service, brief(error))
            return None
        if address is None:
            return None
        with self._lock:
            self._addresses[service] = address
        return self._url(service, address)

    def _url(self, service: str, address: str) -> str:
        """https with a pre-shared certificate (the load balancer then terminates TLS; by IP the name will not
        match it: clients use the certificate's DNS name, pointed at this address)."""
        spec = self._spec(service)
        return f"{'https' if spec is not None and gcp_certificate(spec) else 'http'}://{address}"

    # -- the global endpoint -------------------------------------------------------------------------------

    def _spec(self, service: str) -> ServiceSpec | None:
        spec = self.specs(service) if self.specs else None
        with self._lock:
            return spec or self._service_specs.get(service)

    def _sync_endpoint(self, service: str) -> None:
        """Apply the service's endpoint objects when they change (the regions serving it, its spec); a
        failure is logged and retried by the next call."""
        with self._lock:
            where = {region for name, region in self._replicas.values() if name == service}
            serving = [region for region in self.serving_regions if region in where]
            config = self._regions[self.config_region]
        spec = self._spec(service)
        if not serving or spec is None:
            return  # no replicas: the objects (and the address) stay for when they return
        if config.api is None:
            if config.failed is None or self.clock() - config.failed_at >= self.retry_after_s:
                self._start(self.config_region)
            log.info("global endpoint of %s waits for the config cluster %s", service, cluster_name(config.name))
            return
        with self._sync_lock:
            if self.endpoint_kind == "gateway":
                for region in serving:
                    self._export(spec, region)
            manifests = config_cluster_manifests(spec, serving, self.endpoint_kind, self.namespace)
            if self._applied.get(service) == manifests:
                return
            try:
                for manifest in manifests:
                    config_cluster.apply(config.api, manifest, self.timeout)
            except API_FAILURES as error:
                crds = isinstance(error, ApiException) and error.status == 404
                hint = " (its CRDs are not installed yet?)" if crds else ""
                log.warning("cannot apply the global endpoint of %s%s: %s; retrying", service, hint, brief(error))
                return
            self._applied[service] = manifests
        log.info("global endpoint of %s (%s) now over %s", service, self.endpoint_kind, ", ".join(serving))

    def _export(self, spec: ServiceSpec, region: str) -> None:
        """The Gateway endpoint's objects in a workload cluster: the region-wide Service and its export."""
        api = self._regions[region].api
        if (spec.name, region) in self._exported or api is None:
            return
        try:
            for manifest in workload_cluster_manifests(spec, region, "gateway", self.namespace):
                config_cluster.apply(api, manifest, self.timeout)
        except API_FAILURES as error:
            log.warning("cannot export %s from %s: %s; retrying", spec.name, region, brief(error))
            return
        self._exported.add((spec.name, region))
