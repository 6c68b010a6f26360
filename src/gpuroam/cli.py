"""The one entry point: `gpuroam ...`."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console

from gpuroam import __version__
from gpuroam.cli_net import net_app, network_for_serve

app = typer.Typer(
    help="Run a GPU web service wherever GPUs can be found, behind one global endpoint.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()
fail_app = typer.Typer(help="Take capacity away (local provider): a region, or a GPU type.", no_args_is_help=True)
app.add_typer(fail_app, name="fail")
app.add_typer(net_app, name="net")

ServerOption = Annotated[
    str | None, typer.Option("--server", help="Control plane URL (else GPUROAM_SERVER, else the state dir's).")
]
StateOption = Annotated[
    Path | None, typer.Option("--state", help="State dir of `gpuroam serve` (default ~/.gpuroam or GPUROAM_STATE).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


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


@app.command()
def gateway(
    port: Annotated[int, typer.Option(help="Port of the endpoint (with --backend).")] = 8080,
    backend: Annotated[
        list[str] | None,
        typer.Option(help="A replica: http://HOST:PORT, or REGION/GPU@http://HOST:PORT. Repeat for more."),
    ] = None,
    controller: Annotated[
        str | None, typer.Option(help="Follow this control plane's ready replicas instead of --backend.")
    ] = None,
    token_file: Annotated[Path | None, typer.Option(help="Control-plane token (default: the state dir's).")] = None,
    state: StateOption = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    region: Annotated[str | None, typer.Option(help="This gateway's region, for clients that send none.")] = None,
    hold: Annotated[float, typer.Option(min=0, help="Seconds a request waits for a live replica.")] = 30.0,
    retries: Annotated[int, typer.Option(min=0, max=10, help="Other replicas tried before the first byte.")] = 3,
    upstream_timeout: Annotated[float, typer.Option(min=1, help="Seconds a replica may take to answer.")] = 600.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body accepted.")] = 50.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """The global endpoint: proxy to healthy replicas, retry, hold while none is live."""
    from gpuroam.catalog import load_catalog
    from gpuroam.gateway import Gateway, Limits, ProxyConfig, ServiceBackends, parse_backend, run_gateway
    from gpuroam.logs import configure_logging

    configure_logging(log_level)
    catalog = load_catalog()
    if bool(backend) == bool(controller):
        _die("give either --backend URL (repeatable) or --controller URL, not both or neither")
    static: list[ServiceBackends] = []
    follow: tuple[str, str] | None = None
    if backend:
        try:
            backends = tuple(parse_backend(text, catalog) for text in backend)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--backend") from error
        static = [ServiceBackends("default", port, backends)]
        console.print(f"[bold]gpuroam gateway[/] on http://{host}:{port} in front of {len(backends)} replicas")
    elif controller:
        from gpuroam.controller.client import DEFAULT_STATE_DIR

        token_path = token_file or (state or DEFAULT_STATE_DIR) / "token"
        if not token_path.is_file():
            _die(f"no control-plane token at {token_path}; pass --token-file or --state")
        follow = (controller, token_path.read_text().strip())
        console.print(f"[bold]gpuroam gateway[/] following {controller}")
    config = ProxyConfig(hold_s=hold, retries=retries, upstream_timeout_s=upstream_timeout, region=region)
    limits = Limits(max_body_bytes=int(max_body_mb * 1024 * 1024))
    ready = None
    if controller and state is not None:  # started by `serve`: say when this gateway can take over
        from gpuroam.controller.gateway_process import mark_ready

        ready = functools.partial(mark_ready, state, os.getpid())
    try:
        run_gateway(Gateway(host, config, limits, catalog=catalog), static, follow, ready)
    except OSError as error:
        _die(f"the gateway could not listen on {host}:{port}: {error.strerror or error}; pick another --port")


@app.command("restart-gateway")
def restart_gateway(state: StateOption = None) -> None:
    """Replace the running gateway (after an upgrade, say) without failing a request."""
    from gpuroam.controller.client import DEFAULT_STATE_DIR
    from gpuroam.controller.gateway_process import GatewayProcess
    from gpuroam.controller.server import ServerInfo

    state_dir = state or DEFAULT_STATE_DIR
    info = ServerInfo.read(state_dir)
    process = GatewayProcess(state_dir, info.url, urlsplit(info.url).hostname or "127.0.0.1") if info else None
    if process is None or process.running_pid() is None:
        _die(f"no gateway of `gpuroam serve` runs for state dir {state_dir}; start one with `gpuroam serve`")
    with console.status("starting a new gateway beside the old one, then draining the old one"):
        try:
            pid = process.restart()
        except RuntimeError as error:
            _die(str(error))
    console.print(f"gateway restarted: pid {pid}")


@app.command()
def render(
    spec: Annotated[Path, typer.Argument(help="Service spec YAML (see examples/stable-diffusion.yaml).")],
    provider: Annotated[str, typer.Option(help="kubernetes (any clusters) or gke (Autopilot + global endpoint).")],
    regions: Annotated[str, typer.Option(help="Comma-separated regions, one cluster each: us-central1,europe-west4.")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the manifests: one file per region, plus the config cluster's.")
    ],
    endpoint: Annotated[
        str, typer.Option(help="gke only: ingress (MultiClusterIngress) or gateway (multi-cluster Gateway API).")
    ] = "ingress",
    catalog: Annotated[Path | None, typer.Option(help="A catalog file that overrides the bundled one.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Write every manifest a cluster provider would apply, for review or `kubectl apply -f`."""
    from gpuroam.catalog import load_catalog
    from gpuroam.providers.render import RenderError
    from gpuroam.providers.render import render as render_manifests
    from gpuroam.spec import SpecError, load_spec

    try:
        parsed = load_spec(spec)
        wanted = [r.strip() for r in regions.split(",") if r.strip()]
        written = render_manifests(parsed, provider, wanted, out_dir, endpoint, catalog=load_catalog(catalog))
    except (SpecError, RenderError) as error:
        _die(str(error))
    if json_out:
        out.print_json(data={"files": [str(p) for p in written]})
    else:
        for path in written:
            out.print(f"wrote {path}")


