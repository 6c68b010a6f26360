"""The faults, each played against a served cluster under steady load.

A scenario names what it needs (PostgreSQL, network namespaces), does its fault and records when
the fault began and ended; the runner owns the cluster and the load and turns the load's records
into figures. `goal_zero_failed` is False only where no other path exists for a request: a gateway
killed outright has no second gateway in front of it here (on GKE, Google's load balancer is).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reliability_support.cluster import ROOT, SERVICE, Cluster, wait_for

VICTIM = "us-central1"  # serves the preferred GPU (nvidia-l4) in the example placement


@dataclass
class Fault:
    """When the fault was on (wall clock), and what the scenario observed besides the load."""

    began: float = 0.0
    ended: float = 0.0
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    play: Callable[[Cluster, float, Fault], None]  # (cluster, duration of the fault in s, record)
    needs: tuple[str, ...] = ()  # "postgres", "netns"
    goal_zero_failed: bool = True


def _the_victim(cluster: Cluster) -> tuple[str, int]:
    pids = cluster.worker_pids(region=VICTIM)
    assert pids, f"no worker in {VICTIM} to fault"
    return next(iter(pids.items()))


def region_partitioned(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    from gpuroam.providers.local.netns import RegionNetwork  # only with network namespaces

    network = RegionNetwork.attach(cluster.state)
    fault.began = time.time()
    network.partition(VICTIM)
    time.sleep(duration_s)
    network.heal(VICTIM)
    fault.ended = time.time()
    fault.notes.append(f"{VICTIM}'s link was down for {duration_s:g} s (its processes kept running)")


def region_killed(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    pids = cluster.worker_pids(region=VICTIM)
    fault.began = time.time()
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    fault.notes.append(f"SIGKILLed {len(pids)} worker(s) in {VICTIM}; its capacity stayed")
    wait_for(lambda: any(r["region"] == VICTIM and r["id"] not in pids for r in cluster.ready()), 120, "a new replica")
    fault.ended = time.time()
    fault.figures["replaced after s"] = round(fault.ended - fault.began, 1)


def replica_hung(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    replica, pid = _the_victim(cluster)
    fault.began = time.time()
    os.kill(pid, signal.SIGSTOP)  # its sockets still accept (the kernel's backlog); nothing answers
    time.sleep(duration_s)
    try:
        os.kill(pid, signal.SIGCONT)
        fault.notes.append(f"replica {replica} stopped (SIGSTOP) for {duration_s:g} s, then continued")
    except ProcessLookupError:  # the control plane gave up on it first (10 s unready) and replaced it
        replaced = [e for e in cluster.events() if e["replica"] == replica and e["kind"] in ("failed", "stockout")]
        after = f" {replaced[0]['ts'] - fault.began:.0f} s in" if replaced else ""
        fault.notes.append(f"replica {replica} stopped (SIGSTOP); the control plane replaced it{after}")
    fault.ended = time.time()


def replica_slow(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    """Throttle one worker to a quarter of its speed: stopped 300 ms of every 400 ms."""
    replica, pid = _the_victim(cluster)
    fault.began = time.time()
    try:
        while time.time() - fault.began < duration_s:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(0.3)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.1)
    except ProcessLookupError:
        fault.notes.append(f"the control plane replaced replica {replica} as unresponsive")
    fault.ended = time.time()
    fault.figures["slow replica"] = replica
    fault.notes.append(f"replica {replica} ran at 1/4 speed for {duration_s:g} s (SIGSTOP/SIGCONT duty cycle)")


def controller_killed(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    fault.began = time.time()
    cluster.kill_controller()
    time.sleep(duration_s)
    cluster.start()
    fault.ended = time.time()
    fault.notes.append(f"control plane SIGKILLed, restarted {duration_s:g} s later on the same state")


def gateway_restarted(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    old = cluster.gateway_pid()
    fault.began = time.time()
    command = [sys.executable, "-m", "gpuroam", "restart-gateway", "--state", str(cluster.state)]
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    fault.ended = time.time()
    fault.notes.append(f"`gpuroam restart-gateway`: pid {old} drained, pid {cluster.gateway_pid()} took over")
    fault.figures["hand-over s"] = round(fault.ended - fault.began, 2)


def gateway_killed(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    old = cluster.gateway_pid()
    fault.began = time.time()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: cluster.gateway_pid() != old, 30, "a new gateway", every_s=0.05)
    wait_for(lambda: _answers(cluster.endpoint), 30, "the new gateway to answer", every_s=0.05)
    fault.ended = time.time()
    fault.figures["endpoint down s"] = round(fault.ended - fault.began, 2)
    fault.notes.append(f"gateway pid {old} SIGKILLed; the control plane started pid {cluster.gateway_pid()}")


def _answers(endpoint: str) -> bool:
    import httpx

    return httpx.get(f"{endpoint}/gpuroam/health", timeout=1).status_code == 200


def database_unavailable(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    assert cluster.postgres is not None, "this scenario runs on a PostgreSQL store"
    fault.began = time.time()
    cluster.postgres.stop()
    time.sleep(duration_s)
    cluster.postgres.start()
    fault.ended = time.time()
    fault.notes.append(f"PostgreSQL (the state store) stopped for {duration_s:g} s, then started")


def region_flapping(cluster: Cluster, duration_s: float, fault: Fault) -> None:
    """Take the region's capacity away and give it back every 3 s; count placements into it."""
    client = cluster.client
    before = {e["id"] for e in cluster.events()}
    fault.began = time.time()
    flips = 0
    while time.time() - fault.began < duration_s:
        client.post("/chaos/fail", {"region": VICTIM})
        time.sleep(1.5)
        client.post("/chaos/recover", {"region": VICTIM})
        time.sleep(1.5)
        flips += 1
    fault.ended = time.time()
    placed = [
        e
        for e in cluster.events()
        if e["id"] not in before and e["kind"] == "placed" and e["region"] == VICTIM and e["service"] == SERVICE
    ]
    fault.figures["down/up cycles"] = flips
    fault.figures[f"placements into {VICTIM} while flapping"] = len(placed)
    preferred = "nvidia-l4"
    wait_for(lambda: any((r["region"], r["gpu"]) == (VICTIM, preferred) for r in cluster.ready()), 120, "move back")
    fault.figures[f"back on {preferred} in {VICTIM}, s after the last flap"] = round(time.time() - fault.ended, 1)
    fault.notes.append(f"{VICTIM} lost and regained all capacity every 3 s for {duration_s:g} s (workers SIGKILLed)")


SCENARIOS = (
    Scenario("region-partitioned", "A region cut off the network (link down)", region_partitioned, needs=("netns",)),
    Scenario("region-killed", "A region's processes killed (SIGKILL)", region_killed),
    Scenario("replica-hung", "One replica hung: accepts connections, never answers", replica_hung),
    Scenario("replica-slow", "One replica slow (a quarter of its speed)", replica_slow),
    Scenario("controller-killed", "Control plane SIGKILLed and restarted", controller_killed),
    Scenario("gateway-restarted", "Gateway restarted (`gpuroam restart-gateway`)", gateway_restarted),
    Scenario(
        "gateway-killed", "Gateway SIGKILLed (restarted by the control plane)", gateway_killed, goal_zero_failed=False
    ),
    Scenario(
        "database-unavailable", "State database (PostgreSQL) unavailable", database_unavailable, needs=("postgres",)
    ),
    Scenario("region-flapping", "A flapping region (down and up every 3 s)", region_flapping),
)
