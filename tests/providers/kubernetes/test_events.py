"""Event classification on event objects of each failure kind, as GKE's autoscaler writes them."""

from __future__ import annotations

import pytest

from gpuroam.providers.kubernetes.events import CapacityKind, classify, first_capacity_signal


def event(reason: str, message: str) -> dict:
    return {
        "kind": "Event",
        "apiVersion": "v1",
        "type": "Warning",
        "reason": reason,
        "message": message,
        "involvedObject": {"kind": "Pod", "name": "stable-diffusion-l4-7d9f-abcde", "namespace": "default"},
        "source": {"component": "cluster-autoscaler"},
    }


@pytest.mark.parametrize(
    ("reason", "message", "kind"),
    [
        (
            "FailedScaleUp",
            "Node scale up in zones us-central1-a associated with this pod failed: GCE out of resources.",
            CapacityKind.STOCKOUT,
        ),
        ("FailedScaleUp", "Node scale up in zones europe-west4-b failed: GCE quota exceeded.", CapacityKind.QUOTA),
        ("FailedScaleUp", "Node scale up failed: IP space exhausted.", CapacityKind.IP_EXHAUSTED),
        ("FailedScaleUp", "Node scale up failed: something unexpected", CapacityKind.SCALE_UP_FAILED),
        (
            "NotTriggerScaleUp",
            "pod didn't trigger scale-up: 1 in backoff after failed scale-up",
            CapacityKind.BACKOFF,
        ),
        (
            "NotTriggerScaleUp",
            "pod didn't trigger scale-up: 3 node(s) didn't match Pod's node affinity/selector",
            CapacityKind.UNSCHEDULABLE,
        ),
        (
            "FailedCreate",
            "Instance creation failed: ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS in us-central1-c",
            CapacityKind.STOCKOUT,
        ),
        ("FailedCreate", "Instance creation failed: QUOTA_EXCEEDED for NVIDIA_L4_GPUS", CapacityKind.QUOTA),
    ],
)
def test_each_failure_kind_is_a_capacity_signal(reason: str, message: str, kind: CapacityKind) -> None:
    signal = classify(event(reason, message))
    assert signal is not None and signal.kind is kind and signal.detail == message


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("FailedScheduling", "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
        ("TriggeredScaleUp", "pod triggered scale-up: [{gk3-pool-2 0->1 (max: 1000)}]"),
        ("Scheduled", "Successfully assigned default/x to gk3-node"),
        ("Pulling", "Pulling image ghcr.io/gpuroam/worker:0.1.0"),
    ],
)
def test_waiting_for_a_node_is_not_a_failure(reason: str, message: str) -> None:
    assert classify(event(reason, message)) is None


def test_a_stockout_outranks_the_backoff_that_follows_it() -> None:
    timeline = [
        event("FailedScheduling", "0/2 nodes are available"),
        event("TriggeredScaleUp", "pod triggered scale-up"),
        event("NotTriggerScaleUp", "pod didn't trigger scale-up: 1 in backoff after failed scale-up"),
        event("FailedScaleUp", "Node scale up in zones us-central1-a failed: GCE out of resources."),
    ]
    signal = first_capacity_signal(timeline)
    assert signal is not None and signal.kind is CapacityKind.STOCKOUT
    assert first_capacity_signal(timeline[:2]) is None


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("Preempted", "Preempted by pod 6f2c0e4a-5b1d-4d8e-9a3b-1c2d3e4f5a6b on node gke-spot-l4-1"),
        ("Preempting", "Preempted in order to admit critical pod"),
        ("TaintManagerEviction", "Marking for deletion Pod gpuroam/stable-diffusion-l4-7d9f-abcde"),
        ("Shutdown", "Shutdown manager detected shutdown event"),  # on the node, from its kubelet
    ],
)
def test_a_pod_taken_away_left_a_preemption_signal(reason: str, message: str) -> None:
    signal = classify(event(reason, message))
    assert signal is not None and signal.kind is CapacityKind.PREEMPTED and signal.detail == message


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("TaintManagerEviction", "Cancelling deletion of Pod gpuroam/stable-diffusion-l4-7d9f-abcde"),
        ("Shutdown", "Shutdown manager detected shutdown cancellation"),
        ("Killing", "Stopping container app"),
    ],
)
def test_a_cancelled_eviction_or_a_plain_stop_is_no_preemption(reason: str, message: str) -> None:
    assert classify(event(reason, message)) is None
