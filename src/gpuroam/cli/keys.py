"""`gpuroam keys add/list/revoke SERVICE`: the API keys a service's endpoint asks for."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from gpuroam.cli.app import keys_app
from gpuroam.cli.common import JsonOption, ServerOption, StateOption, call, client_for, console, out

ServiceArgument = Annotated[str, typer.Argument(help="Service name.")]


@keys_app.command("add")
def add(
    service: ServiceArgument,
    name: Annotated[str | None, typer.Option(help="A name to revoke the key by (default key-N).")] = None,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make a key; it is shown this once (only its hash is kept). The endpoint then asks every caller for one."""
    made = call(client_for(server, state).post, f"/services/{service}/keys", {"name": name})
    if json_out:
        out.print_json(data=made)
        return
    out.print(made["key"])
    console.print(
        f"[green]key {made['name']!r} added to {service}[/]: keep it now, it is not shown again. Clients send "
        "`Authorization: Bearer KEY`, or basic auth with the key as the password (A1111 clients' --api-auth form)."
    )


@keys_app.command("list")
def list_keys(
    service: ServiceArgument, server: ServerOption = None, state: StateOption = None, json_out: JsonOption = False
) -> None:
    """The service's keys by name (never the keys themselves)."""
    keys = call(client_for(server, state).get, f"/services/{service}/keys")
    if json_out:
        out.print_json(data=keys)
        return
    if not keys:
        console.print(f"{service} has no keys: its endpoint is open to anyone (`gpuroam keys add {service}`)")
        return
    table = Table("name", "created", "source", title=f"API keys of {service}")
    for key in keys:
        made = key.get("created_at")
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(made)) if made is not None else "-"
        table.add_row(key["name"], created, key.get("source", ""))
    out.print(table)


@keys_app.command("revoke")
def revoke(
    service: ServiceArgument,
    name: Annotated[str, typer.Argument(help="The key's name (`gpuroam keys list`).")],
    open_endpoint: Annotated[
        bool, typer.Option("--open", help="Revoke the last key, which opens the endpoint to anyone.")
    ] = False,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Revoke a key: the gateway refuses it within a second."""
    suffix = "?open_endpoint=true" if open_endpoint else ""
    result = call(client_for(server, state).delete, f"/services/{service}/keys/{name}{suffix}")
    if json_out:
        out.print_json(data=result)
    else:
        console.print(f"key {name!r} of {service} revoked")
