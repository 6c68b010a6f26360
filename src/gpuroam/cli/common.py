"""What every command shares: the consoles, the common options, and errors said once, clearly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

if TYPE_CHECKING:
    from gpuroam.controller.client import ControlPlaneClient

P = ParamSpec("P")
T = TypeVar("T")

console = Console(stderr=True)
out = Console()

ServerOption = Annotated[
    str | None, typer.Option("--server", help="Control plane URL (else GPUROAM_SERVER, else the state dir's).")
]
StateOption = Annotated[
    Path | None, typer.Option("--state", help="State dir of `gpuroam serve` (default ~/.gpuroam or GPUROAM_STATE).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def die(message: str) -> NoReturn:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(1)


def state_dir(state: Path | None) -> Path:
    from gpuroam.statedir import DEFAULT_STATE_DIR

    return state or DEFAULT_STATE_DIR


def client_for(server: str | None, state: Path | None) -> ControlPlaneClient:
    from gpuroam.controller.client import ClientError, ControlPlaneClient

    try:
        return ControlPlaneClient.find(server, state)
    except ClientError as error:
        die(str(error))


def call(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`function(...)`, a ClientError said as the command's error."""
    from gpuroam.controller.client import ClientError

    try:
        return function(*args, **kwargs)
    except ClientError as error:
        die(str(error))
