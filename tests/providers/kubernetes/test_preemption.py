"""Preemption notices read from pods and nodes as the API returns them (camelCase JSON): each signal, the
deadline it gives, and what is no signal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gpuroam.providers.kubernetes.preemption import (
    nodes_to_read,
    notice,
    parse_time,
    reclaim_time,
    replica_notice,
)

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def at(seconds: float) -> str:
    """The API's timestamp `seconds` after NOW."""
    return datetime.fromtimestamp(NOW + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(
    capacity: str = "spot",
    *,
    node: str | None = "gke-spot-node-1",
    phase: str = "Running",
    ready: bool = True,
    deleted: float | None = None,
    disruption: tuple[str, float | None] | None = None,
    grace: int | None = 25,
    name: str = "sd-l4-abc123-7d9f-x1",
    status: dict[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": {"gpuroam.dev/capacity": capacity}}
    if deleted is not None:
        metadata.update(deletionTimestamp=at(deleted), deletionGracePeriodSeconds=grace)
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if disruption is not None:
        reason, since = disruption
        condition = {"type": "DisruptionTarget", "status": "True", "reason": reason}
        if since is not None:
            condition["lastTransitionTime"] = at(since)
        conditions.append(condition)
    spec: dict[str, Any] = {"nodeName": node} if node else {}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {"metadata": metadata, "spec": spec, "status": {"phase": phase, "conditions": conditions, **(status or {})}}


def node(*taints: dict[str, str], name: str = "gke-spot-node-1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"taints": list(taints)}}


def test_a_running_spot_pod_on_a_quiet_node_has_no_notice() -> None:
    quiet = node({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
    assert reclaim_time(pod(), None, NOW) is None
    assert reclaim_time(pod(), quiet, NOW) is None
    assert reclaim_time(pod(), node(), NOW) is None


def test_a_spot_pod_being_deleted_is_reclaimed_when_its_grace_ends() -> None:
    found = notice(pod(deleted=25), None, NOW)
    assert found is not None and found.at == NOW + 25 and "deleted" in found.why


def test_deleting_an_on_demand_pod_is_no_notice_unless_a_preemption_reason_says_so() -> None:
    assert reclaim_time(pod("on-demand", deleted=60), None, NOW) is None  # a rollout, kubectl delete: a choice
    preempted = pod("on-demand", deleted=60, disruption=("PreemptionByScheduler", 0))
    assert reclaim_time(preempted, None, NOW) == NOW + 60, "the deletion's deadline, not the condition's guess"


@pytest.mark.parametrize("reason", ["TerminationByKubelet", "PreemptionByScheduler", "DeletionByTaintManager"])
def test_each_disruption_reason_reclaims_the_pod_a_grace_after_it_was_set(reason: str) -> None:
    found = notice(pod(disruption=(reason, -5)), None, NOW)
    assert found is not None and found.at == NOW - 5 + 25 and found.why == reason
    assert reclaim_time(pod("on-demand", grace=60, disruption=(reason, -5)), None, NOW) == NOW - 5 + 60


def test_a_disruption_with_no_time_is_reclaimed_a_grace_from_now() -> None:
    assert reclaim_time(pod(disruption=("TerminationByKubelet", None)), None, NOW) == NOW + 25
    assert reclaim_time(pod(grace=None, disruption=("TerminationByKubelet", None)), None, NOW) == NOW + 30


@pytest.mark.parametrize("reason", ["EvictionByEvictionAPI", "DeletionByPodGC", ""])
def test_other_disruptions_and_false_conditions_are_no_notice(reason: str) -> None:
    assert reclaim_time(pod(disruption=(reason, 0)), None, NOW) is None
    cleared = pod()
    cleared["status"]["conditions"].append(
        {"type": "DisruptionTarget", "status": "False", "reason": "PreemptionByScheduler"}
    )
    assert reclaim_time(cleared, None, NOW) is None


def test_a_pod_ended_by_a_node_shutdown_was_reclaimed_already() -> None:
    ended = pod(phase="Failed", ready=False, disruption=("TerminationByKubelet", -2))
    assert reclaim_time(ended, None, NOW) == NOW, "ended: not later than now"
    shutdown = {"reason": "Terminated", "message": "Pod was terminated in response to imminent node shutdown."}
    assert reclaim_time(pod(phase="Failed", ready=False, status=shutdown), None, NOW) == NOW  # no condition (1.22-1.25)
    for legacy in ("Shutdown", "NodeShutdown"):
        assert reclaim_time(pod(phase="Failed", ready=False, status={"reason": legacy}), None, NOW) == NOW
    crashed = {"reason": "Error", "message": "exit code 1"}
    assert reclaim_time(pod(phase="Failed", ready=False, status=crashed), None, NOW) is None


@pytest.mark.parametrize(
    ("taint", "expected"),
    [
        ({"key": "cloud.google.com/impending-node-termination", "effect": "NoSchedule"}, NOW + 25),
        ({"key": "ToBeDeletedByClusterAutoscaler", "value": str(int(NOW) - 10), "effect": "NoSchedule"}, NOW + 15),
        ({"key": "ToBeDeletedByClusterAutoscaler", "value": "", "effect": "NoSchedule"}, NOW + 25),
        ({"key": "node.cloudprovider.kubernetes.io/shutdown", "effect": "NoSchedule"}, NOW + 25),
        ({"key": "node.cloudprovider.kubernetes.io/shutdown", "effect": "NoExecute", "timeAdded": at(-20)}, NOW + 5),
    ],
)
def test_a_node_being_taken_away_reclaims_its_pods(taint: dict[str, str], expected: float) -> None:
    found = notice(pod(), node(taint), NOW)
    assert found is not None and found.at == expected and taint["key"] in found.why


def test_soft_and_unrelated_taints_are_no_notice() -> None:
    soft = {"key": "DeletionCandidateOfClusterAutoscaler", "value": str(int(NOW)), "effect": "PreferNoSchedule"}
    cordoned = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    assert reclaim_time(pod(), node(soft, cordoned), NOW) is None


def test_the_earliest_signal_wins() -> None:
    tainted = node({"key": "cloud.google.com/impending-node-termination", "effect": "NoSchedule"})
    assert reclaim_time(pod(deleted=10), tainted, NOW) == NOW + 10
    assert reclaim_time(pod(deleted=40), tainted, NOW) == NOW + 25


def test_nodes_to_read_are_the_distinct_nodes_of_running_spot_pods() -> None:
    pods = [
        pod(node="b"),
        pod(node="a"),
        pod(node="a", name="second"),
        pod("on-demand", node="c"),
        pod(node=None, phase="Pending", ready=False),
        pod(node="d", phase="Failed", ready=False),
    ]
    assert nodes_to_read(pods) == ["a", "b"]
    assert nodes_to_read([]) == []


def test_a_replica_has_no_notice_while_one_of_its_pods_serves_without_one() -> None:
    old, new = pod(deleted=25, name="old"), pod(name="new", node="gke-spot-node-2")
    assert replica_notice([old, new], {}, NOW) is None, "a rollout's old pod going, or a replacement serving"
    pending = pod(node=None, phase="Pending", ready=False, name="new")
    assert replica_notice([old, pending], {}, NOW) == notice(old, None, NOW)
    ended = pod(phase="Failed", ready=False, disruption=("TerminationByKubelet", -3), name="old")
    found = replica_notice([ended, pending], {}, NOW)
    assert found is not None and found.at == NOW, "preempted already; its replacement is not up"


def test_a_replica_reads_its_nodes_taints_and_a_node_that_was_not_read_is_no_signal() -> None:
    tainted = node({"key": "cloud.google.com/impending-node-termination", "effect": "NoSchedule"})
    assert replica_notice([pod()], {"gke-spot-node-1": tainted}, NOW) == notice(pod(), tainted, NOW)
    assert replica_notice([pod()], {"gke-spot-node-1": None}, NOW) is None, "the read failed: no signal"
    assert replica_notice([pod()], {}, NOW) is None
    assert replica_notice([], {}, NOW) is None


def test_api_timestamps_parse_as_unix_time() -> None:
    assert parse_time("2030-01-01T12:00:00Z") == NOW
    assert parse_time("2030-01-01T12:00:00.500000Z") == NOW + 0.5
    assert parse_time("2030-01-01T12:00:00") == NOW, "no zone: the API's UTC"
    assert parse_time("yesterday") is None and parse_time(None) is None and parse_time("") is None
