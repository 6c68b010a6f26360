"""The long-running processes: a worker, a gateway, the control plane (`serve`)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer

from gpuroam.cli.app import app
from gpuroam.cli.common import StateOption, console, die
from gpuroam.cli.net import network_for_serve

if TYPE_CHECKING:
    from gpuroam.catalog import Catalog
    from gpuroam.gateway import ServiceBackends
    from gpuroam.gateway.identity import TrustedProxies
    from gpuroam.providers.factories import ProviderChoice
    from gpuroam.worker.config import WorkerConfig


# The fast path's options (worker/accelerate.py, worker/warmup.py, worker/artefact.py).
CompileOption = Annotated[
    str,
    typer.Option(
        help="The fast path: auto (on for CUDA), none (eager), or a torch.compile mode "
        "(reduce-overhead, default, max-autotune, max-autotune-no-cudagraphs). max-autotune had not "
        "compiled one batch size after 9.5 minutes on an H200 (bench/RESULTS.md): use it only with a kept "
        "--compile-cache."
    ),
]
BucketsOption = Annotated[
    str | None, typer.Option(help="Batch sizes compiled (in the background, while serving), e.g. 1,2,4,8,16,32.")
]
CompileCacheOption = Annotated[
    Path | None,
    typer.Option(
        help="Compiled kernels and the compiled artefact, kept across restarts and shared by replicas "
        "(~/.cache/gpuroam/inductor, or $GPUROAM_COMPILE_CACHE)."
    ),
]
CompileSizesOption = Annotated[
    str | None,
    typer.Option(
        help="Image sizes compiled after start, most requested first, e.g. 512x512,512x768 (default: A1111's "
        "common sizes and their hires-fix targets; other sizes are compiled once asked for twice)."
    ),
]
BuildCacheOption = Annotated[
    bool,
    typer.Option(
        "--build-cache",
        help="Compile every graph of the common sizes now, write the compiled artefact into --compile-cache "
        "and exit: run once per GPU type, and replicas of that type start without compiling.",
    ),
]


# Where a worker finds LoRAs, embeddings, VAEs and more checkpoints (A1111's flags, worker/library.py).
def _asset_dir(help: str) -> typer.models.OptionInfo:
    return typer.Option(exists=True, file_okay=False, resolve_path=True, help=help)  # type: ignore[no-any-return]  # typer returns Any


LoraDirOption = Annotated[Path | None, _asset_dir("LoRA files, used as <lora:name:weight> in prompts.")]
EmbeddingsDirOption = Annotated[Path | None, _asset_dir("Textual-inversion embeddings, used by file name in prompts.")]
VaeDirOption = Annotated[Path | None, _asset_dir("VAE files, chosen with the sd_vae option.")]
CkptDirOption = Annotated[
    Path | None, _asset_dir("More checkpoints, listed by sd-models and chosen with sd_model_checkpoint.")
]

# What one request may ask of the GPU (spec `limits:`, worker/service.py).
MaxMegapixelStepsOption = Annotated[
    float, typer.Option(min=1, help="Most width x height x steps x images (in millions) one request may ask for.")
]
MaxPromptCharsOption = Annotated[
    int, typer.Option(min=1, help="Most characters of prompt, negative prompt and styles in one request.")
]

# Who a caller is and what it may do at the endpoint (gateway/identity.py, gateway/callers.py).
MaxInFlightOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Most generation requests one caller may have in flight (0: no limit), unless the service's spec "
        "says (endpoint.max_in_flight); more get 429.",
    ),
]
TrustedProxyOption = Annotated[
    list[str] | None,
    typer.Option(help="A proxy (address or CIDR) whose X-Forwarded-For names the client. Repeat for more."),
]
GatewayTokenOption = Annotated[
    Path | None,
    typer.Option(
        help="Control-plane token (default: the state dir's); also what /gpuroam/health and /metrics ask for."
    ),
]


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
    max_megapixel_steps: MaxMegapixelStepsOption = 1000.0,
    max_prompt_chars: MaxPromptCharsOption = 10_000,
    api_auth: Annotated[
        str | None, typer.Option(help="user:password[,user2:password2] for HTTP basic auth on the API.")
    ] = None,
    compile: CompileOption = "auto",
    buckets: BucketsOption = None,
    compile_cache: CompileCacheOption = None,
    compile_sizes: CompileSizesOption = None,
    build_cache: BuildCacheOption = False,
    lora_dir: LoraDirOption = None,
    embeddings_dir: EmbeddingsDirOption = None,
    vae_dir: VaeDirOption = None,
    ckpt_dir: CkptDirOption = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve Stable Diffusion with the A1111 Web UI API and page."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import uvicorn

    from gpuroam.logs import configure_logging
    from gpuroam.worker import WorkerConfig, create_app

    auth, sizes, image_sizes = _parsed_flags(api_auth, compile, buckets, compile_sizes)
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
        max_megapixel_steps=max_megapixel_steps,
        max_prompt_chars=max_prompt_chars,
        api_auth=auth,
        compile=compile,
        buckets=sizes,
        compile_cache=str(compile_cache) if compile_cache else None,
        compile_sizes=image_sizes,
        lora_dir=_text(lora_dir),
        embeddings_dir=_text(embeddings_dir),
        vae_dir=_text(vae_dir),
        ckpt_dir=_text(ckpt_dir),
    )
    if build_cache:
        _build_cache(config)
        return
    console.print(
        f"[bold]gpuroam worker[/] model [cyan]{model}[/] on [cyan]{device}[/]: "
        f"http://{host}:{port}/ (API /sdapi/v1, ready when /internal/ping answers 200)"
    )
    uvicorn.run(
        create_app(config), host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5
    )


def _parsed_flags(
    api_auth: str | None, compile: str, buckets: str | None, compile_sizes: str | None
) -> tuple[tuple[tuple[str, str], ...], tuple[int, ...], tuple[tuple[int, int], ...] | None]:
    """--api-auth, --buckets and --compile-sizes read, and --compile checked; a bad one names itself."""
    from gpuroam.worker import WorkerConfig
    from gpuroam.worker.accelerate import COMPILE_MODES

    try:
        auth = WorkerConfig.parse_api_auth(api_auth)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--api-auth") from error
    if compile != "auto" and compile not in COMPILE_MODES:
        raise typer.BadParameter(f"use auto or one of {', '.join(COMPILE_MODES)}", param_hint="--compile")
    try:
        sizes = tuple(int(size) for size in buckets.split(",")) if buckets else ()
    except ValueError:
        raise typer.BadParameter("give batch sizes separated by commas, e.g. 1,2,4,8", param_hint="--buckets") from None
    try:
        return auth, sizes, WorkerConfig.parse_sizes(compile_sizes)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--compile-sizes") from error


def _text(path: Path | None) -> str | None:
    return str(path) if path else None


def _build_cache(config: WorkerConfig) -> None:
    """`gpuroam worker --build-cache`: build the artefact here and now, saying how far it got."""
    import time

    from gpuroam.worker.prebuild import build_cache

    started = time.monotonic()
    path = build_cache(config, lambda line: console.print(f"[dim]{time.monotonic() - started:6.1f} s[/] {line}"))
    if path is None:
        die(
            "nothing was compiled, so no artefact was written: the fast path is off "
            "(--compile none, or a CPU without --compile default)"
        )
    packages = list(path.glob("*.pt2"))
    size = sum(package.stat().st_size for package in packages) / 1e6
    console.print(f"[green]compiled artefact[/] {path} ({len(packages)} packages, {size:.1f} MB)")


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
    token_file: GatewayTokenOption = None,
    state: StateOption = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    region: Annotated[str | None, typer.Option(help="This gateway's region, for clients that send none.")] = None,
    hold: Annotated[float, typer.Option(min=0, help="Seconds a request waits for a live replica.")] = 30.0,
    retries: Annotated[int, typer.Option(min=0, max=10, help="Other replicas tried before the first byte.")] = 3,
    upstream_timeout: Annotated[float, typer.Option(min=1, help="Seconds a replica may take to answer.")] = 600.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body accepted.")] = 50.0,
    max_in_flight_per_caller: MaxInFlightOption = 64,
    trusted_proxy: TrustedProxyOption = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="HTTPS with --backend: the PEM certificate (chain) file; with --tls-key.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="HTTPS with --backend: the certificate's PEM key file.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """The global endpoint: proxy to healthy replicas, retry, hold while none is live.

    Its /gpuroam/health report and /metrics answer only the control-plane token (--token-file), or
    callers on this machine when the gateway has no token."""
    from gpuroam.catalog import load_catalog
    from gpuroam.gateway import Gateway, Limits, ProxyConfig, run_gateway
    from gpuroam.logs import configure_logging

    configure_logging(log_level)
    catalog = load_catalog()
    if bool(backend) == bool(controller):
        die("give either --backend URL (repeatable) or --controller URL, not both or neither")
    static: list[ServiceBackends] = []
    follow: tuple[str, str] | None = None
    proxies = _trusted_proxies(trusted_proxy)
    internal_token = _operator_token(token_file) if backend else None
    if backend:
        static = [_static_service(backend, port, _tls_files(tls_cert, tls_key), catalog)]
        scheme = "https" if static[0].tls else "http"
        console.print(f"[bold]gpuroam gateway[/] on {scheme}://{host}:{port} in front of {len(backend)} replicas")
    elif controller:
        from gpuroam.statedir import DEFAULT_STATE_DIR, token_path

        if tls_cert or tls_key:
            die("with --controller, HTTPS is each service's: set endpoint.tls in its spec, not --tls-cert")
        token = token_file or token_path(state or DEFAULT_STATE_DIR)
        if not token.is_file():
            die(f"no control-plane token at {token}; pass --token-file or --state")
        follow = (controller, token.read_text().strip())
        internal_token = follow[1]
        console.print(f"[bold]gpuroam gateway[/] following {controller}")
    config = ProxyConfig(
        hold_s=hold,
        retries=retries,
        upstream_timeout_s=upstream_timeout,
        region=region,
        trusted_proxies=proxies,
        max_in_flight_per_caller=max_in_flight_per_caller,
    )
    limits = Limits(max_body_bytes=int(max_body_mb * 1024 * 1024))
    ready = None
    if controller and state is not None:  # started by `serve`: say when this gateway can take over
        from gpuroam.gateway.supervisor import mark_ready

        ready = functools.partial(mark_ready, state, os.getpid())
    try:
        run_gateway(
            Gateway(host, config, limits, catalog=catalog, internal_token=internal_token), static, follow, ready
        )
    except OSError as error:
        die(f"the gateway could not listen on {host}:{port}: {error.strerror or error}; pick another --port")


def _operator_token(token_file: Path | None) -> str | None:
    """A standalone gateway's token for its /gpuroam/health and /metrics; without one, only this machine reads them."""
    if token_file is None:
        return None
    if not token_file.is_file():
        die(f"no token file at {token_file}; write one (any secret string) or leave --token-file out")
    return token_file.read_text().strip()


