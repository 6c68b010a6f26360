"""Regions as network namespaces, for real: namespaces, links with WAN delay, partitions, and a real
tiny worker inside a region's namespace. Skipped, with the reason, where namespaces cannot be made
(not root, no `ip`, no TUN nor netem)."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from gpuroam.catalog import load_catalog
from gpuroam.providers.base import ObservedState
from gpuroam.providers.local import LocalProvider
from gpuroam.providers.local.netns import (
    MAX_DELAY_MS,
    NetworkError,
    RegionNetwork,
    network_unavailable,
    one_way_delay_ms,
    region_delays,
)
from gpuroam.records import Replica, ReplicaState
from gpuroam.spec import ServiceSpec, parse_spec

SITES = {"us-central1": {"nvidia-l4": 1}, "europe-west4": {"nvidia-l4": 1}}
ECHO = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], 7007))
server.listen()
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    while data := conn.recv(4096):
        conn.sendall(data)
    conn.close()
"""

NetworkFactory = Callable[..., RegionNetwork]


def app_spec(model: str = "tiny", args: tuple[str, ...] = ()) -> ServiceSpec:
    """A service whose replicas run `model` with `args` (what a launch is given)."""
    return parse_spec({"name": "sd", "app": {"model": model, "args": list(args)}, "resources": {"gpus": ["nvidia-l4"]}})


# -- the delay model (no privileges needed) -----------------------------------------------------------


def test_one_way_delay_grows_with_distance_and_is_capped() -> None:
    assert one_way_delay_ms(0) == 1.0
    assert one_way_delay_ms(1000) == 8.5  # 1 + 1000 * 1.5 / 200
    assert one_way_delay_ms(40_000) == MAX_DELAY_MS


def test_region_delays_come_from_home_catalog_override_or_default() -> None:
    regions = ["us-central1", "europe-west4", "asia-southeast1", "mars"]
    delays = region_delays(regions, "us-central1", load_catalog(), {"asia-southeast1": 12.0})
    assert delays["us-central1"] == (1.0, "home")
    assert delays["europe-west4"][1] == "catalog" and 40 < delays["europe-west4"][0] < 70  # Iowa -> Netherlands
    assert delays["asia-southeast1"] == (12.0, "override")
    assert delays["mars"] == (25.0, "default")


# -- real namespaces ------------------------------------------------------------------------------------


@pytest.fixture
def make_network(tmp_path: Path) -> Iterator[NetworkFactory]:
    """`make_network(regions, **options)` creates a network in a fresh state dir; always torn down."""
    reason = network_unavailable()
    if reason:
        pytest.skip(f"regions as network namespaces unavailable: {reason}")
    made: list[RegionNetwork] = []

    def make(regions: list[str], state_dir: Path = tmp_path / "state", **options: object) -> RegionNetwork:
        network = RegionNetwork.create(state_dir, regions, **options)  # type: ignore[arg-type]
        made.append(network)
        return network

    try:
        yield make
    finally:
        for network in made:
            network.teardown()


@pytest.fixture
def echo_server() -> Iterator[Callable[[RegionNetwork, str], str]]:
    """`echo_server(network, region)` starts a TCP echo server inside the region's namespace; its address."""
    servers: list[subprocess.Popen[str]] = []

    def start(network: RegionNetwork, region: str) -> str:
        address = network.address(region)
        command = [*network.exec_prefix(region), sys.executable, "-c", ECHO, address]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        servers.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        return address

    try:
        yield start
    finally:
        for server in servers:
            server.kill()
            server.wait()


