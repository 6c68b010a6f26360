"""The `gpuroam` command and its groups; each command lives in the module of its kind."""

from __future__ import annotations

from typing import Annotated

import typer

from gpuroam import __version__

app = typer.Typer(
    help="Run a GPU web service wherever GPUs can be found, behind one global endpoint.",
    no_args_is_help=True,
    add_completion=False,
)
fail_app = typer.Typer(help="Take capacity away (local provider): a region, or a GPU type.", no_args_is_help=True)
net_app = typer.Typer(
    help="Local regions as network namespaces: WAN delay by distance, partitions (Linux, root).",
    no_args_is_help=True,
)
keys_app = typer.Typer(
    help="A service's API keys: once it has one, its endpoint serves only requests that bring a key.",
    no_args_is_help=True,
)
app.add_typer(fail_app, name="fail")
app.add_typer(net_app, name="net")
app.add_typer(keys_app, name="keys")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gpuroam {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """gpuroam: one global endpoint for a GPU service, wherever GPUs can be found."""