@app.command("restart-gateway")
def restart_gateway(state: StateOption = None) -> None:
    """Replace the running gateway (after an upgrade, say) without failing a request."""
    from gpuroam.gateway.supervisor import GatewayProcess
    from gpuroam.statedir import DEFAULT_STATE_DIR, ServerInfo

    state_dir = state or DEFAULT_STATE_DIR
    info = ServerInfo.read(state_dir)
    process = GatewayProcess(state_dir, info.url, urlsplit(info.url).hostname or "127.0.0.1") if info else None
    if process is None or process.running_pid() is None:
        die(f"no gateway of `gpuroam serve` runs for state dir {state_dir}; start one with `gpuroam serve`")
    with console.status("starting a new gateway beside the old one, then draining the old one"):
        try:
            pid = process.restart()
        except RuntimeError as error:
            die(str(error))
    console.print(f"gateway restarted: pid {pid}")


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
    from gpuroam.logs import configure_logging
    from gpuroam.serve import ControlPlane, ServeOptions
    from gpuroam.statedir import DEFAULT_STATE_DIR, token_path

    configure_logging(log_level)
    state_dir = state or DEFAULT_STATE_DIR
    try:
        chosen = _provider_choice(
            provider, state_dir, regions, network, kubeconfig, context, service_type, project, gke_region, endpoint
        )
        options = ServeOptions(
            state_dir, port=port, host=host, store_url=store, catalog_file=catalog, gateway_port=gateway_port or None
        )
        plane = ControlPlane(options, chosen)
    except ValueError as error:
        die(str(error))
    console.print(f"[bold]gpuroam control plane[/] on http://{host}:{port} (state in {state_dir})")
    console.print(f"[bold]dashboard[/] http://{host}:{port}/#token=$(cat {token_path(state_dir)})")
    if plane.gateway is not None:
        console.print(
            f"[bold]gateway[/] endpoints from http://{host}:{gateway_port} (log: {state_dir / 'gateway.log'})"
        )
    running = plane.run_forever()
    if running:
        console.print(
            f"[yellow]{running} replica(s) keep running[/] without a control plane (and still cost their GPUs): "
            "`gpuroam serve` again adopts them; with it running, `gpuroam down NAME` removes a service"
        )


