"""`gpuroam serve`: the store, the provider, the reconcile loop and the API in one process,
and the gateway (the global endpoint) in a process of its own.

The reconcile loop runs in a thread, one pass a second; the API only writes desired state. The
state dir holds the SQLite store (unless --store names PostgreSQL), the API token and
server.json, which client commands read to find the server.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpuroam.catalog import Catalog, load_catalog
from gpuroam.controller.api import GatewayAddress, create_api
from gpuroam.controller.gateway_process import GatewayProcess
from gpuroam.controller.reconciler import Reconciler
from gpuroam.controller.store import Store
from gpuroam.providers.base import Provider
from gpuroam.providers.local import LocalProvider
from gpuroam.providers.netns import RegionNetwork

log = logging.getLogger("gpuroam.controller")

ProviderFactory = Callable[[Store, Catalog], Provider]


@dataclass(frozen=True)
class ServerInfo:
    """What client commands need to reach a running server."""

    url: str
    token: str

    @classmethod
    def read(cls, state_dir: Path) -> ServerInfo | None:
        path = state_dir / "server.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return cls(url=data["url"], token=(state_dir / "token").read_text().strip())


def load_or_create_token(state_dir: Path) -> str:
    """One token per state dir, readable by its owner only."""
    path = state_dir / "token"
    if path.is_file():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


class ReconcileLoop:
    """Runs passes until stopped; a failing pass is logged and the next one runs anyway."""

    def __init__(self, reconciler: Reconciler, interval_s: float) -> None:
        self.reconciler = reconciler
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpuroam-reconcile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconciler.reconcile()
            except Exception:
                log.exception("reconcile pass failed")
            self._stop.wait(self.interval_s)


class ControlPlane:
    """The store, the provider, the reconcile loop and the API, started and stopped together.

    `gpuroam serve` runs one in the foreground; `gpuroam demo` and tests run one in process."""

    def __init__(
        self,
        state_dir: Path,
        regions_file: Path,
        port: int = 8700,
        host: str = "127.0.0.1",
        store_url: str | None = None,
        catalog_file: Path | None = None,
        interval_s: float = 1.0,
        gateway_port: int | None = 8080,
        provider: ProviderFactory | None = None,
        network: RegionNetwork | None = None,
    ) -> None:
        """`provider` builds a cluster provider from the store and catalog; default: the local sites
        of `regions_file`, each region in its network namespace when `network` is given."""
        import uvicorn

        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        self.store = Store.open(store_url) if store_url else Store.for_state_dir(state_dir)
        self.catalog = load_catalog(catalog_file)
        self.provider: Provider = (
            provider(self.store, self.catalog)
            if provider
            else LocalProvider.from_file(regions_file, state_dir, network=network)
        )
        self.token = load_or_create_token(state_dir)
        self.url = f"http://{host}:{port}"
        self.loop = ReconcileLoop(Reconciler(self.store, self.provider, self.catalog), interval_s)
        gateway = GatewayAddress(host, gateway_port) if gateway_port is not None else None
        self.gateway = GatewayProcess(state_dir, self.url, host) if gateway_port is not None else None
        api = create_api(self.store, self.provider, self.catalog, self.token, gateway)
        self.server = uvicorn.Server(
            uvicorn.Config(api, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=1)
        )
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch_gateway, name="gpuroam-gateway-watch", daemon=True)

    def start(self) -> None:
        """Serve in background threads; returns once the API listens."""
        (self.state_dir / "server.json").write_text(json.dumps({"url": self.url, "pid": os.getpid()}))
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

    def run_forever(self) -> None:
        """Serve in the foreground until Ctrl-C or SIGTERM, then stop the loop and the gateway.

        The API runs in a thread (as in `start`), so uvicorn installs no signal handlers of its
        own: it would re-raise the signal after shutting down and skip this cleanup."""
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        self.start()
        try:
            while not stopping.wait(0.5):
                if self._thread is not None and not self._thread.is_alive():
                    raise RuntimeError(f"the control-plane API on {self.url} stopped")
        finally:
            self.stop()

    def _watch_gateway(self) -> None:
        """The endpoint must not stay down because its process died: start another within a second."""
        assert self.gateway is not None
        while not self._stopping.wait(1.0):
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
