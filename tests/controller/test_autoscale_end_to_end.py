"""Autoscaling end to end on this machine: real worker processes, the real gateway and control plane.

A service with replicas.min 0 is registered asleep; the first request through its endpoint wakes it
(held at the gateway, answered once a replica is up); a burst of clients scales it out into a second
region; the quiet after scales it back in, then to sleep. No request fails through any of it.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import yaml
from test_control_plane import EXAMPLES, wait_for

from gpuroam.cli.scripted import SteadyLoad
from gpuroam.controller.client import ControlPlaneClient
from gpuroam.serve import ControlPlane
from gpuroam.spec import load_spec, spec_to_dict

NAME = "stable-diffusion"
SMALL = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64}


def sleepy_spec(tmp_path: Path) -> Path:
    spec = yaml.safe_load((EXAMPLES / "stable-diffusion.yaml").read_text())
    spec["regions"]["min_regions"] = 1
    spec["replicas"].update(min=0, max=2)
    spec["placement"].update(race=1, provision_timeout_s=90, block_ttl_s=3, block_max_s=20, move_back_after_s=2)
    # L4 (speed 2.2) x 0.5: a second replica once two requests are in flight for a few seconds
    spec["autoscale"] = {"target_in_flight": 0.5, "scale_up_after_s": 2, "scale_down_after_s": 6, "sleep_after_s": 8}
    path = tmp_path / "sleepy.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sleep_wake_scale_out_scale_in_and_sleep_again_without_a_failed_request(
    plane: ControlPlane, tmp_path: Path
) -> None:
    client = ControlPlaneClient(plane.url, plane.token)
    created = client.post("/services", spec_to_dict(load_spec(sleepy_spec(tmp_path))))
    endpoint = created["endpoint"]

    def service() -> dict:
        return client.get(f"/services/{NAME}")

    def ready() -> list[dict]:
        return [r for r in service()["replicas"] if r["state"] == "ready"]

    wait_for(lambda: service()["desired"] == 0, 30, "the service registered asleep")
    assert ready() == [] and "asleep" in service()["reason"]
    wait_for(lambda: _listening(endpoint), 30, "the gateway to listen on the new service's port")

    woken = httpx.post(f"{endpoint}/sdapi/v1/txt2img", json=SMALL, timeout=60)  # held while a replica starts
    assert woken.status_code == 200, woken.text
    assert service()["desired"] >= 1 and "woke" in [e["kind"] for e in client.get("/events")]

    with SteadyLoad(endpoint, clients=4, steps=4) as burst:
        wait_for(lambda: len({r["region"] for r in ready()}) == 2, 120, "a second region under the burst")
        wait_for(lambda: len({s.region for s in burst.served[-8:]}) == 2, 60, "both regions serving the burst")
    assert burst.ok and burst.failures == [], f"failed during the burst: {burst.failures[:5]}"
    assert "scaled-up" in [e["kind"] for e in client.get("/events")]

    wait_for(lambda: service()["desired"] == 0 and not ready(), 120, "scale-in, then sleep")
    assert "slept" in [e["kind"] for e in client.get("/events")]


def _listening(endpoint: str) -> bool:
    try:
        return httpx.get(f"{endpoint}/gpuroam/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
