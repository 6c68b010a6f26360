"""Which Kubernetes events mean "no GPU capacity here": a signal for placement, not an error.

On GKE a GPU pod that cannot get a node first reports FailedScheduling (normal: the cluster
autoscaler is adding one), then the autoscaler says how it went: FailedScaleUp with "GCE out of
resources" (a stockout), "GCE quota exceeded" or "IP space exhausted", and NotTriggerScaleUp
while the node group backs off, or when no node group can ever hold the pod (a GPU type the
region does not have). Those become capacity failures for the (region, GPU) pair; a pod still
pending past the provision timeout is one too, but that clock is the controller's.

A pod that was taken away leaves its events behind (an hour, by default): `Preempted` from the scheduler
(a pod of higher priority took its place), `Preempting` from the kubelet (room for a critical pod),
`TaintManagerEviction` "Marking for deletion" (a NoExecute taint), and on its node the kubelet's
`Shutdown` "detected shutdown event" (graceful node shutdown, what a Spot preemption starts). Those read
as PREEMPTED, a capacity loss too; the cancellations the same reasons announce do not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class CapacityKind(StrEnum):
    STOCKOUT = "stockout"  # GCE out of resources, ZONE_RESOURCE_POOL_EXHAUSTED
    QUOTA = "quota"  # GCE quota exceeded, QUOTA_EXCEEDED
    IP_EXHAUSTED = "ip-exhausted"
    BACKOFF = "backoff"  # the autoscaler backs the node group off after a failed scale-up
    UNSCHEDULABLE = "unschedulable"  # no node group can ever hold the pod here
    SCALE_UP_FAILED = "scale-up-failed"  # FailedScaleUp for another reason
    PREEMPTED = "preempted"  # the pod was taken away: preemption, a node shutdown, a NoExecute taint


@dataclass(frozen=True)
class CapacitySignal:
    kind: CapacityKind
    detail: str  # the event's message, for the timeline


_SCALE_UP_FAILURES = (
    (("out of resources", "zone_resource_pool_exhausted"), CapacityKind.STOCKOUT),
    (("quota exceeded", "quota_exceeded"), CapacityKind.QUOTA),
    (("ip space exhausted",), CapacityKind.IP_EXHAUSTED),
)
# reason -> what the message must say (None: any message); the same reasons also announce cancellations
_PREEMPTIONS = {
    "Preempted": None,
    "Preempting": None,
    "TaintManagerEviction": "marking for deletion",
    "Shutdown": "detected shutdown event",
}


def classify(event: Mapping[str, Any]) -> CapacitySignal | None:
    """The capacity signal in one event (a dict as the API returns it), or None."""
    reason = str(event.get("reason") or "")
    message = str(event.get("message") or "")
    lowered = message.lower()
    if reason == "FailedScaleUp":
        for needles, kind in _SCALE_UP_FAILURES:
            if any(needle in lowered for needle in needles):
                return CapacitySignal(kind, message)
        return CapacitySignal(CapacityKind.SCALE_UP_FAILED, message)
    if reason == "NotTriggerScaleUp":
        if "backoff" in lowered:
            return CapacitySignal(CapacityKind.BACKOFF, message)
        return CapacitySignal(CapacityKind.UNSCHEDULABLE, message)
    if reason == "FailedScheduling":
        return None  # expected while a GPU node is being added; only its outcome counts
    if reason in _PREEMPTIONS:
        needle = _PREEMPTIONS[reason]
        return CapacitySignal(CapacityKind.PREEMPTED, message) if needle is None or needle in lowered else None
    for needles, kind in _SCALE_UP_FAILURES[:2]:  # GCE codes can surface in other events too
        if needles[1] in lowered:
            return CapacitySignal(kind, message)
    return None


def first_capacity_signal(events: Iterable[Mapping[str, Any]]) -> CapacitySignal | None:
    """The most telling signal among a pod's events: a definite failure before a backoff notice."""
    signals = [s for s in (classify(e) for e in events) if s is not None]
    if not signals:
        return None
    order = list(CapacityKind)
    return min(signals, key=lambda s: order.index(s.kind))
