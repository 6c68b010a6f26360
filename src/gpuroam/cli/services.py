"""Commands that ask the control plane: up, status, expand, shrink, fail, recover, down, stop, events."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gpuroam.cli.app import app, fail_app
from gpuroam.cli.common import JsonOption, ServerOption, StateOption, call, client_for, console, die, out


@app.command()
def up(
    spec: Annotated[Path, typer.Argument(help="Service spec YAML (see examples/stable-diffusion.yaml).")],
    wait: Annotated[bool, typer.Option(help="Wait until min_regions regions serve.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 600.0,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Serve a service globally (create or update it)."""
    from gpuroam.spec import SpecError, load_spec, spec_to_dict

    try:
        parsed = load_spec(spec)
    except SpecError as error:
        die(str(error))
    client = client_for(server, state)
    result = call(client.post, "/services", spec_to_dict(parsed))
    asleep = parsed.replicas.min == 0
    if wait and not asleep:
        result = wait_ready(client, parsed.name, parsed.regions.min_regions, timeout, quiet=json_out)
    elif wait and result["endpoint"]:
        wait_listening(result["endpoint"], min(timeout, 30.0))
    if asleep and not json_out:
        console.print(
            f"{parsed.name} is registered and sleeps until the first request reaches {result['endpoint']}: that "
            "request waits while a replica starts (seconds here; minutes for a new GPU node on a cluster)"
        )
    if json_out:
        out.print_json(data=result)
    else:
        from gpuroam.cli.console import service_table

        out.print(service_table(result))
        if not call(client.get, f"/services/{parsed.name}/keys"):
            console.print(
                f"[yellow]warning:[/] {parsed.name}'s endpoint is open to anyone who finds its URL: "
                f"`gpuroam keys add {parsed.name}` makes it ask for a key"
            )


def wait_listening(endpoint: str, timeout: float) -> None:
    """Until the endpoint answers (the gateway opens a new service's port within a second or so)."""
    import httpx

    deadline = time.monotonic() + timeout
    with console.status(f"waiting for {endpoint} to listen", spinner="dots"):
        while True:
            try:
                httpx.get(f"{endpoint}/gpuroam/health", timeout=2.0, trust_env=False)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    die(
                        f"nothing listens at {endpoint} after {timeout:.0f} s; is the gateway running? (`gpuroam status`)"
                    )
                time.sleep(0.2)


def wait_ready(client: Any, name: str, regions: int, timeout: float, quiet: bool) -> Any:
    """Poll until the service has ready replicas in `regions` regions, showing progress."""
    deadline = time.monotonic() + timeout
    with console.status("", spinner="dots") as status:
        while True:
            service = call(client.get, f"/services/{name}")
            ready = [r for r in service["replicas"] if r["state"] == "ready"]
            ready_regions = {r["region"] for r in ready}
            starting = sum(r["state"] == "provisioning" for r in service["replicas"])
            if not quiet:
                status.update(
                    f"{name}: {len(ready)} ready in {len(ready_regions)}/{regions} region(s), {starting} starting"
                )
            if len(ready_regions) >= regions:
                return service
            if time.monotonic() > deadline:
                die(f"{name} not ready in {regions} region(s) after {timeout:.0f} s; see `gpuroam events`")
            time.sleep(0.5)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="Only this service.")] = None,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Which regions, replicas and GPUs serve each service, and its endpoint."""
    from gpuroam.cli.console import print_status

    client = client_for(server, state)
    result = call(client.get, "/status")
    if name is not None:
        result = {"services": [s for s in result["services"] if s["name"] == name]}
        if not result["services"]:
            die(f"no service {name!r}")
    if json_out:
        out.print_json(data=result)
    else:
        print_status(out, result)


@app.command()
def expand(
    name: Annotated[str, typer.Argument(help="Service name.")],
    region: Annotated[str, typer.Option(help="Region to add.")],
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Add a region to a service's footprint; the endpoint stays the same."""
    _footprint(server, state, "expand", name, region, json_out, f"{name} expands into {region}")


