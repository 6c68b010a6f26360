"""`gpuroam demo`: the five moves on this machine, by hand or scripted under load (then a burst, a quiet and a wake)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gpuroam.cli.app import app
from gpuroam.cli.common import JsonOption, StateOption, call, console, die, out
from gpuroam.cli.services import wait_ready


@app.command()
def demo(
    state: StateOption = None,
    port: Annotated[int, typer.Option(help="Control-plane API port.")] = 8700,
    gateway_port: Annotated[int, typer.Option(help="The service's endpoint port.")] = 8080,
    spec: Annotated[Path, typer.Option(help="The service to serve.")] = Path("examples/stable-diffusion.yaml"),
    regions: Annotated[Path, typer.Option(help="Local sites and their GPU inventory.")] = Path(
        "examples/local-regions.yaml"
    ),
    scripted: Annotated[
        bool,
        typer.Option(
            help="Play the five moves under a steady load, then follow demand: a burst scales out into 3 regions, "
            "the quiet after scales in and sleeps, a request wakes it; print a summary, and stop."
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Start everything locally, serve the example service, and show the five moves to try."""
    from gpuroam.cli.scripted import tear_down
    from gpuroam.controller.client import ControlPlaneClient
    from gpuroam.logs import configure_logging
    from gpuroam.providers.factories import local_provider
    from gpuroam.serve import ControlPlane, ServeOptions
    from gpuroam.spec import SpecError, load_spec, spec_to_dict
    from gpuroam.statedir import DEFAULT_STATE_DIR, ensure_state_dir

    state_dir = state or DEFAULT_STATE_DIR
    try:
        parsed = load_spec(spec)
    except SpecError as error:
        die(str(error))
    ensure_state_dir(state_dir)
    configure_logging("info", path=state_dir / "demo.log")
    try:
        plane = ControlPlane(
            ServeOptions(state_dir, port=port, gateway_port=gateway_port), local_provider(regions, state_dir)
        )
        plane.start()
    except (ValueError, RuntimeError) as error:
        die(str(error))
    client = ControlPlaneClient(plane.url, plane.token)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the demo as cleanly as Ctrl-C
    try:
        call(client.post, "/services", spec_to_dict(parsed))
        service = wait_ready(client, parsed.name, parsed.regions.min_regions, 600.0, quiet=json_out)
        from gpuroam.cli.console import service_table
        from gpuroam.ui import dashboard_url

        if scripted:
            failed = _play_scripted(client, parsed.name, json_out, state_dir / "demo.log")
            raise typer.Exit(1 if failed else 0)
        out.print(service_table(service))
        out.print(
            f"\n[bold]Endpoint[/]  {service['endpoint']}  (A1111 API and Web UI)\n"
            f"[bold]Dashboard[/]  {dashboard_url(plane.url, plane.token)}\n"
            f"[bold]Control plane[/]  {plane.url}  (logs: {state_dir / 'demo.log'})\n\n"
            "[bold]Five moves to try[/] in another terminal"
            + (f" (first: export GPUROAM_STATE={state_dir})" if state else "")
            + ":\n"
            f"  1. serve:   curl -s {service['endpoint']}/sdapi/v1/txt2img -H 'content-type: application/json' "
            '-d \'{"prompt": "a cat", "steps": 20}\'\n'
            f"  2. expand:  gpuroam expand {parsed.name} --region asia-southeast1\n"
            "  3. see:     gpuroam status   (and: gpuroam events --follow)\n"
            "  4. fail:    gpuroam fail gpu nvidia-l4   (or: gpuroam fail region us-central1)\n"
            "  5. recover: gpuroam recover\n\nCtrl-C stops the demo and its replicas."
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping: draining replicas")
    finally:
        tear_down(plane, client, parsed.name)


def _play_scripted(client: Any, name: str, json_out: bool, log: Path) -> int:
    """The five moves and the demand phases under load; returns how many requests failed (the goal is none)."""
    from gpuroam.cli.console import scripted_summary
    from gpuroam.cli.scripted import play

    try:
        summary = play(client, name, "asia-southeast1", "nvidia-l4", say=(lambda _: None) if json_out else out.print)
    except TimeoutError as error:
        die(f"the scripted demo {error}; a busy machine is the usual cause (the control plane's log: {log})")
    if json_out:
        out.print_json(data=summary.as_dict())
    else:
        out.print(scripted_summary(summary))
    return summary.failed


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
