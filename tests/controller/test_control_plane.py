"""The whole control plane on this machine: real worker processes as replicas, the API, the CLI.

These are the issue's end-to-end checks: up in two regions, expand, lose a GPU type and carry
on, recover back to the preferred GPU make-before-break, and a controller SIGKILLed mid-`up`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from gpuroam.cli.scripted import SteadyLoad
from gpuroam.controller.client import ControlPlaneClient
from gpuroam.gateway.supervisor import GatewayProcess
from gpuroam.providers.local import LocalProvider, free_port
from gpuroam.serve import ControlPlane
from gpuroam.statedir import ServerInfo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def fast_spec(tmp_path: Path) -> Path:
    """The example service with timings short enough for a test."""
    spec = yaml.safe_load((EXAMPLES / "stable-diffusion.yaml").read_text())
    spec["placement"].update(provision_timeout_s=90, block_ttl_s=3, block_max_s=20, move_back_after_s=2)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.25) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def ready(client: ControlPlaneClient, name: str = "stable-diffusion") -> list[dict]:
    return [r for r in client.get(f"/services/{name}")["replicas"] if r["state"] == "ready"]


def test_up_expand_fail_gpu_and_recover(plane: ControlPlane, tmp_path: Path) -> None:
    from gpuroam.spec import load_spec, spec_to_dict

    client = ControlPlaneClient(plane.url, plane.token)
    client.post("/services", spec_to_dict(load_spec(fast_spec(tmp_path))))
    preferred = {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
    wait_for(lambda: len({r["region"] for r in ready(client)}) >= 2, 120, "2 ready regions")
    # A raced candidate may serve first; the service then settles on the preferred GPU.
    wait_for(lambda: {(r["region"], r["gpu"]) for r in ready(client)} == preferred, 60, "the preferred placement")
    status = client.get("/status")
    service = status["services"][0]
    assert {"name", "endpoint", "replicas"} <= set(service)
    assert all({"id", "region", "gpu", "state", "url"} <= set(r) for r in service["replicas"])
    endpoint = service["endpoint"]
    assert httpx.get(f"{endpoint}/internal/ping").status_code == 200

    expanded = client.post("/services/stable-diffusion/expand", {"region": "asia-southeast1"})
    assert expanded["endpoint"] == endpoint, "expand leaves the endpoint unchanged"
    wait_for(lambda: len({r["region"] for r in ready(client)}) == 3, 120, "3 ready regions")

    load = SteadyLoad(endpoint).__enter__()
    wait_for(lambda: load.ok >= 5, 60, "traffic through the gateway")
    client.post("/chaos/fail", {"gpu": "nvidia-l4"})
    failed_at = load.ok
    zero_ready_since: float | None = None
    longest_gap = 0.0
    deadline = time.monotonic() + 120
    while True:
        serving = ready(client)
        now = time.monotonic()
        if not serving:
            zero_ready_since = zero_ready_since or now
        elif zero_ready_since is not None:
            longest_gap, zero_ready_since = max(longest_gap, now - zero_ready_since), None
        if len({r["region"] for r in serving}) >= 2 and all(r["gpu"] != "nvidia-l4" for r in serving):
            break
        assert now < deadline, f"no failover: {serving}"
        time.sleep(0.25)
    assert longest_gap < 30, f"no ready replica for {longest_gap:.1f} s"

    client.post("/chaos/recover", {})
    low_water = 99
    deadline = time.monotonic() + 180
    while True:
        serving = ready(client)
        low_water = min(low_water, len(serving))
        gpus = {(r["region"], r["gpu"]) for r in serving}
        if {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")} <= gpus and len(serving) == 3:
            break
        assert time.monotonic() < deadline, f"did not move back: {gpus}"
        time.sleep(0.25)
    assert low_water >= 2, "make before break: moving back never dropped below two ready replicas"
    recovered_at = load.ok
    wait_for(lambda: len(load.since(recovered_at)) >= 10, 60, "traffic after the move back")
    load.__exit__()
    assert load.failures == [], f"requests failed during failover or recovery: {load.failures[:5]}"
    assert {s.gpu for s in load.served[failed_at:recovered_at]} - {"nvidia-l4"}, "served on another GPU"
    # Which replica takes the traffic now is routing's choice (an A100 counts as faster than an L4).
    kinds = {e["kind"] for e in client.get("/events")}
    assert {"placed", "ready", "failover", "blocked", "recovered", "drained", "chaos", "expanded"} <= kinds


def test_requests_wait_at_the_gateway_while_no_replica_is_live(plane: ControlPlane, tmp_path: Path) -> None:
    from gpuroam.spec import load_spec, spec_to_dict

    client = ControlPlaneClient(plane.url, plane.token)
    client.post("/services", spec_to_dict(load_spec(fast_spec(tmp_path))))
    preferred = {("us-central1", "nvidia-l4"), ("europe-west4", "nvidia-l4")}
    wait_for(lambda: {(r["region"], r["gpu"]) for r in ready(client)} == preferred, 120, "the preferred placement")
    endpoint = client.get("/services/stable-diffusion")["endpoint"]
    with SteadyLoad(endpoint) as load:
        wait_for(lambda: load.ok >= 5, 60, "traffic through the gateway")
        client.post("/chaos/fail", {"gpu": "nvidia-l4"})  # every replica dies: none is live until T4s start
        wait_for(lambda: not ready(client), 10, "no ready replica", every=0.05)
        mark = load.ok
        wait_for(lambda: len(load.since(mark)) >= 10, 90, "traffic on the replacements")
    assert load.failures == [], f"requests failed while no replica was live: {load.failures[:5]}"
    assert {s.gpu for s in load.since(mark)} <= {"nvidia-tesla-t4", "nvidia-tesla-a100"}
    metrics = httpx.get(f"{endpoint}/metrics", headers={"Authorization": f"Bearer {plane.token}"}).text
    held = [line for line in metrics.splitlines() if line.startswith("gpuroam_gateway_hold_seconds_count")]
    assert held and float(held[0].split()[-1]) > 0, "some requests were held at the gateway"


def test_the_api_wants_the_token(plane: ControlPlane) -> None:
    assert httpx.get(f"{plane.url}/api/v1/status").status_code == 401
    assert httpx.get(f"{plane.url}/api/v1/status", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert ControlPlaneClient(plane.url, plane.token).get("/status") == {"services": []}


def start_serve(state: Path, port: int, store_url: str | None) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "gpuroam",
        "serve",
        "--state",
        str(state),
        "--port",
        str(port),
        "--regions",
        str(EXAMPLES / "local-regions.yaml"),
        "--gateway-port",
        str(free_port()),  # the base for new services; a service keeps the port it got
    ]
    if store_url:
        command += ["--store", store_url]
    log = (state.parent / "serve.log").open("a")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_controller_killed_mid_up_restarts_with_the_same_replicas(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store_url = request.getfixturevalue("fresh_postgres_url") if backend == "postgresql" else None
    state, port = tmp_path / "state", free_port()
    state.mkdir()
    provider = LocalProvider.from_file(EXAMPLES / "local-regions.yaml", state)
    server = start_serve(state, port, store_url)
    try:
        info = wait_for(lambda: ServerInfo.read(state), 60, "server.json")
        client = ControlPlaneClient(info.url, info.token)
        wait_for(lambda: _answers(client), 60, "the API")
        from gpuroam.spec import load_spec, spec_to_dict

        client.post("/services", spec_to_dict(load_spec(fast_spec(tmp_path))))
        wait_for(lambda: provider.observe(), 60, "a launched worker", every=0.05)
        gateway_pid = wait_for(lambda: GatewayProcess(state, info.url).running_pid(), 30, "the gateway")
        server.send_signal(signal.SIGKILL)  # mid-up: replicas launched, none ready yet
        server.wait(timeout=10)
        before = {o.region: o.replica_id for o in provider.observe()}
        assert GatewayProcess(state, info.url).running_pid() == gateway_pid, "the data plane outlives the controller"

        server = start_serve(state, port, store_url)
        wait_for(lambda: _answers(client), 60, "the API after restart")
        wait_for(lambda: len({r["region"] for r in ready(client)}) >= 2, 120, "2 ready regions after restart")
        wait_for(lambda: _settled(client, provider), 30, "store and processes to agree")
        running = {o.replica_id for o in provider.observe()}
        wanted = {
            r["id"]
            for r in client.get("/services/stable-diffusion")["replicas"]
            if r["state"] in ("ready", "provisioning")
        }
        assert running == wanted, "no orphan process and no replica without a process"
        events = client.get("/events")
        assert not [e for e in events if e["kind"] == "orphan"], "every process launched before the kill was known"
        for replica in ready(client):  # adopted, not launched again: a raced extra may have been released
            if replica["region"] in before:
                assert replica["id"] == before[replica["region"]], "a replica was launched twice in a region"
        regions = [r["region"] for r in ready(client)]
        assert len(regions) == len(set(regions)) == 2, "no duplicate replica in a region"
        assert GatewayProcess(state, info.url).running_pid() == gateway_pid, "the gateway was adopted, not doubled"
        endpoint = client.get("/services/stable-diffusion")["endpoint"]
        assert httpx.get(f"{endpoint}/sdapi/v1/sd-models").status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        assert not GatewayProcess(state, info.url).running_pid(), "serve stops its gateway on SIGTERM"
        left = len(provider.observe())
        for seen in provider.observe():
            provider.terminate(seen.replica_id)
    assert left and f"{left} replica(s) keep running" in (tmp_path / "serve.log").read_text(), (
        "serve says what it leaves"
    )


def _answers(client: ControlPlaneClient) -> bool:
    try:
        client.get("/status")
        return True
    except Exception:  # noqa: BLE001 - still starting
        return False


def _settled(client: ControlPlaneClient, provider: LocalProvider, replicas_wanted: int = 2) -> bool:
    """Store and processes agree on exactly the replicas the spec wants. A raced extra that just became
    ready counts as live until the same pass drains it: agreeing on three is not settled yet."""
    replicas = client.get("/services/stable-diffusion")["replicas"]
    wanted = {r["id"] for r in replicas if r["state"] in ("ready", "provisioning")}
    agree = wanted == {o.replica_id for o in provider.observe()}
    return agree and len(wanted) == replicas_wanted and all(r["state"] != "provisioning" for r in replicas)


def test_the_state_dir_is_its_owners_only(plane: ControlPlane) -> None:
    """It holds the API token, the store and the logs, which name every replica's address."""
    assert plane.state_dir.stat().st_mode & 0o777 == 0o700
    files = [path for path in plane.state_dir.iterdir() if path.is_file()]
    assert {"token", "server.json"} <= {path.name for path in files}
    assert {path.name: path.stat().st_mode & 0o777 for path in files} == {path.name: 0o600 for path in files}