def _client(server: str | None, state: Path | None) -> Any:
    from gpuroam.controller.client import ClientError, ControlPlaneClient

    try:
        return ControlPlaneClient.find(server, state)
    except ClientError as error:
        _die(str(error))


def _die(message: str) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(1)


def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    from gpuroam.controller.client import ClientError

    try:
        return function(*args, **kwargs)
    except ClientError as error:
        _die(str(error))


@app.command()
def serve(
    state: StateOption = None,
    port: Annotated[int, typer.Option(help="Control-plane API port.")] = 8700,
    gateway_port: Annotated[
        int, typer.Option(help="First service's endpoint port (the next service gets the next free one); 0: none.")
    ] = 8080,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    regions: Annotated[Path, typer.Option(help="Local sites and their GPU inventory.")] = Path(
        "examples/local-regions.yaml"
    ),
    store: Annotated[
        str | None, typer.Option(help="State store URL (postgresql+psycopg://...); default SQLite in --state.")
    ] = None,
    catalog: Annotated[Path | None, typer.Option(help="A catalog file that overrides the bundled one.")] = None,
    provider: Annotated[
        str, typer.Option(help="local (sites on this machine), kubernetes (your clusters) or gke (Autopilot).")
    ] = ("local"),
    kubeconfig: Annotated[
        Path | None, typer.Option(help="kubernetes: the kubeconfig file (default ~/.kube/config).")
    ] = (None),
    context: Annotated[
        list[str] | None, typer.Option(help="kubernetes: REGION=CONTEXT, one per cluster (repeat the option).")
    ] = None,
    service_type: Annotated[
        str, typer.Option(help="kubernetes: ClusterIP, or LoadBalancer so a gateway outside can reach replicas.")
    ] = "ClusterIP",
    project: Annotated[str | None, typer.Option(help="gke: the GCP project (default: the credentials').")] = None,
    gke_region: Annotated[
        list[str] | None, typer.Option(help="gke: a region to run an Autopilot cluster in (repeat the option).")
    ] = None,
    endpoint: Annotated[str, typer.Option(help="gke: ingress (MultiClusterIngress) or gateway (Gateway API).")] = (
        "ingress"
    ),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    network: Annotated[
        str, typer.Option(help="local: none, or netns (each region in a network namespace, WAN delay; root).")
    ] = "none",
) -> None:
    """Run the control plane (store, reconcile loop, API) and the gateway that is every service's endpoint."""
    from gpuroam.controller.client import DEFAULT_STATE_DIR
    from gpuroam.controller.server import ControlPlane
    from gpuroam.logs import configure_logging

    configure_logging(log_level)
    state_dir = state or DEFAULT_STATE_DIR
    factory = None
    if provider in ("kubernetes", "gke"):
        from gpuroam.providers.factories import control_plane_factory, gke_control_plane_factory

        try:
            if provider == "gke":
                factory = gke_control_plane_factory(project, gke_region or [], endpoint)
            else:
                kubeconfig = kubeconfig or Path.home() / ".kube" / "config"
                factory = control_plane_factory(kubeconfig, context or [], service_type)
        except ValueError as error:
            _die(str(error))
        if provider == "gke" or service_type == "ClusterIP":
            gateway_port = 0  # replicas are not reachable from here: the endpoint is GKE's global one, or none
    elif provider != "local":
        _die(f"unknown --provider {provider!r}: use local, kubernetes or gke")
    elif not regions.is_file():
        _die(f"no local regions file at {regions}; pass --regions FILE (see examples/local-regions.yaml)")
    region_network = network_for_serve(network, provider, regions, state_dir)
    console.print(f"[bold]gpuroam control plane[/] on http://{host}:{port} (state in {state_dir})")
    console.print(f"[bold]dashboard[/] http://{host}:{port}/#token=$(cat {state_dir / 'token'})")
    if gateway_port:
        console.print(
            f"[bold]gateway[/] endpoints from http://{host}:{gateway_port} (log: {state_dir / 'gateway.log'})"
        )
    ControlPlane(
        state_dir,
        regions,
        port=port,
        host=host,
        store_url=store,
        catalog_file=catalog,
        gateway_port=gateway_port or None,
        provider=factory,
        network=region_network,
    ).run_forever()


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
        _die(str(error))
    client = _client(server, state)
    result = _call(client.post, "/services", spec_to_dict(parsed))
    if wait:
        result = _wait_ready(client, parsed.name, parsed.regions.min_regions, timeout, quiet=json_out)
    if json_out:
        out.print_json(data=result)
    else:
        from gpuroam.console import service_table

        out.print(service_table(result))


