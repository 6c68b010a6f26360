"""`gpuroam net ...`: local regions as network namespaces behind an emulated WAN (see providers/local/netns.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from gpuroam.cli.app import net_app
from gpuroam.cli.common import JsonOption, StateOption, console, die, out, state_dir

if TYPE_CHECKING:
    from gpuroam.providers.local.netns import RegionNetwork

RegionsOption = Annotated[Path, typer.Option(help="Local sites file; each of its regions gets a namespace.")]


def _delays(pairs: list[str]) -> dict[str, float]:
    delays: dict[str, float] = {}
    for pair in pairs:
        region, _, value = pair.partition("=")
        try:
            delays[region.strip()] = float(value)
        except ValueError:
            die(f"--delay {pair!r}: write REGION=MILLISECONDS (one way), e.g. --delay europe-west4=40")
    return delays


def _create(
    regions_file: Path,
    state: Path,
    home: str | None = None,
    delays: dict[str, float] | None = None,
    link: str = "auto",
) -> RegionNetwork:
    from gpuroam.providers.local import LocalSitesError, load_sites
    from gpuroam.providers.local.netns import NetworkError, RegionNetwork

    try:
        sites = load_sites(regions_file)
        return RegionNetwork.create(state, list(sites.on_demand), home=home, delays_ms=delays, link=link)
    except (LocalSitesError, NetworkError) as error:
        die(str(error))


def _attach(state: Path | None) -> RegionNetwork:
    from gpuroam.providers.local.netns import NetworkError, RegionNetwork

    try:
        return RegionNetwork.attach(state_dir(state))
    except NetworkError as error:
        die(str(error))


def network_for_serve(network: str, regions_file: Path, state: Path) -> RegionNetwork | None:
    """`gpuroam serve --network`: none, or netns (create or re-attach to the state dir's network)."""
    if network == "none":
        return None
    if network != "netns":
        die(f"unknown --network {network!r}: use none, or netns (regions as network namespaces)")
    created = _create(regions_file, state)
    home = created.home
    console.print(f"[bold]network[/] regions in namespaces ({created.kind} links, home {home}); `gpuroam net status`")
    return created


@net_app.command("up")
def up(
    regions: RegionsOption = Path("examples/local-regions.yaml"),
    state: StateOption = None,
    home: Annotated[
        str | None, typer.Option(help="Region the gateway sits in (~1 ms away); default: the file's first.")
    ] = None,
    delay: Annotated[
        list[str] | None, typer.Option(help="REGION=MS: one-way delay instead of the distance's (repeat).")
    ] = None,
    link: Annotated[str, typer.Option(help="auto (veth + netem if the kernel has it, else tun), veth or tun.")] = (
        "auto"
    ),
    json_out: JsonOption = False,
) -> None:
    """Create (or repair and re-attach to) a namespace per region, linked to this one with WAN delay."""
    network = _create(regions, state_dir(state), home, _delays(delay or []), link)
    _show(network, json_out)


@net_app.command("down")
def down(state: StateOption = None) -> None:
    """Remove the namespaces, links and link processes of a state dir (and processes left inside them)."""
    from gpuroam.providers.local.netns import NetworkError, RegionNetwork, network_unavailable

    where = state_dir(state)
    reason = network_unavailable()
    if reason:
        die(f"cannot remove network namespaces here: {reason}")
    try:
        network = RegionNetwork.load(where) or RegionNetwork(where, "tun", "", {}, "")
        network.teardown()  # with nothing recorded, still removes leftovers named for this state dir
    except NetworkError as error:
        die(str(error))
    console.print(f"region network of {where} removed")


@net_app.command("partition")
def partition(region: Annotated[str, typer.Argument(help="Region to cut off.")], state: StateOption = None) -> None:
    """Cut a region off: packets both ways are dropped silently, so clients time out."""
    from gpuroam.providers.local.netns import NetworkError

    try:
        _attach(state).partition(region)
    except NetworkError as error:
        die(str(error))
    console.print(f"{region} partitioned; `gpuroam net heal {region}` reconnects it")


@net_app.command("heal")
def heal(region: Annotated[str, typer.Argument(help="Region to reconnect.")], state: StateOption = None) -> None:
    """Reconnect a partitioned region."""
    from gpuroam.providers.local.netns import NetworkError

    try:
        _attach(state).heal(region)
    except NetworkError as error:
        die(str(error))
    console.print(f"{region} healed")


@net_app.command("status")
def status(
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Each region's namespace, address, one-way delay, link kind and state."""
    _show(_attach(state), json_out)


def _show(network: RegionNetwork, json_out: bool) -> None:
    described = network.describe()
    if json_out:
        out.print_json(json.dumps({"home": network.home, "link": network.kind, "regions": described}))
        return
    table = Table(title=f"region network ({network.kind} links, home {network.home})")
    for column in ("region", "namespace", "address", "one-way delay", "state"):
        table.add_column(column)
    for region, info in described.items():
        state = ("up" if info["up"] else "[red]partitioned[/]") if info["intact"] else "[red]broken: run net up[/]"
        delay = f"{info['delay_ms']:g} ms ({info['delay_source']})"
        table.add_row(region, info["netns"], info["address"], delay, state)
    out.print(table)