def test_keys_made_and_revoked_with_the_cli_take_effect_at_the_endpoint_within_seconds(
    plane: ControlPlane, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from gpuroam.cli import app
    from gpuroam.spec import load_spec, spec_to_dict

    client = ControlPlaneClient(plane.url, plane.token)
    client.post("/services", spec_to_dict(load_spec(fast_spec(tmp_path))))
    wait_for(lambda: bool(ready(client)), 120, "a ready replica")
    endpoint = client.get("/services/stable-diffusion")["endpoint"]
    body = {"steps": 2, "width": 64, "height": 64}
    assert httpx.post(f"{endpoint}/sdapi/v1/txt2img", json=body, timeout=60).status_code == 200, "open before any key"
    cli = ["--server", plane.url, "--state", str(plane.state_dir)]
    made = CliRunner().invoke(app, ["keys", "add", "stable-diffusion", "--name", "ci", *cli, "--json"])
    assert made.exit_code == 0, made.output
    key = json.loads(made.stdout)["key"]
    wait_for(lambda: httpx.get(f"{endpoint}/sdapi/v1/progress").status_code == 401, 5, "the endpoint asks for a key")
    with_key = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{endpoint}/sdapi/v1/txt2img", json=body, headers=with_key, timeout=60).status_code == 200
    assert CliRunner().invoke(app, ["keys", "add", "stable-diffusion", "--name", "spare", *cli]).exit_code == 0
    listed = CliRunner().invoke(app, ["keys", "list", "stable-diffusion", *cli])
    assert "ci" in listed.stdout and "spare" in listed.stdout and key not in listed.stdout
    assert CliRunner().invoke(app, ["keys", "revoke", "stable-diffusion", "ci", *cli]).exit_code == 0
    revoked = time.monotonic()
    wait_for(lambda: httpx.get(f"{endpoint}/sdapi/v1/progress", headers=with_key).status_code == 401, 5, "refused")
    assert time.monotonic() - revoked < 2, "a revoked key is refused within seconds"


def test_down_returns_once_no_worker_process_of_the_service_is_left(plane: ControlPlane, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gpuroam.cli import app
    from gpuroam.spec import load_spec, spec_to_dict

    client = ControlPlaneClient(plane.url, plane.token)
    client.post("/services", spec_to_dict(load_spec(fast_spec(tmp_path))))
    wait_for(lambda: len(ready(client)) >= 2, 120, "2 ready replicas")
    assert plane.provider.observe(), "worker processes run"
    result = CliRunner().invoke(app, ["down", "stable-diffusion", "--state", str(tmp_path / "state"), "--json"])
    assert result.exit_code == 0, result.output
    said = json.loads(result.output)
    assert said["removed"] is True and said["left"] == []
    assert plane.provider.observe() == [], "no worker process is left when down returns"


def test_stop_takes_every_service_down_then_serve_and_its_gateway_leaving_no_process(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gpuroam.cli import app
    from gpuroam.spec import load_spec, spec_to_dict

    state, port = tmp_path / "state", free_port()
    state.mkdir()
    provider = LocalProvider.from_file(EXAMPLES / "local-regions.yaml", state)
    server = start_serve(state, port, None)
    try:
        info = wait_for(lambda: ServerInfo.read(state), 60, "server.json")
        client = ControlPlaneClient(info.url, info.token)
        wait_for(lambda: _answers(client), 60, "the API")
        client.post("/services", spec_to_dict(load_spec(fast_spec(tmp_path))))
        wait_for(lambda: len(ready(client)) >= 2, 120, "2 ready replicas")
        gateway = GatewayProcess(state, info.url)
        assert gateway.running_pid() and provider.observe()
        refused = httpx.post(f"{info.url}/api/v1/shutdown", headers={"Authorization": f"Bearer {info.token}"})
        assert refused.status_code == 409 and "stable-diffusion" in refused.text, "no stop that orphans replicas"
        result = CliRunner().invoke(app, ["stop", "--state", str(state)])
        assert result.exit_code == 0, result.output
        assert "stable-diffusion removed" in result.output and "stopped" in result.output
        assert server.wait(timeout=30) == 0, "serve ended on its own"
        assert provider.observe() == [] and not gateway.running_pid(), "no worker and no gateway is left"
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        for seen in provider.observe():
            provider.terminate(seen.replica_id)
