"""The gateway process: one listener per service, health checks, housekeeping, its own endpoints.

What it serves comes from `apply` (the control-plane feed, or `--backend` flags): services
appear, change and go, and the listeners follow. Everything runs on one event loop (uvloop
when installed); nothing here blocks it.

The service ports face the internet, so the gateway's own pages there are the operator's only:
/gpuroam/health gives its report (backends' URLs, regions, load) and /metrics its metrics only to a
caller with the control-plane token (`Authorization: Bearer TOKEN`), or, for a gateway that has
none (`--backend` without `--token-file`), to callers on this machine. Anyone else gets a bare
liveness answer from /gpuroam/health and a 401 from /metrics.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from gpuroam.catalog import Catalog
from gpuroam.gateway.backends import HealthPolicy
from gpuroam.gateway.callers import CallerLimits
from gpuroam.gateway.downstream import ClientConnection
from gpuroam.gateway.health import run_checks
from gpuroam.gateway.metrics import GatewayMetrics
from gpuroam.gateway.proxy import ProxyConfig, Route
from gpuroam.gateway.routing import Backend, Policy
from gpuroam.gateway.wire import Limits, Request, json_response, text_response
from gpuroam.tls import ServerTls, TlsError

log = logging.getLogger("gpuroam.gateway")

HEALTH_PATH = b"/gpuroam/health"
METRICS_PATH = b"/metrics"
FAR_KM = 20_000.0  # an unknown region is as far as anywhere on Earth
OPERATOR_ONLY = (
    "the gateway's metrics are for its operator: send the control-plane token as Authorization: Bearer TOKEN"
)
BEARER_CHALLENGE = b'www-authenticate: Bearer realm="gpuroam gateway"\r\n'


@dataclass(frozen=True)
class ServiceBackends:
    """What one listener serves: a service, its port, its ready replicas, and its API keys (SHA-256 -> name)."""

    name: str
    port: int
    backends: tuple[Backend, ...] = field(default_factory=tuple)
    api_keys: Mapping[str, str] = field(default_factory=dict)
    limits: CallerLimits = field(default_factory=CallerLimits)
    key_required: bool = False  # ask for a key even while none is listed (the service's source of keys is empty)
    tls: tuple[str, str] | None = None  # HTTPS: (certificate, key) PEM files

    @property
    def keys(self) -> dict[str, str] | None:
        """The keys a caller must bring one of; None: the endpoint is open."""
        return dict(self.api_keys) if self.api_keys or self.key_required else None


class Gateway:
    def __init__(
        self,
        host: str = "127.0.0.1",
        config: ProxyConfig = ProxyConfig(),
        limits: Limits = Limits(),
        health: HealthPolicy = HealthPolicy(),
        policy: Policy = Policy(),
        catalog: Catalog | None = None,
        probe_interval_s: float = 1.0,
        internal_token: str | None = None,
    ) -> None:
        self.host = host
        self.internal_token = internal_token
        self.config = config
        self.limits = limits
        self.health = health
        self.policy = policy
        self.catalog = catalog
        self.probe_interval_s = probe_interval_s
        self.metrics = GatewayMetrics()
        self.metrics.watch_backends(self._backend_snapshot)
        self.routes: dict[str, Route] = {}
        self._ports: dict[str, int] = {}
        self._tls: dict[str, ServerTls | None] = {}
        self._servers: dict[str, asyncio.Server] = {}
        self._clients: set[ClientConnection] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._bind_errors: dict[str, int] = {}  # service -> port it could not bind (said once)

    async def start(self) -> None:
        """Begin health checks and housekeeping; listeners open as `apply` names services."""
        self._tasks = [
            asyncio.create_task(run_checks(self.routes.values(), self.probe_interval_s)),
            asyncio.create_task(self._housekeeping()),
        ]

    async def apply(self, services: Sequence[ServiceBackends], strict: bool = False) -> None:
        """Make the listeners and backend sets match `services` (idempotent). A port that cannot
        be bound is logged and tried again on the next call, or raises OSError when `strict`."""
        wanted = {s.name: s for s in services}
        moved = [n for n in self.routes if n not in wanted or (wanted[n].port, wanted[n].tls) != self._listening(n)]
        for name in moved:
            await self._close_route(name)
        for name, service in wanted.items():
            if name not in self.routes and not await self._open_route(service, strict):
                continue
            before = {b.replica for b in self.routes[name].backends.backends()}
            self.routes[name].update(service.backends)
            self.routes[name].api_keys = service.keys
            self.routes[name].limits = service.limits
            if before != {b.replica for b in service.backends}:
                log.info(
                    "backends changed",
                    extra={"service": name, "backends": [f"{b.replica}@{b.region}/{b.gpu}" for b in service.backends]},
                )

    def _listening(self, name: str) -> tuple[int, tuple[str, str] | None]:
        tls = self._tls.get(name)
        return self._ports[name], tls.files if tls else None

    async def _open_route(self, service: ServiceBackends, strict: bool) -> bool:
        loop = asyncio.get_running_loop()
        try:
            tls = ServerTls(*service.tls) if service.tls else None
        except TlsError as error:
            if self._bind_errors.get(service.name) != service.port:
                log.error("cannot serve HTTPS: retrying", extra={"service": service.name, "error": str(error)})
            self._bind_errors[service.name] = service.port
            return False
        secure = tls is not None
        route = Route(
            service.name, loop, self.metrics, self.config, self.health, self.policy, self._distance_km, secure=secure
        )
        handler = functools.partial(self._handle, route)
        try:
            self._servers[service.name] = await loop.create_server(
                lambda: ClientConnection(handler, self.limits, loop, self._clients),
                self.host,
                service.port,
                reuse_address=True,
                reuse_port=True,  # a new gateway binds beside this one before it hands over (see `drain`)
                backlog=2048,
                ssl=tls.context if tls else None,
                ssl_handshake_timeout=self.limits.header_timeout_s if tls else None,
            )
        except OSError as error:
            if self._bind_errors.get(service.name) != service.port:
                log.error(
                    "cannot listen: is the port in use? retrying",
                    extra={"service": service.name, "port": service.port, "error": error.strerror or str(error)},
                )
            self._bind_errors[service.name] = service.port
            if strict:
                raise
            return False
        self._bind_errors.pop(service.name, None)
        self.routes[service.name], self._ports[service.name], self._tls[service.name] = route, service.port, tls
        scheme = "https" if secure else "http"
        log.info("listening", extra={"service": service.name, "url": f"{scheme}://{self.host}:{service.port}"})
        return True

    async def drain(self, grace_s: float) -> None:
        """Hand over without failing a request: stop accepting, finish what clients asked, close.

        The listeners close first, so new connections go to the gateway that bound the same ports
        beside this one (SO_REUSEPORT). Each open connection gets its request in hand answered with
        `connection: close`; idle ones close at once. Whatever is still running after `grace_s` is cut."""
        for server in self._servers.values():
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._clients and loop.time() < deadline:
            for client in list(self._clients):
                client.drain()
            await asyncio.sleep(0.05)
        if self._clients:
            log.warning(
                "drain timed out: closing connections with requests in flight", extra={"open": len(self._clients)}
            )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for name in list(self.routes):
            await self._close_route(name)
        for client in list(self._clients):
            client.close()

    def health_report(self) -> dict[str, object]:
        now = asyncio.get_running_loop().time()
        services = []
        for name, route in self.routes.items():
            loads = route.backends.loads()
            backends = [
                {
                    "replica": b.replica,
                    "url": b.url,
                    "region": b.region,
                    "gpu": b.gpu,
                    "usable": loads[b.replica].usable(now),
                    "healthy": loads[b.replica].healthy,
                    "ejected_s": round(max(0.0, loads[b.replica].ejected_until - now), 3),
                    "outstanding": loads[b.replica].outstanding,
                }
                for b in route.backends.backends()
            ]
            services.append(
                {
                    "name": name,
                    "port": self._ports[name],
                    "usable": sum(1 for b in backends if b["usable"]),
                    "backends": backends,
                    # what the autoscaler reads (gpuroam.autoscale.Load)
                    "in_flight": sum(loads[b.replica].outstanding for b in route.backends.backends()),
                    "retiring": route.backends.retiring(),  # replica -> requests still at it, since it left
                    "held": route.demand.held,
                    "last_request_at": route.demand.last_request_at,
                    "demand": route.demand.by_region(time.time()),
                }
            )
        return {"status": "ok", "services": services, "traffic": self.metrics.traffic.snapshot(time.monotonic())}

    async def _handle(self, route: Route, client: ClientConnection, request: Request) -> None:
        path = request.path
        if not path.startswith(b"/"):
            detail = "only origin-form targets (/path) are served: this gateway is not a forward proxy"
            client.write(json_response(400, {"error": detail}, keep_alive=False))
            client.close()
        elif path == HEALTH_PATH and request.method == b"GET":
            report = self.health_report() if self._operator(request) else {"status": "ok"}
            client.write(json_response(200, report, request.keep_alive))
        elif path == METRICS_PATH and request.method == b"GET":
            if not self._operator(request):
                client.write(json_response(401, {"error": OPERATOR_ONLY}, request.keep_alive, BEARER_CHALLENGE))
                return
            body = self.metrics.render()
            client.write(text_response(200, body, b"text/plain; version=0.0.4", request.keep_alive))
        else:
            await route.forward(client, request)

    def _operator(self, request: Request) -> bool:
        """The control-plane token, or (for a gateway without one) a caller on this machine."""
        if self.internal_token is None:
            return _loopback(request.client_ip)
        credentials = request.header(b"authorization") or b""
        return hmac.compare_digest(credentials, b"Bearer " + self.internal_token.encode())

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for client in list(self._clients):
                client.expire(now)
            for route in self.routes.values():
                route.expire(now)
                for pool in route.pools.values():
                    pool.sweep(now)
            for tls in self._tls.values():
                if tls is not None:
                    tls.refresh()  # a certificate renewed in place, for a gateway the feed does not call either

    async def _close_route(self, name: str) -> None:
        server = self._servers.pop(name)
        server.close()
        self.routes.pop(name).close()
        self._ports.pop(name)
        self._tls.pop(name, None)
        log.info("stopped listening", extra={"service": name})

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - the gateway lives as long as the process
    def _distance_km(self, a: str, b: str) -> float:
        if self.catalog is None or a not in self.catalog.regions or b not in self.catalog.regions:
            return FAR_KM
        return self.catalog.distance_km(a, b)

    def _backend_snapshot(self) -> Iterator[tuple[str, str, bool]]:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            return
        for name, route in self.routes.items():
            loads = route.backends.loads()
            for backend in route.backends.backends():
                yield name, backend.region, loads[backend.replica].usable(now)


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
