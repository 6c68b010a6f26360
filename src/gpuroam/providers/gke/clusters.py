"""GKE Autopilot clusters and their fleet: create on demand, wait, register, enable the ingress feature.

Every call is idempotent (get first; NotFound creates; AlreadyExists is success), so two controllers, or
one restarted mid-creation, converge on the same cluster, membership and feature. The exact client calls:
- container_v1.ClusterManagerClient: get_cluster(name=projects/P/locations/R/clusters/C);
  create_cluster(parent=projects/P/locations/R, cluster=Cluster(autopilot, release channel REGULAR,
  workload pool P.svc.id.goog)), then get_operation(name=.../operations/OP) until DONE.
- gkehub_v1.GkeHubClient: get_membership / create_membership(parent=projects/P/locations/global,
  membership_id=C, resource=Membership(endpoint.gke_cluster.resource_link=//container.googleapis.com/...,
  authority.issuer = the cluster's OIDC issuer, as `gcloud container fleet memberships register
  --enable-workload-identity` sets it)); get_feature / create_feature / update_feature for
  "multiclusteringress" (spec.multiclusteringress.config_membership), and for the Gateway endpoint the
  spec-less "multiclusterservicediscovery" feature too. Long-running hub calls are awaited with .result().
Not done here: enabling the project's APIs (container, gkehub, multiclusteringress, multiclusterservice-
discovery, trafficdirector) and the IAM grants MCI's service agent needs; they are one-time project setup.

Field and message names are those of google-cloud-container 2.67.0 and google-cloud-gke-hub 1.26.0 as
installed; this was tested only against fakes of those clients, never against real GCP here.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import container_v1, gkehub_v1
from google.cloud.gkehub_v1 import multiclusteringress_v1
from google.protobuf import field_mask_pb2

from gpuroam.providers.base import ProviderError
from gpuroam.providers.gke.manifests import cluster_name, membership_name

log = logging.getLogger("gpuroam.providers.gke")

MCI_FEATURE = "multiclusteringress"
MCS_FEATURE = "multiclusterservicediscovery"
CONFIG_MEMBERSHIP_MASK = "spec.multiclusteringress.config_membership"
LABELS = {"managed-by": "gpuroam"}
_Status = container_v1.Cluster.Status
USABLE = frozenset({_Status.RUNNING, _Status.RECONCILING, _Status.DEGRADED})  # the API server answers
RESOURCE_EXHAUSTED = 8  # google.rpc.Code, in a finished operation's error


class ClusterUnavailable(ProviderError):
    """A cluster could not be made ready; `capacity` when GCP says it is out of quota or resources."""

    def __init__(self, region: str, message: str, *, capacity: bool = False) -> None:
        super().__init__(message)
        self.region = region
        self.capacity = capacity


class Fleet:
    """One project's gpuroam clusters (one per region) and their fleet memberships."""

    def __init__(
        self,
        project: str,
        cluster_manager: Any,
        hub: Any,
        *,
        gateway_api: bool = False,
        create_timeout_s: float = 1800.0,
        poll_s: float = 10.0,
        progress_every_s: float = 60.0,
        hub_timeout_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.project = project
        self.cluster_manager = cluster_manager  # container_v1.ClusterManagerClient or a fake
        self.hub = hub  # gkehub_v1.GkeHubClient or a fake
        self.gateway_api = gateway_api
        self.create_timeout_s = create_timeout_s
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        self.hub_timeout_s = hub_timeout_s
        self.clock = clock
        self.sleep = sleep

    # -- names ---------------------------------------------------------------------------------------

    def location(self, region: str) -> str:
        return f"projects/{self.project}/locations/{region}"

    def cluster_path(self, region: str) -> str:
        return f"{self.location(region)}/clusters/{cluster_name(region)}"

    def resource_link(self, region: str) -> str:
        """How the fleet names the cluster: its self link without the scheme."""
        return f"//container.googleapis.com/{self.cluster_path(region)}"

    def issuer(self, region: str) -> str:
        """The cluster's OIDC issuer: fleet Workload Identity trusts tokens from it."""
        return f"https://container.googleapis.com/v1/{self.cluster_path(region)}"

    def membership_path(self, region: str) -> str:
        return f"projects/{self.project}/locations/global/memberships/{membership_name(region)}"

    def _feature_path(self, feature: str) -> str:
        return f"projects/{self.project}/locations/global/features/{feature}"

    # -- clusters ------------------------------------------------------------------------------------

    def get_cluster(self, region: str) -> container_v1.Cluster | None:
        """The region's cluster as GKE has it now, or None if there is none."""
        try:
            cluster: container_v1.Cluster = self.cluster_manager.get_cluster(name=self.cluster_path(region))
            return cluster
        except gexc.NotFound:
            return None
        except gexc.GoogleAPIError as error:
            raise _unavailable(region, f"cannot read cluster {cluster_name(region)}", error) from error

    def cluster_spec(self, region: str) -> container_v1.Cluster:
        """An Autopilot cluster: Google runs the nodes, GPU nodes come per pod from its node selectors."""
        cluster = container_v1.Cluster(
            name=cluster_name(region),
            autopilot=container_v1.Autopilot(enabled=True),
            release_channel=container_v1.ReleaseChannel(channel=container_v1.ReleaseChannel.Channel.REGULAR),
            workload_identity_config=container_v1.WorkloadIdentityConfig(workload_pool=f"{self.project}.svc.id.goog"),
            resource_labels=LABELS,
        )
        if self.gateway_api:  # the multi-cluster Gateway's config cluster needs the Gateway API CRDs
            channel = container_v1.GatewayAPIConfig.Channel.CHANNEL_STANDARD
            cluster.network_config = container_v1.NetworkConfig(
                gateway_api_config=container_v1.GatewayAPIConfig(channel=channel)
            )
        return cluster

    def ensure_cluster(self, region: str) -> container_v1.Cluster:
        """The region's cluster, created if missing, once its API server answers (blocks: 5-10 min to create)."""
        cluster = self.get_cluster(region)
        deadline = self.clock() + self.create_timeout_s
        if cluster is None:
            name = cluster_name(region)
            log.info("creating GKE Autopilot cluster %s in %s", name, region)
            try:
                operation = self.cluster_manager.create_cluster(
                    parent=self.location(region), cluster=self.cluster_spec(region)
                )
            except gexc.AlreadyExists:
                log.info("cluster %s already being created (another controller?); waiting for it", name)
            except gexc.GoogleAPIError as error:
                raise _unavailable(region, f"cannot create cluster {name}", error) from error
            else:
                self._wait_operation(region, operation, deadline)
            cluster = self.get_cluster(region)
        return self._wait_usable(region, cluster, deadline)

    def _wait_operation(self, region: str, operation: container_v1.Operation, deadline: float) -> None:
        """Poll the create operation until DONE; its error, or running past the deadline, raises."""
        name = operation.name if "/" in operation.name else f"{self.location(region)}/operations/{operation.name}"
        started = last_log = self.clock()
        while operation.status != container_v1.Operation.Status.DONE:
            now = self.clock()
            if now >= deadline:
                raise ClusterUnavailable(
                    region,
                    f"creating cluster {cluster_name(region)} did not finish in {now - started:.0f} s "
                    f"(operation {name} is {operation.status.name}); GKE carries on, the next attempt waits for it",
                )
            if now - last_log >= self.progress_every_s:
                log.info("cluster %s: %s for %.0f s", cluster_name(region), operation.status.name, now - started)
                last_log = now
            self.sleep(self.poll_s)
            try:
                operation = self.cluster_manager.get_operation(name=name)
            except gexc.GoogleAPIError as error:  # a blip while polling: keep polling until the deadline
                log.warning("cannot read operation %s (%s); polling on", name, error)
        failure = operation.error
        if failure.code or failure.message or operation.status_message:
            message = failure.message or operation.status_message
            raise ClusterUnavailable(
                region,
                f"creating cluster {cluster_name(region)} failed: {message}",
                capacity=failure.code == RESOURCE_EXHAUSTED,
            )
        log.info("cluster %s created in %.0f s", cluster_name(region), self.clock() - started)

    def _wait_usable(self, region: str, cluster: container_v1.Cluster | None, deadline: float) -> container_v1.Cluster:
        """Poll get_cluster while it is PROVISIONING (found so, or just created); ERROR or STOPPING raise."""
        while True:
            if cluster is None:
                raise ClusterUnavailable(region, f"cluster {cluster_name(region)} is gone (deleted meanwhile?)")
            if cluster.status in USABLE and cluster.endpoint:
                return cluster
            if cluster.status not in (_Status.PROVISIONING, _Status.STATUS_UNSPECIFIED, _Status.RUNNING):
                detail = f": {cluster.status_message}" if cluster.status_message else ""
                raise ClusterUnavailable(region, f"cluster {cluster.name} is {cluster.status.name}{detail}")
            if self.clock() >= deadline:
                raise ClusterUnavailable(region, f"cluster {cluster.name} still {cluster.status.name}; waiting on")
            self.sleep(self.poll_s)
            cluster = self.get_cluster(region)

    # -- the fleet -------------------------------------------------------------------------------------

    def ensure_membership(self, region: str) -> None:
        """Register the region's cluster to the project's fleet (global location), if it is not yet."""
        name = self.membership_path(region)
        try:
            found = self.hub.get_membership(name=name)
        except gexc.NotFound:
            found = None
        except gexc.GoogleAPIError as error:
            raise _unavailable(region, f"cannot read fleet membership {name}", error) from error
        if found is not None:
            link = found.endpoint.gke_cluster.resource_link
            if not link.endswith(f"/locations/{region}/clusters/{cluster_name(region)}"):
                log.warning("fleet membership %s points at %r, not at cluster %s", name, link, cluster_name(region))
            return
        membership = gkehub_v1.Membership(
            endpoint=gkehub_v1.MembershipEndpoint(
                gke_cluster=gkehub_v1.GkeCluster(resource_link=self.resource_link(region))
            ),
            authority=gkehub_v1.Authority(issuer=self.issuer(region)),
            labels=LABELS,
        )
        log.info("registering cluster %s to the fleet as %s", cluster_name(region), membership_name(region))
        self._long_running(
            region,
            f"registering {name}",
            lambda: self.hub.create_membership(
                parent=f"projects/{self.project}/locations/global",
                membership_id=membership_name(region),
                resource=membership,
            ),
        )

    def ensure_features(self, config_region: str) -> None:
        """Multi Cluster Ingress on, its config membership the config region's (and MCS for the Gateway)."""
        config = self.membership_path(config_region)
        wanted = gkehub_v1.Feature(
            spec=gkehub_v1.CommonFeatureSpec(
                multiclusteringress=multiclusteringress_v1.FeatureSpec(config_membership=config)
            )
        )
        current = self._get_feature(config_region, MCI_FEATURE)
        if current is None:
            log.info("enabling %s with config membership %s", MCI_FEATURE, config)
            self._create_feature(config_region, MCI_FEATURE, wanted)
        elif not _same_membership(current.spec.multiclusteringress.config_membership, config):
            log.info("moving %s's config membership to %s", MCI_FEATURE, config)
            self._long_running(
                config_region,
                f"updating {MCI_FEATURE}",
                lambda: self.hub.update_feature(
                    name=self._feature_path(MCI_FEATURE),
                    resource=wanted,
                    update_mask=field_mask_pb2.FieldMask(paths=[CONFIG_MEMBERSHIP_MASK]),
                ),
            )
        if self.gateway_api and self._get_feature(config_region, MCS_FEATURE) is None:
            log.info("enabling %s (the fleet's ServiceExport/ServiceImport)", MCS_FEATURE)
            self._create_feature(config_region, MCS_FEATURE, gkehub_v1.Feature())

    def _get_feature(self, region: str, feature: str) -> gkehub_v1.Feature | None:
        try:
            found: gkehub_v1.Feature = self.hub.get_feature(name=self._feature_path(feature))
            return found
        except gexc.NotFound:
            return None
        except gexc.GoogleAPIError as error:
            raise _unavailable(region, f"cannot read fleet feature {feature}", error) from error

    def _create_feature(self, region: str, feature: str, resource: gkehub_v1.Feature) -> None:
        self._long_running(
            region,
            f"enabling {feature}",
            lambda: self.hub.create_feature(
                parent=f"projects/{self.project}/locations/global", feature_id=feature, resource=resource
            ),
        )

    def _long_running(self, region: str, what: str, start: Callable[[], Any]) -> None:
        """Start a hub operation and wait for its result; AlreadyExists (a racing controller) is success."""
        try:
            start().result(timeout=self.hub_timeout_s)
        except gexc.AlreadyExists:
            log.info("%s: already done", what)
        except concurrent.futures.TimeoutError as error:
            raise ClusterUnavailable(region, f"{what} did not finish in {self.hub_timeout_s:.0f} s") from error
        except gexc.GoogleAPIError as error:
            raise _unavailable(region, what, error) from error


def _same_membership(found: str, wanted: str) -> bool:
    """The hub may name the project by number: compare the membership's own name."""
    return bool(found) and found.rsplit("/memberships/", 1)[-1] == wanted.rsplit("/memberships/", 1)[-1]


def _unavailable(region: str, what: str, error: Exception) -> ClusterUnavailable:
    message = getattr(error, "message", None) or str(error)
    return ClusterUnavailable(region, f"{what}: {message}", capacity=isinstance(error, gexc.ResourceExhausted))
