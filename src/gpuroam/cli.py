"""The one entry point: `gpuroam ...`."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

from gpuroam import __version__

app = typer.Typer(
    help="Run a GPU web service wherever GPUs can be found, behind one global endpoint.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


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


@app.command()
def worker(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    model: Annotated[
        str, typer.Option(help="tiny, sd15-random, or a path to a checkpoint (diffusers folder, .safetensors, .ckpt).")
    ] = "tiny",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    region: Annotated[str | None, typer.Option(help="Region this worker serves, shown to clients.")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU type, shown to clients (e.g. nvidia-l4).")] = None,
    replica: Annotated[str | None, typer.Option(help="Replica id, shown to clients.")] = None,
    max_batch: Annotated[int, typer.Option(min=1, max=256, help="Most images in one device batch.")] = 8,
    batch_wait_ms: Annotated[
        float, typer.Option(min=0, max=1000, help="How long an idle device waits to fill a batch.")
    ] = 5.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Most images queued before new requests get 503.")] = 256,
    api_auth: Annotated[
        str | None, typer.Option(help="user:password[,user2:password2] for HTTP basic auth on the API.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve Stable Diffusion with the A1111 Web UI API and page."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import uvicorn

    from gpuroam.logs import configure_logging
    from gpuroam.worker import WorkerConfig, create_app

    try:
        auth = WorkerConfig.parse_api_auth(api_auth)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--api-auth") from error
    configure_logging(log_level)
    config = WorkerConfig(
        model=model,
        device=device,
        region=region,
        gpu=gpu,
        replica=replica,
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_queued_images=max_queue,
        api_auth=auth,
    )
    console.print(
        f"[bold]gpuroam worker[/] model [cyan]{model}[/] on [cyan]{device}[/]: "
        f"http://{host}:{port}/ (API /sdapi/v1, ready when /internal/ping answers 200)"
    )
    uvicorn.run(
        create_app(config), host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5
    )
