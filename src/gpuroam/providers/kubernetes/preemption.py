"""Which replicas a cluster is about to take back: preemption notices read from the API's own objects.

A Spot VM gets about 30 s notice (reference elasticity.md); GKE gives a Spot pod at most 25 s of it. While
the pod still runs, the notice shows as:
- the pod's `DisruptionTarget` condition, status True, with reason `TerminationByKubelet` (graceful node
  shutdown: what GKE's kubelet does on a Spot preemption), `PreemptionByScheduler` (a pod of higher
  priority took its place) or `DeletionByTaintManager` (a NoExecute taint it does not tolerate). After a
  graceful node shutdown the pod ends `Failed` with reason `Terminated` and the message "Pod was terminated
  in response to imminent node shutdown." (reason `Shutdown` before Kubernetes 1.22; `NodeShutdown` for a
  pod refused because its node was shutting down), which reads the same, on clusters that set no condition;
- the pod's deletion: `metadata.deletionTimestamp`, which Kubernetes sets to the time the pod's grace ends.
  Read for a pod of a Spot replica, or one with a reason above: any other deletion is someone's choice (a
  rollout, kubectl), not a reclaim;
- its node's taints: `cloud.google.com/impending-node-termination` (GKE's node termination handler, on a
  node given a termination notice), `ToBeDeletedByClusterAutoscaler` (the autoscaler drains the node; its
  value is the UNIX second it was set) and `node.cloudprovider.kubernetes.io/shutdown` (the VM has stopped).

A signal with no deadline of its own gives its start (the condition's lastTransitionTime, the taint's time)
plus the pod's terminationGracePeriodSeconds, or now plus that grace when it has no start either; a pod that
has already ended was reclaimed by now at the latest; of several signals the earliest counts. Pure functions
over the API's JSON (camelCase dicts, as the provider reads them raw).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gpuroam.providers.kubernetes.names import CAPACITY_LABEL
from gpuroam.records import Capacity

Pod = Mapping[str, Any]
Node = Mapping[str, Any]

DISRUPTION_TARGET = "DisruptionTarget"
DISRUPTION_REASONS = frozenset({"TerminationByKubelet", "PreemptionByScheduler", "DeletionByTaintManager"})
SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."
SHUTDOWN_STATUS_REASONS = frozenset({"Shutdown", "NodeShutdown"})  # Kubernetes 1.21; refused at admission
IMPENDING_TERMINATION_TAINT = "cloud.google.com/impending-node-termination"
TO_BE_DELETED_TAINT = "ToBeDeletedByClusterAutoscaler"
NODE_SHUTDOWN_TAINT = "node.cloudprovider.kubernetes.io/shutdown"
RECLAIM_TAINTS = (IMPENDING_TERMINATION_TAINT, TO_BE_DELETED_TAINT, NODE_SHUTDOWN_TAINT)
DEFAULT_GRACE_S = 30  # Kubernetes' terminationGracePeriodSeconds when a pod names none
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Notice:
    """The platform takes the pod back at `at` (UNIX time; in the past: already), for `why`."""

    at: float
    why: str


def reclaim_time(pod: Pod, node: Node | None, now: float) -> float | None:
    """When the platform reclaims `pod` (on `node`, None when unknown or unread), or None: no signal."""
    found = notice(pod, node, now)
    return None if found is None else found.at


def notice(pod: Pod, node: Node | None, now: float) -> Notice | None:
    """The earliest preemption signal on `pod` and its `node` (see the module doc), or None."""
    grace = grace_s(pod)
    found: list[Notice] = []
    reason, since = disruption(pod)
    deleting = parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
    if deleting is not None and (is_spot(pod) or reason):
        found.append(Notice(deleting, f"pod deleted ({reason or 'Spot'})"))
    elif reason:
        found.append(Notice((now if since is None else since) + grace, reason))
    for key, taint_since in reclaim_taints(node):
        name = (node or {}).get("metadata", {}).get("name", "")
        found.append(Notice((now if taint_since is None else taint_since) + grace, f"node {name} tainted {key}"))
    if not found:
        return None
    first = min(found, key=lambda n: n.at)
    if phase(pod) in TERMINAL_PHASES and first.at > now:
        return Notice(now, first.why)  # it has ended: reclaimed already
    return first


def replica_notice(pods: Iterable[Pod], nodes: Mapping[str, Node | None], now: float) -> Notice | None:
    """A replica's notice: the earliest of its pods', unless one of its pods serves with none (a rollout's
    old pod going, or a preempted pod already replaced). `nodes` maps node names to what was read (None:
    not read, or the read failed: no signal from that node)."""
    found: list[Notice] = []
    for pod in pods:
        node = nodes.get(node_name(pod) or "")
        pod_notice = notice(pod, node, now)
        if pod_notice is None and serving(pod):
            return None
        if pod_notice is not None:
            found.append(pod_notice)
    return min(found, key=lambda n: n.at, default=None)


def nodes_to_read(pods: Iterable[Pod]) -> list[str]:
    """The distinct nodes under the running pods of Spot replicas: the only nodes whose taints are read."""
    return sorted(
        {name for pod in pods if is_spot(pod) and phase(pod) not in TERMINAL_PHASES and (name := node_name(pod))}
    )


def disruption(pod: Pod) -> tuple[str | None, float | None]:
    """The reason this pod is being disrupted, if one reads as a reclaim, and since when (None: unknown)."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        reclaims = cond.get("reason") in DISRUPTION_REASONS and cond.get("status") == "True"
        if cond.get("type") == DISRUPTION_TARGET and reclaims:
            return str(cond["reason"]), parse_time(cond.get("lastTransitionTime"))
    status = pod.get("status") or {}
    shutdown = status.get("reason") == "Terminated" and status.get("message") == SHUTDOWN_MESSAGE
    if shutdown or status.get("reason") in SHUTDOWN_STATUS_REASONS:
        return f"node shutdown ({status['reason']})", None
    return None, None


def reclaim_taints(node: Node | None) -> list[tuple[str, float | None]]:
    """The node's taints that mean it is going, each with the time it was set when the taint says."""
    found = []
    for taint in ((node or {}).get("spec") or {}).get("taints") or []:
        key = taint.get("key")
        if key not in RECLAIM_TAINTS:
            continue
        since = parse_time(taint.get("timeAdded"))
        if key == TO_BE_DELETED_TAINT and str(taint.get("value") or "").isdigit():
            since = float(taint["value"])
        found.append((str(key), since))
    return found


def is_spot(pod: Pod) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(CAPACITY_LABEL) == Capacity.SPOT.value


def serving(pod: Pod) -> bool:
    """Running, Ready and not being deleted: the pod its Service sends requests to."""
    deleting = (pod.get("metadata") or {}).get("deletionTimestamp")
    return not deleting and phase(pod) == "Running" and condition(pod, "Ready") == "True"


def grace_s(pod: Pod) -> float:
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    return float(DEFAULT_GRACE_S if grace is None else grace)


def node_name(pod: Pod) -> str | None:
    return (pod.get("spec") or {}).get("nodeName") or None


def phase(pod: Pod) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def condition(pod: Pod, kind: str) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            status = cond.get("status")
            return None if status is None else str(status)
    return None


def parse_time(value: object) -> float | None:
    """An API timestamp (RFC 3339, e.g. 2030-01-01T00:00:25Z) as UNIX time; None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
