"""Issue 22's local measurement: Spot preemptions with notice under steady load through the endpoint.

    python bench/spot_local.py [--notice 10] [--clients 8] [--json out.json]

One control plane in this process over examples/local-regions.yaml (real worker processes, the real
gateway), the example service with `spot: prefer`, steady load from `--clients` clients. Then, in turn:
1. one Spot replica preempted with `--notice` seconds of notice (`fail preempt --replica`);
2. a region's Spot capacity preempted (`fail preempt --region us-central1`), its replicas with it;
3. the capacity given back (`recover`): the service moves back to Spot.
For each: failed requests (goal 0), seconds from the notice until the doomed replica left the ready set,
until a replacement was ready (a raced candidate elsewhere may be first; it is drained once the region's
own replacement serves) and until it served its first request, what served after the notice, and the
service's $/hour against all on-demand.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from gpuroam.cli.scripted import SteadyLoad
from gpuroam.controller.client import ControlPlaneClient
from gpuroam.providers.factories import local_provider
from gpuroam.providers.local import free_port
from gpuroam.serve import ControlPlane, ServeOptions
from gpuroam.spec import load_spec, spec_to_dict

EXAMPLES = ROOT / "examples"
SERVICE = "stable-diffusion"


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)
    return value


def ready(client: ControlPlaneClient) -> list[dict[str, Any]]:
    return [r for r in client.get(f"/services/{SERVICE}")["replicas"] if r["state"] == "ready"]


def preempt(client: ControlPlaneClient, load: SteadyLoad, body: dict[str, Any]) -> dict[str, Any]:
    """Play one preemption and time what follows, until every doomed replica is replaced and served."""
    before = {r["id"] for r in ready(client)}
    failed_before, served_before = len(load.failures), load.ok
    noticed = time.monotonic()
    doomed = client.post("/chaos/preempt", body)["killed"]
    wait_for(lambda: not {r["id"] for r in ready(client)} & set(doomed), 30, "the doomed out of the ready set")
    out_s = time.monotonic() - noticed
    new = wait_for(
        lambda: [r for r in ready(client) if r["id"] not in before] if len(ready(client)) >= len(before) else [],
        120,
        "the replacements ready",
    )
    ready_s = time.monotonic() - noticed
    ids = {r["id"] for r in new}
    try:  # sticky clients stay on a replica that is not much busier: light load may never reach the new one
        first_at = wait_for(
            lambda: next((s.at for s in load.since(served_before) if s.replica in ids), None), 30, "served"
        )
    except TimeoutError:
        first_at = None
    wait_for(lambda: time.monotonic() - noticed > body["notice_s"] + 5, body["notice_s"] + 10, "the notice's end")
    service = client.get(f"/services/{SERVICE}")
    serving = [r for r in service["replicas"] if r["state"] == "ready"]
    return {
        "preempted": doomed,
        "failed_requests": len(load.failures) - failed_before,
        "served_meanwhile": load.ok - served_before,
        "out_of_routing_s": round(out_s, 2),
        "replacement_ready_s": round(ready_s, 2),
        "replacement_served_s": None if first_at is None else round(first_at - noticed, 2),
        "first_ready_on": sorted(f"{r['gpu']} {r['capacity']} in {r['region']}" for r in new),
        "serving_after_notice": sorted(f"{r['gpu']} {r['capacity']} in {r['region']}" for r in serving),
        "cost_per_hour": service["cost_per_hour"],
        "on_demand_cost_per_hour": service["on_demand_cost_per_hour"],
    }


def run(notice_s: float, clients: int, workdir: Path) -> dict[str, Any]:
    spec = yaml.safe_load((EXAMPLES / "stable-diffusion.yaml").read_text())
    spec["resources"]["spot"] = "prefer"
    spec["placement"].update(provision_timeout_s=90, block_ttl_s=60, block_max_s=120, move_back_after_s=10)
    spec_path = workdir / "spot.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    options = ServeOptions(workdir / "state", port=free_port(), interval_s=0.5, gateway_port=free_port())
    plane = ControlPlane(options, local_provider(EXAMPLES / "local-regions.yaml", options.state_dir))
    plane.start()
    try:
        client = ControlPlaneClient(plane.url, plane.token)
        client.post("/services", spec_to_dict(load_spec(spec_path)))
        wait_for(lambda: {r["capacity"] for r in ready(client)} == {"spot"} and len(ready(client)) == 2, 180, "Spot")
        endpoint = client.get(f"/services/{SERVICE}")["endpoint"]
        with SteadyLoad(endpoint, clients=clients) as load:
            wait_for(lambda: load.ok >= 10, 60, "traffic")
            start = client.get(f"/services/{SERVICE}")
            doomed = next(r["id"] for r in ready(client) if r["region"] == "europe-west4")
            one = preempt(client, load, {"replica": doomed, "notice_s": notice_s})
            wave = preempt(client, load, {"region": "us-central1", "notice_s": notice_s})
            recovered_at, served = time.monotonic(), load.ok
            client.post("/chaos/recover", {})
            wait_for(
                lambda: {r["capacity"] for r in ready(client)} == {"spot"} and len(ready(client)) == 2, 300, "back"
            )
            back_s = time.monotonic() - recovered_at
            wait_for(lambda: len(load.since(served)) >= 10, 60, "traffic on Spot again")
        events = [e["kind"] for e in client.get("/events")]
        return {
            "notice_s": notice_s,
            "clients": clients,
            "start": {k: start[k] for k in ("cost_per_hour", "on_demand_cost_per_hour")},
            "one_replica": one,
            "region_wave": wave,
            "back_on_spot_after_recover_s": round(back_s, 1),
            "served": load.ok,
            "failed": len(load.failures),
            "failures": load.failures[:5],
            "preempted_events": events.count("preempted"),
        }
    finally:
        plane.stop()
        for seen in plane.provider.observe():
            plane.provider.terminate(seen.replica_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notice", type=float, default=10.0, help="seconds of notice (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="steady clients (default 8: enough to spill over)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gpuroam-spot-") as tmp:
        result = run(args.notice, args.clients, Path(tmp))
    result["machine"] = f"{platform.node()}, {platform.processor() or platform.machine()}"
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(1 if result["failed"] else 0)


if __name__ == "__main__":
    main()