def _provider_choice(
    provider: str,
    state_dir: Path,
    regions: Path,
    network: str,
    kubeconfig: Path | None,
    contexts: list[str] | None,
    service_type: str,
    project: str | None,
    gke_regions: list[str] | None,
    endpoint: str,
) -> ProviderChoice:
    """The provider `serve`'s flags name; ValueError says what to fix."""
    from gpuroam.providers.factories import gke_provider, kubernetes_provider, local_provider

    if network != "none" and provider != "local":
        raise ValueError("--network netns works only with --provider local (it puts local sites in network namespaces)")
    if provider == "gke":
        return gke_provider(project, gke_regions or [], endpoint)
    if provider == "kubernetes":
        return kubernetes_provider(kubeconfig or Path.home() / ".kube" / "config", contexts or [], service_type)
    if provider != "local":
        raise ValueError(f"unknown --provider {provider!r}: use local, kubernetes or gke")
    if not regions.is_file():
        raise ValueError(f"no local regions file at {regions}; pass --regions FILE (see examples/local-regions.yaml)")
    return local_provider(regions, state_dir, network_for_serve(network, regions, state_dir))


def _trusted_proxies(blocks: list[str] | None) -> TrustedProxies:
    from gpuroam.gateway.identity import TrustedProxies

    try:
        return TrustedProxies.parse(blocks or [])
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--trusted-proxy") from error


def _static_service(backend: list[str], port: int, tls: tuple[str, str] | None, catalog: Catalog) -> ServiceBackends:
    """The one service a gateway with --backend flags serves."""
    from gpuroam.gateway import ServiceBackends, parse_backend

    try:
        backends = tuple(parse_backend(text, catalog) for text in backend)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--backend") from error
    return ServiceBackends("default", port, backends, tls=tls)


def _tls_files(certificate: Path | None, key: Path | None) -> tuple[str, str] | None:
    """The gateway's HTTPS files, checked now: a bad pair is an error here, not a port that never opens."""
    if certificate is None and key is None:
        return None
    if certificate is None or key is None:
        die("give both --tls-cert and --tls-key (PEM files), or neither")
    from gpuroam.tls import TlsError, server_context

    try:
        server_context(str(certificate), str(key))
    except TlsError as error:
        die(str(error))
    return str(certificate.absolute()), str(key.absolute())  # not resolved: certbot renews behind its live/ links