def _ip_names(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _round_trips(address: str) -> tuple[float, float]:
    """Seconds for a TCP connect (one RTT) and for one echo on it (one more RTT)."""
    started = time.monotonic()
    with socket.create_connection((address, 7007), timeout=5) as conn:
        connected = time.monotonic()
        conn.sendall(b"ping")
        assert conn.recv(16) == b"ping"
        return connected - started, time.monotonic() - connected


def test_setup_and_teardown_leave_nothing_behind(make_network: NetworkFactory, tmp_path: Path) -> None:
    network = make_network(["us-central1", "europe-west4"])
    prefix = network.prefix
    assert len(f"{prefix}h99") <= 15  # interface names must fit IFNAMSIZ
    assert {ns.split()[0] for ns in _ip_names("netns", "list").splitlines()} >= {f"{prefix}-0", f"{prefix}-1"}
    assert f"{prefix}h0" in _ip_names("link") and f"{prefix}h1" in _ip_names("link")
    recorded = json.loads((tmp_path / "state" / "local" / "network.json").read_text())
    assert set(recorded["regions"]) == {"us-central1", "europe-west4"}
    assert all(info["intact"] and info["up"] for info in network.describe().values())

    network.teardown()
    network.teardown()  # idempotent
    assert prefix not in _ip_names("netns", "list")
    assert prefix not in _ip_names("link")
    assert not (tmp_path / "state" / "local" / "network.json").exists()
    assert not [p for p in os.listdir("/proc") if p.isdigit() and prefix in _cmdline(p)]


def _cmdline(pid: str) -> str:
    try:
        return Path("/proc", pid, "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_the_link_delays_each_way_and_a_partition_drops_until_healed(
    make_network: NetworkFactory, echo_server: Callable[[RegionNetwork, str], str]
) -> None:
    network = make_network(["us-central1", "europe-west4"], delays_ms={"europe-west4": 25.0})
    assert network.delay_ms("europe-west4") == 25.0
    far, near = echo_server(network, "europe-west4"), echo_server(network, "us-central1")

    trips = [_round_trips(far) for _ in range(3)]
    connect, echo = statistics.median(t[0] for t in trips), statistics.median(t[1] for t in trips)
    assert 0.045 <= connect < 0.5 and 0.045 <= echo < 0.5, trips  # 2 x 25 ms each
    assert statistics.median(sum(_round_trips(near)) for _ in range(3)) < 0.045  # the home region: 1 ms each way

    with socket.create_connection((far, 7007), timeout=5) as survivor:
        network.partition("europe-west4")
        assert network.describe()["europe-west4"]["up"] is False
        with pytest.raises(TimeoutError):
            socket.create_connection((far, 7007), timeout=1.0)
        survivor.settimeout(0.5)
        survivor.sendall(b"during the cut")
        with pytest.raises(TimeoutError):
            survivor.recv(64)
        assert sum(_round_trips(near)) < 0.5  # other regions are unaffected

        network.heal("europe-west4")
        survivor.settimeout(10)
        assert survivor.recv(64) == b"during the cut"  # TCP retransmits across the healed link
    assert network.describe()["europe-west4"]["up"] is True
    assert 0.045 <= _round_trips(far)[0] < 0.5


def test_a_second_create_reattaches_and_repairs_a_dead_link(make_network: NetworkFactory, tmp_path: Path) -> None:
    first = make_network(["us-central1", "europe-west4"], delays_ms={"europe-west4": 5.0})
    first.partition("europe-west4")
    again = make_network(["us-central1", "europe-west4"])  # as a restarted `serve --network netns` does
    assert again.describe() == first.describe()  # same names and addresses, override and partition kept
    assert again.delay_ms("europe-west4") == 5.0 and again.describe()["europe-west4"]["up"] is False

    from gpuroam.providers.local import wanlink

    pid = wanlink.send_command(again.links["europe-west4"].host_if, "stats")["pid"]
    os.kill(int(pid), 9)  # type: ignore[call-overload]
    deadline = time.monotonic() + 5
    while again.describe()["europe-west4"]["intact"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert again.describe()["europe-west4"]["intact"] is False
    repaired = make_network(["us-central1", "europe-west4"])
    assert repaired.describe()["europe-west4"]["intact"] is True
    assert repaired.describe()["europe-west4"]["up"] is False  # restarted still partitioned, as recorded
    with pytest.raises(NetworkError, match="has no network namespace"):
        repaired.address("mars")
    with pytest.raises(NetworkError, match="not one of the regions"):
        make_network(["us-central1"], state_dir=tmp_path / "other", home="europe-west4")


def test_a_local_provider_worker_runs_in_its_region_namespace_and_is_found_after_a_restart(
    make_network: NetworkFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    network = make_network(list(SITES), delays_ms={"europe-west4": 10.0})
    provider = LocalProvider(SITES, state, network=network, ready_timeout_s=2.0)
    try:
        replica = Replica(
            "sd-eu", "sd", "europe-west4", "nvidia-l4", ReplicaState.PROVISIONING, created_at=0.0, updated_at=0.0
        )
        handle = provider.launch(replica, app_spec())
        address = network.address("europe-west4")
        assert handle.url == f"http://{address}:{handle.details['port']}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if [o.state for o in provider.observe()] == [ObservedState.READY]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"worker not ready in 60 s; log: {Path(handle.details['log']).read_text()[-2000:]}")
        started = time.monotonic()
        assert httpx.get(f"{handle.url}/internal/ping", timeout=5, trust_env=False).status_code == 200
        assert time.monotonic() - started >= 0.04  # connect + request: two round trips of 2 x 10 ms
        with pytest.raises(httpx.ConnectError):  # bound to the namespace address, not the root's loopback
            httpx.get(f"http://127.0.0.1:{handle.details['port']}/internal/ping", timeout=2, trust_env=False)

        for restarted in (
            LocalProvider(SITES, state),
            LocalProvider(SITES, state, network=RegionNetwork.attach(state)),
        ):
            [seen] = restarted.observe()
            assert (seen.replica_id, seen.region, seen.url, seen.state) == (
                "sd-eu",
                "europe-west4",
                handle.url,
                ObservedState.READY,
            )
            assert restarted.launch(replica, app_spec()) == handle  # no second process

        network.partition("europe-west4")
        assert [o.state for o in provider.observe()] == [ObservedState.STARTING]  # probes fail, no special case
        network.heal("europe-west4")
    finally:
        for seen in provider.observe():
            provider.terminate(seen.replica_id)
