"""Where backends come from: --backend flags, and the control plane (kept while it is down)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from harness import FakeReplica, LoopThread, Reply, Seen

from gpuroam.catalog import load_catalog
from gpuroam.gateway import Gateway, follow_control_plane, parse_backend, services_from_api
from gpuroam.providers.local import free_port


def test_backend_flags_name_a_url_and_optionally_where_it_runs() -> None:
    plain = parse_backend("http://127.0.0.1:7861/")
    assert (plain.replica, plain.url, plain.region, plain.gpu) == (
        "127.0.0.1:7861",
        "http://127.0.0.1:7861",
        "local",
        "unknown",
    )
    placed = parse_backend("us-central1/nvidia-tesla-a100@http://10.0.0.2:7860", load_catalog())
    assert (placed.region, placed.gpu) == ("us-central1", "nvidia-tesla-a100")
    assert placed.speed > parse_backend("x/nvidia-tesla-t4@http://h:1", load_catalog()).speed
    for bad in ("127.0.0.1:7861", "https://h:1", "http://h", "ftp://h:1"):
        with pytest.raises(ValueError, match="http://HOST:PORT"):
            parse_backend(bad)


def test_control_plane_payload_becomes_listener_specs() -> None:
    payload = {
        "services": [
            {
                "name": "sd",
                "port": 8080,
                "backends": [{"replica": "r1", "url": "http://h:1/", "region": "a", "gpu": "g"}],
            }
        ]
    }
    (service,) = services_from_api(payload)
    assert (service.name, service.port, service.backends[0].url, service.backends[0].speed) == (
        "sd",
        8080,
        "http://h:1",
        1.0,
    )


def test_the_gateway_keeps_its_last_known_backends_while_the_controller_is_down(loops: LoopThread) -> None:
    replica = FakeReplica(loops, name="r1").start()
    port = free_port()
    tokens: list[str] = []

    def controller(seen: Seen) -> Reply:
        tokens.append(seen.headers.get("authorization", ""))
        backends = [{"replica": "r1", "url": replica.url, "region": "us-central1", "gpu": "nvidia-l4", "speed": 2.0}]
        return Reply(body=json.dumps({"services": [{"name": "sd", "port": port, "backends": backends}]}).encode())

    control = FakeReplica(loops, controller, name="controller").start()
    gateway = Gateway(catalog=load_catalog(), probe_interval_s=0.2)
    loops.run(gateway.start())
    feed = asyncio.run_coroutine_threadsafe(
        follow_control_plane(control.url, "secret", gateway.apply, interval_s=0.1), loops.loop
    )
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models")
                break
            except httpx.ConnectError:
                time.sleep(0.05)
        assert response.headers["x-gpuroam-replica"] == "r1"
        assert tokens[0] == "Bearer secret"
        control.kill()
        polls = len(control.seen)
        time.sleep(1.0)  # several failed polls
        assert len(control.seen) == polls
        for _ in range(5):
            response = httpx.get(f"http://127.0.0.1:{port}/sdapi/v1/sd-models")
            assert response.status_code == 200 and response.headers["x-gpuroam-replica"] == "r1"
        health = httpx.get(f"http://127.0.0.1:{port}/gpuroam/health").json()
        assert [b["replica"] for b in health["services"][0]["backends"]] == ["r1"]
    finally:
        feed.cancel()
        loops.run(gateway.stop())
