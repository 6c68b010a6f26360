"""Autoscaling on this machine, one run: wake, a load step, scale-out, scale-in, sleep, wake again.

Starts the real control plane, gateway and local provider (tiny-model workers as replicas) with a
`replicas.min: 0` service, then, through the endpoint:

1. one request to the sleeping service: the time to its answer (a wake);
2. one client for `--baseline-s`, then a step to `--clients` clients: the time from the step to the
   scale-out decision (the `scaled-up` event) and to the first answer from a replica the step added;
3. the load stops: the time to the `scaled-down` decision and to sleep (`slept`);
4. one request again: the second wake.

Every request's outcome is counted: the goal is 0 failed. Timing goals are checked here, never in the
tests. Example:

    .venv/bin/python bench/autoscale.py --json bench/results/autoscale.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gpuroam.cli.scripted import SteadyLoad, event_time, wait_until
from gpuroam.controller.client import ControlPlaneClient
from gpuroam.providers.factories import local_provider
from gpuroam.providers.local import free_port
from gpuroam.serve import ControlPlane, ServeOptions
from gpuroam.spec import load_spec, spec_to_dict

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAME = "stable-diffusion"


def spec_file(directory: Path, args: argparse.Namespace) -> Path:
    spec = yaml.safe_load((EXAMPLES / "stable-diffusion.yaml").read_text())
    spec["regions"]["min_regions"] = 1
    spec["replicas"].update(min=0, max=args.max_replicas)
    spec["placement"].update(race=1, provision_timeout_s=120, block_ttl_s=3, block_max_s=20, move_back_after_s=2)
    spec["autoscale"] = {
        "target_in_flight": args.target,
        "scale_up_after_s": args.scale_up_after_s,
        "scale_down_after_s": args.scale_down_after_s,
        "sleep_after_s": args.sleep_after_s,
    }
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def timed(load: SteadyLoad) -> tuple[float, int | None]:
    """One request through the endpoint: seconds to its answer and its status (None: no answer)."""
    began = time.monotonic()
    status = load.one()
    return time.monotonic() - began, status


def run(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    options = ServeOptions(directory / "state", port=free_port(), interval_s=0.5, gateway_port=free_port())
    plane = ControlPlane(options, local_provider(EXAMPLES / "local-regions.yaml", options.state_dir))
    plane.start()
    figures: dict[str, Any] = {}
    try:
        client = ControlPlaneClient(plane.url, plane.token)
        endpoint = client.post("/services", spec_to_dict(load_spec(spec_file(directory, args))))["endpoint"]
        wait_until(lambda: _listening(endpoint), 30, "the endpoint")
        with SteadyLoad(endpoint, clients=0, steps=4) as load:
            figures["wake_s"], figures["wake_status"] = timed(load)
            load.clients(1)
            time.sleep(args.baseline_s)
            before = {s.replica for s in load.served}
            step_wall, step = time.time(), time.monotonic()
            load.clients(args.clients)
            wait_until(
                lambda: event_time(client, "scaled-up", step_wall) is not None, args.timeout, "the scale-out decision"
            )
            figures["decision_s"] = event_time(client, "scaled-up", step_wall) - step_wall  # type: ignore[operator]
            wait_until(lambda: any(s.replica not in before for s in load.served), args.timeout, "a new replica")
            figures["new_replica_serving_s"] = min(s.at for s in load.served if s.replica not in before) - step
            time.sleep(args.load_s)
            figures["replicas_under_load"] = len({s.replica for s in load.served if s.at > step})
            stop_wall = time.time()
            load.clients(0)
            wait_until(lambda: event_time(client, "slept", stop_wall) is not None, args.timeout, "sleep")
            scaled_down = event_time(client, "scaled-down", stop_wall)
            figures["scale_in_s"] = None if scaled_down is None else scaled_down - stop_wall
            figures["sleep_s"] = event_time(client, "slept", stop_wall) - stop_wall  # type: ignore[operator]
            wait_until(lambda: not plane.provider.observe(), 60, "every replica process gone")  # drained, not draining
            figures["second_wake_s"], figures["second_wake_status"] = timed(load)
        figures["requests"] = load.ok + len(load.failures)
        figures["failed"] = len(load.failures)
    finally:
        plane.stop()
        for seen in plane.provider.observe():
            plane.provider.terminate(seen.replica_id)
    return figures


def _listening(endpoint: str) -> bool:
    try:
        return httpx.get(f"{endpoint}/gpuroam/health", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20, help="clients after the step (one before)")
    parser.add_argument("--baseline-s", type=float, default=10.0)
    parser.add_argument("--load-s", type=float, default=20.0, help="how long the step lasts once scaled out")
    parser.add_argument("--target", type=float, default=2.0, help="autoscale.target_in_flight")
    parser.add_argument("--scale-up-after-s", type=float, default=3.0)
    parser.add_argument("--scale-down-after-s", type=float, default=15.0)
    parser.add_argument("--sleep-after-s", type=float, default=25.0)
    parser.add_argument("--max-replicas", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        figures = run(args, Path(directory))
    record = {
        "figures": figures,
        "settings": vars(args) | {"json": str(args.json) if args.json else None},
        "machine": f"{platform.machine()}, {platform.processor() or platform.node()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
