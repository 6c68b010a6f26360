"""`gpuroam net ...`: local regions as network namespaces behind an emulated WAN (see providers/netns.py).

Kept out of cli.py, which is long already; cli.py registers `net_app` and calls `network_for_serve`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from gpuroam.providers.netns import RegionNetwork

net_app = typer.Typer(
    help="Local regions as network namespaces: WAN delay by distance, partitions (Linux, root).",
    no_args_is_help=True,
)
console = Console(stderr=True)
out = Console()

StateOption = Annotated[
    Path | None, typer.Option("--state", help="State dir of `gpuroam serve` (default ~/.gpuroam or GPUROAM_STATE).")
]
RegionsOption = Annotated[Path, typer.Option(help="Local sites file; each of its regions gets a namespace.")]


def _die(message: str) -> NoReturn:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(1)


def _state(state: Path | None) -> Path:
    from gpuroam.controller.client import DEFAULT_STATE_DIR

    return state or DEFAULT_STATE_DIR


def _delays(pairs: list[str]) -> dict[str, float]:
    delays: dict[str, float] = {}
    for pair in pairs:
        region, _, value = pair.partition("=")
        try:
            delays[region.strip()] = float(value)
        except ValueError:
            _die(f"--delay {pair!r}: write REGION=MILLISECONDS (one way), e.g. --delay europe-west4=40")
    return delays


def _create(
    regions_file: Path,
    state_dir: Path,
    home: str | None = None,
    delays: dict[str, float] | None = None,
    link: str = "auto",
) -> RegionNetwork:
    from gpuroam.providers.local import LocalSitesError, load_sites
    from gpuroam.providers.netns import NetworkError, RegionNetwork

    try:
        sites = load_sites(regions_file)
        return RegionNetwork.create(state_dir, list(sites), home=home, delays_ms=delays, link=link)
    except (LocalSitesError, NetworkError) as error:
        _die(str(error))


def _attach(state: Path | None) -> RegionNetwork:
    from gpuroam.providers.netns import NetworkError, RegionNetwork

    try:
        return RegionNetwork.attach(_state(state))
    except NetworkError as error:
        _die(str(error))


def network_for_serve(network: str, provider: str, regions_file: Path, state_dir: Path) -> RegionNetwork | None:
    """`gpuroam serve --network`: none, or netns (create or re-attach to the state dir's network)."""
    if network == "none":
        return None
    if network != "netns":
        _die(f"unknown --network {network!r}: use none, or netns (regions as network namespaces)")
    if provider != "local":
        _die("--network netns works only with --provider local (it puts local sites in network namespaces)")
    created = _create(regions_file, state_dir)
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
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Create (or repair and re-attach to) a namespace per region, linked to this one with WAN delay."""
    network = _create(regions, _state(state), home, _delays(delay or []), link)
    _show(network, json_out)


@net_app.command("down")
def down(state: StateOption = None) -> None:
    """Remove the namespaces, links and link processes of a state dir (and processes left inside them)."""
    from gpuroam.providers.netns import NetworkError, RegionNetwork, network_unavailable

    state_dir = _state(state)
    reason = network_unavailable()
    if reason:
        _die(f"cannot remove network namespaces here: {reason}")
    try:
        network = RegionNetwork.load(state_dir) or RegionNetwork(state_dir, "tun", "", {}, "")
        network.teardown()  # with nothing recorded, still removes leftovers named for this state dir
    except NetworkError as error:
        _die(str(error))
    console.print(f"region network of {state_dir} removed")


@net_app.command("partition")
def partition(region: Annotated[str, typer.Argument(help="Region to cut off.")], state: StateOption = None) -> None:
    """Cut a region off: packets both ways are dropped silently, so clients time out."""
    from gpuroam.providers.netns import NetworkError

    try:
        _attach(state).partition(region)
    except NetworkError as error:
        _die(str(error))
    console.print(f"{region} partitioned; `gpuroam net heal {region}` reconnects it")


@net_app.command("heal")
def heal(region: Annotated[str, typer.Argument(help="Region to reconnect.")], state: StateOption = None) -> None:
    """Reconnect a partitioned region."""
    from gpuroam.providers.netns import NetworkError

    try:
        _attach(state).heal(region)
    except NetworkError as error:
        _die(str(error))
    console.print(f"{region} healed")


@net_app.command("status")
def status(
    state: StateOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
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