def _wait_ready(client: Any, name: str, regions: int, timeout: float, quiet: bool) -> Any:
    """Poll until the service has ready replicas in `regions` regions, showing progress."""
    deadline = time.monotonic() + timeout
    with console.status("", spinner="dots") as status:
        while True:
            service = _call(client.get, f"/services/{name}")
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
                _die(f"{name} not ready in {regions} region(s) after {timeout:.0f} s; see `gpuroam events`")
            time.sleep(0.5)


@app.command()
def status(
    name: Annotated[str | None, typer.Argument(help="Only this service.")] = None,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Which regions, replicas and GPUs serve each service, and its endpoint."""
    from gpuroam.console import print_status

    client = _client(server, state)
    result = _call(client.get, "/status")
    if name is not None:
        result = {"services": [s for s in result["services"] if s["name"] == name]}
        if not result["services"]:
            _die(f"no service {name!r}")
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
    client = _client(server, state)
    result = _call(client.post, f"/services/{name}/expand", {"region": region})
    if json_out:
        out.print_json(data=result)
    else:
        out.print(f"{name} expands into {region}; endpoint unchanged: {result['endpoint']}")


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
    client = _client(server, state)
    result = _call(client.post, f"/chaos/{action}", body)
    if json_out:
        out.print_json(data=result)
    else:
        out.print(result["message"])


@app.command()
def down(
    name: Annotated[str, typer.Argument(help="Service name.")],
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove a service: every replica is drained."""
    client = _client(server, state)
    result = _call(client.delete, f"/services/{name}")
    if json_out:
        out.print_json(data=result)
    else:
        out.print(f"{name} is being removed; its replicas drain")


@app.command()
def events(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events.")] = False,
    service: Annotated[str | None, typer.Option(help="Only this service (and global events).")] = None,
    server: ServerOption = None,
    state: StateOption = None,
    json_out: JsonOption = False,
) -> None:
    """The timeline: placed, stockout, blocked, ready, failover, drained, recovered."""
    from gpuroam.console import event_line

    client = _client(server, state)
    after = 0
    while True:
        batch = _call(client.get, "/events", after=after, service=service)
        for event in batch:
            out.print(json.dumps(event) if json_out else event_line(event), soft_wrap=True, highlight=False)
            after = event["id"]
        if not follow:
            return
        time.sleep(1.0)


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
        bool, typer.Option(help="Play the five moves under a steady load, print a summary, and stop.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Start everything locally, serve the example service, and show the five moves to try."""
    from gpuroam.controller.client import DEFAULT_STATE_DIR, ControlPlaneClient
    from gpuroam.controller.server import ControlPlane
    from gpuroam.demo import tear_down
    from gpuroam.logs import configure_logging
    from gpuroam.spec import SpecError, load_spec, spec_to_dict

    state_dir = state or DEFAULT_STATE_DIR
    try:
        parsed = load_spec(spec)
    except SpecError as error:
        _die(str(error))
    state_dir.mkdir(parents=True, exist_ok=True)
    configure_logging("info", path=state_dir / "demo.log")
    plane = ControlPlane(state_dir, regions, port=port, gateway_port=gateway_port)
    try:
        plane.start()
    except RuntimeError as error:
        _die(str(error))
    client = ControlPlaneClient(plane.url, plane.token)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the demo as cleanly as Ctrl-C
    try:
        _call(client.post, "/services", spec_to_dict(parsed))
        service = _wait_ready(client, parsed.name, parsed.regions.min_regions, 600.0, quiet=json_out)
        from gpuroam.console import service_table
        from gpuroam.ui import dashboard_url

        if scripted:
            failed = _play_scripted(client, parsed.name, json_out)
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


def _play_scripted(client: Any, name: str, json_out: bool) -> int:
    """The five moves under load; returns how many requests failed (the goal is none)."""
    from gpuroam.console import scripted_summary
    from gpuroam.demo import play

    summary = play(client, name, "asia-southeast1", "nvidia-l4", say=(lambda _: None) if json_out else out.print)
    if json_out:
        out.print_json(data=summary.as_dict())
    else:
        out.print(scripted_summary(summary))
    return summary.failed


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
