"""`gpuroam serve`'s composition root: the one place that builds the store, the catalog, the provider,
the reconcile loop, the API and the gateway's supervisor, and starts and stops them together.

Everything below it knows its neighbours only through interfaces: the controller sees a `Provider`,
the gateway follows the feed over HTTP, providers are chosen through `providers.factories`. The
reconcile loop and the API run in threads of this process; the gateway (the global endpoint) runs
in a process of its own, so the data plane outlives this one.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from gpuroam.catalog import load_catalog
from gpuroam.controller.api import ApiContext, GatewayAddress, create_api
from gpuroam.controller.loop import ReconcileLoop
from gpuroam.controller.reconciler import Reconciler
from gpuroam.controller.signals import gateway_signals
from gpuroam.controller.store import Store
from gpuroam.gateway.supervisor import GatewayProcess
from gpuroam.providers.base import Provider
from gpuroam.providers.factories import ProviderChoice
from gpuroam.spec import ServiceSpec, parse_spec
from gpuroam.statedir import ensure_state_dir, load_or_create_token, write_server_info

log = logging.getLogger("gpuroam.serve")


@dataclass(frozen=True)
class ServeOptions:
    """Where the control plane keeps its state and listens; `gateway_port` None runs no local gateway."""

    state_dir: Path
    port: int = 8700
    host: str = "127.0.0.1"
    store_url: str | None = None  # default: SQLite in the state dir
    catalog_file: Path | None = None  # default: the bundled catalog
    interval_s: float = 1.0  # between reconcile passes
    gateway_port: int | None = 8080


class ControlPlane:
    """The store, the provider, the reconcile loop, the API and the gateway, started and stopped together.

    `gpuroam serve` runs one in the foreground; `gpuroam demo` and tests run one in process."""

    def __init__(self, options: ServeOptions, provider: ProviderChoice) -> None:
        os.umask(0o077)  # what serve writes (the store and its WAL, logs) is its owner's only
        ensure_state_dir(options.state_dir)
        self.state_dir = options.state_dir
        self.store = Store.open(options.store_url) if options.store_url else Store.for_state_dir(options.state_dir)
        self.catalog = load_catalog(options.catalog_file)
        self.provider: Provider = provider.build(self.catalog, self._spec_of)
        self.token = load_or_create_token(options.state_dir)
        self.url = f"http://{options.host}:{options.port}"
        # A gateway on this machine only where it can reach the replicas (the provider says); it is also
        # where the autoscaler learns the load.
        gateway_port = options.gateway_port if provider.local_gateway else None
        address = GatewayAddress(options.host, gateway_port, self.token) if gateway_port is not None else None
        signals = gateway_signals(self.store, address) if address is not None else None
        reconciler = Reconciler(self.store, self.provider, self.catalog, signals=signals)
        self.loop = ReconcileLoop(reconciler, options.interval_s)
        self.gateway = GatewayProcess(self.state_dir, self.url, options.host) if address is not None else None
        self.context = ApiContext(self.store, self.provider, self.catalog, self.token, address)
        api = create_api(self.context)
        config = uvicorn.Config(
            api, host=options.host, port=options.port, log_config=None, access_log=False, timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch_gateway, name="gpuroam-gateway-watch", daemon=True)

    def _spec_of(self, name: str) -> ServiceSpec | None:
        """The service's spec as the store holds it now (providers that keep per-service objects read it)."""
        record = self.store.get_service(name)
        return parse_spec(record.spec) if record else None

    def start(self) -> None:
        """Serve in background threads; returns once the API listens."""
        write_server_info(self.state_dir, self.url)
        self.loop.start()
        if self.gateway is not None:
            self.gateway.ensure()
            self._watcher.start()
        self._thread = threading.Thread(target=self.server.run, name="gpuroam-api", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the control-plane API could not start on {self.url} (port in use?)")
            threading.Event().wait(0.05)
        log.info("control plane up", extra={"url": self.url, "state_dir": str(self.state_dir)})

    def run_forever(self) -> int:
        """Serve in the foreground until Ctrl-C, SIGTERM or `gpuroam stop`, then stop the loop and the gateway. Returns
        how many replicas keep running: the data plane outlives the control plane, and the next
        `gpuroam serve` adopts them.

        The API runs in a thread (as in `start`), so uvicorn installs no signal handlers of its
        own: it would re-raise the signal after shutting down and skip this cleanup."""
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        self.start()
        try:
            while not stopping.wait(0.5) and not self.context.shutdown.is_set():
                if self._thread is not None and not self._thread.is_alive():
                    raise RuntimeError(f"the control-plane API on {self.url} stopped")
        finally:
            self.stop()
        return len(self.provider.observe())

    def _watch_gateway(self) -> None:
        """The endpoint must not stay down because its process died: start another within a second."""
        while self.gateway is not None and not self._stopping.wait(1.0):
            try:
                self.gateway.supervise()
            except Exception:
                log.exception("could not start the gateway")

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.loop.stop()
        self._stopping.set()
        if self.gateway is not None:
            if self._watcher.is_alive():
                self._watcher.join(timeout=40)
            self.gateway.stop()
        self.store.close()