@app.command()
def shrink(
    name: Annotated[str, typer.Argument(help="Service name.")],
    region: Annotated[str, typer.Option(help="Region that `expand` added.")],
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Undo `expand`: the region is no longer kept and one region fewer serves (make before break); same endpoint."""
    _footprint(server, state, "shrink", name, region, json_out, f"{name} no longer keeps {region}")


def _footprint(
    server: str | None, state: Path | None, action: str, name: str, region: str, json_out: bool, said: str
) -> None:
    """`expand` and `shrink`: one region more or fewer, behind the same endpoint."""
    client = client_for(server, state)
    result = call(client.post, f"/services/{name}/{action}", {"region": region})
    if json_out:
        out.print_json(data=result)
    else:
        out.print(f"{said}; endpoint unchanged: {result['endpoint']}")


@fail_app.command("region")
def fail_region(
    region: Annotated[str, typer.Argument(help="Region to lose.")],
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Lose a region: its replicas die and its capacity is gone."""
    _chaos(server, state, "fail", {"region": region}, json_out)


@fail_app.command("gpu")
def fail_gpu(
    gpu: Annotated[str, typer.Argument(help="GPU type to lose, e.g. nvidia-l4.")],
    region: Annotated[str | None, typer.Option(help="Only in this region.")] = None,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Lose a GPU type (everywhere, or in one region): its replicas die."""
    _chaos(server, state, "fail", {"gpu": gpu, "region": region}, json_out)


@fail_app.command("preempt")
def fail_preempt(
    region: Annotated[
        str | None, typer.Option(help="Every Spot replica of this region, and its Spot capacity.")
    ] = None,
    replica: Annotated[str | None, typer.Option(help="Only this Spot replica (its id, as `status` shows it).")] = None,
    notice: Annotated[
        float, typer.Option(min=0, max=3600, help="Seconds of notice before the replicas die (GCP gives about 30).")
    ] = 30.0,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Reclaim Spot replicas like a cloud: a notice, then they die; without options, every Spot replica."""
    _chaos(server, state, "preempt", {"region": region, "replica": replica, "notice_s": notice}, json_out)


@app.command()
def recover(
    region: Annotated[str | None, typer.Option(help="Only this region.")] = None,
    gpu: Annotated[str | None, typer.Option(help="Only this GPU type.")] = None,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Give capacity back; the service moves back to its preferred placement."""
    _chaos(server, state, "recover", {"region": region, "gpu": gpu}, json_out)


def _chaos(server: str | None, state: Path | None, action: str, body: dict[str, Any], json_out: bool) -> None:
    client = client_for(server, state)
    result = call(client.post, f"/chaos/{action}", body)
    if json_out:
        out.print_json(data=result)
    else:
        out.print(result["message"])


@app.command()
def down(
    name: Annotated[str, typer.Argument(help="Service name.")],
    wait: Annotated[bool, typer.Option(help="Wait until every replica is gone (--no-wait returns at once).")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the replicas to go.")] = 600.0,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove a service: every replica drains, then its process or pod is gone."""
    client = client_for(server, state)
    result = call(client.delete, f"/services/{name}")
    if wait:
        left = wait_removed(client, name, timeout, quiet=json_out)
        result = {**result, "removed": not left, "left": left}
    if json_out:
        out.print_json(data=result)
    elif not wait:
        out.print(f"{name} is being removed; its replicas drain (`gpuroam status {name}` shows what is left)")
    elif result["left"]:
        what = ", ".join(f"{r['id']} ({r['state']} in {r['region']})" for r in result["left"])
        die(f"{name} still has replicas after {timeout:.0f} s: {what}; see `gpuroam events --service {name}`")
    else:
        out.print(f"{name} removed: no replica left")


@app.command()
def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each service's replicas to go.")] = 600.0,
    server: ServerOption = None,
    state: StateOption = None,
) -> None:
    """Take everything down: every service (as `down` does, waiting), then `serve` and its gateway."""
    from gpuroam.controller.client import ClientError

    client = client_for(server, state)
    names = [service["name"] for service in call(client.get, "/status")["services"]]
    for name in names:
        call(client.delete, f"/services/{name}")
    for name in names:
        left = wait_removed(client, name, timeout, quiet=False)
        if left:
            what = ", ".join(f"{r['id']} ({r['state']})" for r in left)
            die(f"{name} still has replicas after {timeout:.0f} s: {what}; serve keeps running to finish them")
        out.print(f"{name} removed")
    call(client.post, "/shutdown", {})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            client.get("/status")
        except ClientError:  # it no longer answers: stopped
            out.print("stopped: no service, no replica; the control plane and its gateway are down")
            return
        time.sleep(0.5)
    die("serve accepted the stop but still answers after 60 s; stop its process (Ctrl-C) to finish")


def wait_removed(client: Any, name: str, timeout: float, quiet: bool) -> list[dict[str, Any]]:
    """Poll until the control plane has removed the service (its replicas terminated), showing progress;
    the replicas still there when `timeout` runs out, else []."""
    from gpuroam.controller.client import ClientError, NotFound

    deadline = time.monotonic() + timeout
    with console.status("", spinner="dots") as status:
        while True:
            try:
                service = client.get(f"/services/{name}")
            except NotFound:
                return []
            except ClientError as error:
                die(str(error))
            left = [r for r in service["replicas"] if r["state"] not in ("terminated", "failed")]
            if not quiet:
                draining = sum(r["state"] == "draining" for r in left)
                status.update(f"{name}: {len(left)} replica(s) left, {draining} draining")
            if time.monotonic() > deadline:
                return left
            time.sleep(0.5)


@app.command()
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    service: Annotated[str | None, typer.Option(help="Only this service (and global events).")] = None,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """The timeline: placed, stockout, blocked, ready, failover, drained, recovered."""
    from gpuroam.cli.console import event_line

    client = client_for(server, state)
    after = 0
    while True:
        batch = call(client.get, "/events", after=after, service=service)
        for event in batch:
            out.print(json.dumps(event) if json_out else event_line(event), soft_wrap=True, highlight=False)
            after = event["id"]
        if not follow:
            return
        time.sleep(1.0)
