"""Spot end to end on this machine: real worker processes on the example sites' Spot slots, the real gateway
under steady load, `fail preempt` with a notice as a cloud gives one, and the move back to Spot.

The issue's check: a preemption with notice fails no request, the replacement is launched at the notice
(on demand while Spot is blocked), and the service returns to Spot once Spot is back and stable."""

from __future__ import annotations

from pathlib import Path

import yaml
from test_control_plane import EXAMPLES, ready, wait_for

from gpuroam.cli.scripted import SteadyLoad
from gpuroam.controller.client import ControlPlaneClient
from gpuroam.serve import ControlPlane
from gpuroam.spec import load_spec, spec_to_dict


def spot_spec(tmp_path: Path) -> dict[str, object]:
    spec = yaml.safe_load((EXAMPLES / "stable-diffusion.yaml").read_text())
    spec["resources"]["spot"] = "prefer"
    spec["placement"].update(provision_timeout_s=90, block_ttl_s=30, block_max_s=60, move_back_after_s=2)
    path = tmp_path / "spot.yaml"
    path.write_text(yaml.safe_dump(spec))
    return spec_to_dict(load_spec(path))


def slots(client: ControlPlaneClient) -> set[tuple[str, str, str]]:
    return {(r["region"], r["gpu"], r["capacity"]) for r in ready(client)}


def test_preemptions_with_notice_fail_no_request_and_spot_comes_back(plane: ControlPlane, tmp_path: Path) -> None:
    client = ControlPlaneClient(plane.url, plane.token)
    client.post("/services", spot_spec(tmp_path))
    on_spot = {("us-central1", "nvidia-l4", "spot"), ("europe-west4", "nvidia-l4", "spot")}
    wait_for(lambda: slots(client) == on_spot, 120, "both replicas on Spot L4")
    service = client.get("/services/stable-diffusion")
    assert 0 < service["cost_per_hour"] < service["on_demand_cost_per_hour"], "Spot costs less, and says so"
    endpoint = service["endpoint"]
    with SteadyLoad(endpoint) as load:
        wait_for(lambda: load.ok >= 5, 60, "traffic through the gateway")
        doomed = next(r["id"] for r in ready(client) if r["region"] == "europe-west4")
        preempted = client.post("/chaos/preempt", {"replica": doomed, "notice_s": 10})
        assert preempted["killed"] == [doomed]
        wait_for(lambda: doomed not in {r["id"] for r in ready(client)}, 5, "out of the ready set at the notice")
        replaced = {("us-central1", "nvidia-l4", "spot"), ("europe-west4", "nvidia-l4", "on-demand")}
        wait_for(lambda: slots(client) == replaced, 60, "the replacement on demand in the same region")

        client.post("/chaos/preempt", {"region": "us-central1", "notice_s": 10})  # a wave: the region's Spot goes
        # europe-west4 may be back on Spot by now, once its block (30 s here) is over.
        wait_for(lambda: ("us-central1", "nvidia-l4", "on-demand") in slots(client), 60, "us-central1 on demand")
        wait_for(lambda: len(slots(client)) == 2, 60, "two replicas serving")
        mark = load.ok
        wait_for(lambda: len(load.since(mark)) >= 10, 60, "traffic after the preemptions")

        client.post("/chaos/recover", {})
        wait_for(lambda: slots(client) == on_spot, 180, "back on Spot once it is stable")
        mark = load.ok
        wait_for(lambda: len(load.since(mark)) >= 5, 60, "traffic after the move back")
    assert load.failures == [], f"requests failed around a preemption: {load.failures[:5]}"
    events = client.get("/events")
    assert sum(e["kind"] == "preempted" for e in events) == 2, "one replica, then us-central1's Spot replica"
    assert {"blocked", "recovered"} <= {e["kind"] for e in events}
