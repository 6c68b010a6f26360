"""One service behind one listener: pick a replica, forward, retry before the first byte, relay.

The request body is whole before a replica is tried, so a replica that refuses, resets or
answers 502/503 before anything reached the client is replaced by another, preferably in
another region, within a retry budget. While no replica is usable (a GPU type or region was
just lost and replacements are starting) requests wait here, up to `hold_s`, rather than fail.
Once the first byte went to the client nothing is retried: a backend dying mid-response cuts
the client's connection, which is the only honest way to say the body is incomplete.

Every request carries its caller's identity to the replica (identity.py), which keeps each caller to
its own jobs; a caller's options are kept here (callers.py), and a caller has at most
`max_in_flight_per_caller` generation requests in flight.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpuroam.gateway.affinity import GENERATION_PATHS, Affinity, Preference, cookie_replica, set_cookie
from gpuroam.gateway.backends import BackendSet, HealthPolicy
from gpuroam.gateway.callers import (
    OPTIONS_PATH,
    CallerLimits,
    CallerOptions,
    InFlight,
    Rates,
    Refusal,
    requested_images,
)
from gpuroam.gateway.demand import ServiceDemand
from gpuroam.gateway.downstream import ClientConnection
from gpuroam.gateway.identity import IDENTITY_HEADER, Caller, TrustedProxies, identify
from gpuroam.gateway.metrics import GatewayMetrics
from gpuroam.gateway.routing import Backend, Policy, affinity_holds, choose
from gpuroam.gateway.upstream import Pool, ResponseHead, UpstreamConnection, UpstreamError
from gpuroam.gateway.wire import (
    LAST_CHUNK,
    Request,
    chunk,
    json_response,
    response_head,
    text_response,
    upstream_head,
)

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
# What a caller's requests in flight and rates count: generations, and the image work of the Extras tab.
COSTLY_PATHS = GENERATION_PATHS | {
    b"/sdapi/v1/extra-single-image",
    b"/sdapi/v1/extra-batch-images",
    b"/sdapi/v1/png-info",
    b"/sdapi/v1/interrogate",
}
KEYED_HEADERS = frozenset({IDENTITY_HEADER, b"authorization"})  # a keyed endpoint's credentials stop here
OPEN_HEADERS = frozenset({IDENTITY_HEADER})
PROTO_HEADERS = frozenset({b"x-forwarded-proto"})  # the scheme the client used is the gateway's to say
Distance = Callable[[str, str], float]


@dataclass(frozen=True)
class ProxyConfig:
    hold_s: float = 30.0  # how long a request waits for a live replica before a 503
    retries: int = 3  # further replicas tried after the first fails before any byte
    upstream_timeout_s: float = 600.0  # a CPU replica may take minutes for a large batch
    region: str | None = None  # the gateway's own region, for clients that do not send X-Client-Region
    retry_after_s: int = 5
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)  # whose X-Forwarded-For names the client
    max_in_flight_per_caller: int = 64  # generation requests; 0: no limit


def retryable(request: Request) -> bool:
    """Whether a request a replica may have begun can be sent again (generation requests are seeded)."""
    return request.method in IDEMPOTENT or request.path in GENERATION_PATHS


class Route:
    """The backends of one service, their connection pools, and where jobs stick."""

    def __init__(
        self,
        service: str,
        loop: asyncio.AbstractEventLoop,
        metrics: GatewayMetrics,
        config: ProxyConfig = ProxyConfig(),
        health: HealthPolicy = HealthPolicy(),
        policy: Policy = Policy(),
        distance_km: Distance | None = None,
        secure: bool = False,
    ) -> None:
        self.service = service
        self.secure = secure  # served over HTTPS: the cookies it sets are Secure
        self._proto = b"x-forwarded-proto: https\r\n" if secure else b"x-forwarded-proto: http\r\n"
        self.loop = loop
        self.metrics = metrics
        self.config = config
        self.policy = policy
        self.distance_km = distance_km
        self.backends = BackendSet(health)
        self.pools: dict[str, Pool] = {}
        self.affinity = Affinity()
        self.demand = ServiceDemand()
        self.options = CallerOptions()
        self.in_flight = InFlight()
        self.rates = Rates()
        self.api_keys: dict[str, str] | None = None  # SHA-256 -> name; None: the endpoint is open
        self.limits = CallerLimits()  # what each caller may do (the spec's endpoint:)
        self._stamps: dict[str, bytes] = {}
        self._turn = 0  # breaks ties between equally loaded replicas round-robin
        self._in_flight: dict[UpstreamConnection, str] = {}  # -> the replica it talks to

    def update(self, backends: Sequence[Backend]) -> None:
        """The registered set as the control plane (or the command line) now says."""
        self.backends.replace_all(backends)
        fresh = {b.replica: b for b in backends}
        for replica in list(self.pools):
            if replica not in fresh or self.pools[replica].url != fresh[replica].url:
                self.pools.pop(replica).close()  # requests in flight there finish on their own connections
                self._stamps.pop(replica, None)
        for replica, backend in fresh.items():
            if replica not in self.pools:
                self.pools[replica] = Pool(backend.url, self.loop)
            self._stamps[replica] = b"x-gpuroam-region: %s\r\nx-gpuroam-gpu: %s\r\nx-gpuroam-replica: %s\r\n" % (
                backend.region.encode(),
                backend.gpu.encode(),
                replica.encode(),
            )

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    def pick(
        self, preference: Preference | None, client_region: str | None, tried: set[str], avoid: str | None
    ) -> Backend | None:
        now = self.loop.time()
        loads = self.backends.loads()
        if preference is not None and preference.replica not in tried:
            backend = self.backends.get(preference.replica)
            load = self.backends.load(preference.replica)
            if (
                backend is not None
                and load is not None
                and load.usable(now)
                and (preference.strict or affinity_holds(backend, self.backends.backends(), loads, now, self.policy))
            ):
                return backend
        distance = self.distance_km if client_region else None
        self._turn += 1
        return choose(
            self.backends.backends(), loads, now, client_region, distance, tried, avoid, self.policy, self._turn
        )

    async def forward(self, client: ClientConnection, request: Request) -> None:
        caller = identify(request, self.config.trusted_proxies, self.api_keys, self.secure)
        if caller is None:
            self.metrics.error(self.service, "no_api_key")
            client.write(self._key_wanted(request))
            return
        if request.path not in COSTLY_PATHS:  # progress polls and the like are cheap: never counted
            await self._forward(client, request, caller)
            return
        limit = self.limits.max_in_flight or self.config.max_in_flight_per_caller
        if not self.in_flight.enter(caller.id, limit):
            self.metrics.error(self.service, "caller_in_flight_limit")
            client.write(self._too_many(request, limit))
            return
        try:
            # Parsing an img2img body (megabytes of base64) only when images are counted at all.
            images = requested_images(request.body) if self.limits.images_per_day is not None else 1
            refusal = self.rates.admit(caller.id, images, self.limits, time.time())
            if refusal is not None:
                self.metrics.error(self.service, "caller_rate_limit")
                client.write(self._over_rate(request, refusal))
                return
            await self._forward(client, request, caller)
        finally:
            self.in_flight.leave(caller.id)

    async def _forward(self, client: ClientConnection, request: Request, caller: Caller) -> None:
        started = self.loop.time()
        if request.path in GENERATION_PATHS:
            request.body = self.options.with_overrides(caller.id, request.body)
        replaced = (KEYED_HEADERS if self.api_keys is not None else OPEN_HEADERS) | PROTO_HEADERS  # the key stays here
        head = upstream_head(request, caller.header + self._proto, replaced)
        preference = self.affinity.preference(request, caller.id)
        client_region = _header_str(request, b"x-client-region") or self.config.region
        self.demand.arrived(client_region or "unknown", time.time())
        tried: set[str] = set()
        avoid: str | None = None
        attempts = 0
        failure = "no replica answered"
        while attempts <= self.config.retries:
            backend = self.pick(preference, client_region, tried, avoid)
            if backend is None:
                if tried and self.backends.any_usable(self.loop.time()):
                    tried.clear()  # every usable replica was tried; they may have recovered
                    continue
                if not await self._hold(started):
                    self.metrics.error(self.service, "no_replica")
                    client.write(self._unavailable(request))
                    return
                continue
            attempts += 1
            last = attempts > self.config.retries
            failure = await self._attempt(backend, client, request, caller, head, started, last)
            if not failure:
                return
            self.metrics.retry(self.service, failure.split(":", 1)[0])
            tried.add(backend.replica)
            avoid = backend.region
        self.metrics.error(self.service, "retries_exhausted")
        client.write(json_response(502, {"error": f"no replica could answer: {failure}"}, request.keep_alive))

    async def _hold(self, started: float) -> bool:
        """Wait for a usable replica (replacements are starting), up to hold_s from the request's start."""
        remaining = started + self.config.hold_s - self.loop.time()
        if remaining <= 0:
            return False
        self.metrics.holding(self.service, +1)
        self.demand.held += 1
        began = self.loop.time()
        try:
            return await self.backends.wait_usable(remaining, self.loop)
        finally:
            self.demand.held -= 1
            self.metrics.holding(self.service, -1)
            self.metrics.held(self.service, self.loop.time() - began)

    async def _attempt(
        self,
        backend: Backend,
        client: ClientConnection,
        request: Request,
        caller: Caller,
        head: bytes,
        started: float,
        last: bool,
    ) -> str:
        """Try one replica. Returns "" once the request is answered, else why it may go elsewhere."""
        replica = backend.replica
        pool, stamp = self.pools[replica], self._stamps[replica]  # the replica may be drained mid-request
        conn = pool.take_idle()
        self.backends.started(replica)
        self.affinity.placed(request, replica, caller.id)
        try:
            while True:
                reused = conn is not None
                if conn is None:
                    try:
                        conn = await pool.connect()
                    except UpstreamError as exc:
                        self._eject(backend)
                        return f"connect: {exc.reason}"
                deadline = self.loop.time() + self.config.upstream_timeout_s
                self._in_flight[conn] = replica
                try:
                    response = await conn.send(head, request.body, request.method == b"HEAD", deadline)
                    break
                except UpstreamError as exc:
                    conn.close()
                    if reused and not (exc.got_bytes or exc.timed_out or exc.abandoned) and retryable(request):
                        conn = None  # most likely the backend closed this idle connection as we sent: not its fault
                        continue
                    self._eject(backend)
                    if exc.timed_out:
                        self.metrics.error(self.service, "backend_timeout")
                        detail = f"replica {replica} sent no response within {self.config.upstream_timeout_s:g} s"
                        client.write(json_response(504, {"error": detail}, request.keep_alive))
                        return ""
                    if retryable(request) and not last:
                        return f"{'abandoned' if exc.abandoned else 'reset'}: {exc.reason}"
                    self.metrics.error(self.service, "backend_failed")
                    client.write(json_response(502, {"error": f"replica {replica}: {exc.reason}"}, request.keep_alive))
                    return ""
            if response.status in (502, 503) and not last and (response.status == 503 or retryable(request)):
                conn.close()
                self._eject(backend)
                return f"status: {response.status}"
            if response.status >= 500:
                self._eject(backend)
            else:
                self.backends.succeeded(replica)
            await self._relay(
                backend, pool, stamp + caller.set_cookie, client, request, caller, conn, response, started
            )
            conn = None
            return ""
        except asyncio.CancelledError:
            if conn is not None:
                conn.close()  # the client left mid-exchange: this connection's state is unknown
            raise
        finally:
            self.backends.finished(replica)
            if conn is not None:
                self._in_flight.pop(conn, None)

    async def _relay(
        self,
        backend: Backend,
        pool: Pool,
        stamp: bytes,
        client: ClientConnection,
        request: Request,
        caller: Caller,
        conn: UpstreamConnection,
        response: ResponseHead,
        started: float,
    ) -> None:
        """Send the head, then stream the body as it arrives; the connection goes back to the pool.

        A response that arrived whole with its head (the usual small JSON answer) goes out in one
        write, which is one system call instead of two. An options answer is read whole: the
        caller's options are kept from it (POST) or shown in it (GET)."""
        self._in_flight[conn] = backend.replica
        try:
            bodiless = request.method == b"HEAD" or response.status in (204, 304) or response.status < 200
            whole = conn.finished()
            if request.path == OPTIONS_PATH and response.status == 200 and not bodiless:
                whole = self._caller_options(request, caller, whole if whole is not None else await _whole(conn))
            extra = stamp if cookie_replica(request) == backend.replica else stamp + set_cookie(backend.replica)
            if whole is not None:
                length = response.content_length if bodiless and response.content_length is not None else len(whole)
                framing = b"" if response.status in (204, 304) else b"content-length: %d\r\n" % length
                if not request.keep_alive:
                    framing += b"connection: close\r\n"
                client.write(response_head(response.status, response.headers, extra, framing) + whole)
            else:
                await self._stream(client, request, conn, response, bodiless, extra)
        except UpstreamError:
            conn.close()
            client.abort()
            self._eject(backend)
            self.metrics.error(self.service, "backend_failed_mid_response")
            return
        finally:
            self._in_flight.pop(conn, None)
        if response.keep_alive and not conn.closed and request.method != b"HEAD":
            pool.release(conn)  # a pool closed meanwhile (replica drained) closes it instead
        else:
            conn.close()
        self.metrics.served(self.service, backend.region, response.status, self.loop.time() - started)

    async def _stream(
        self,
        client: ClientConnection,
        request: Request,
        conn: UpstreamConnection,
        response: ResponseHead,
        bodiless: bool,
        extra: bytes,
    ) -> None:
        """Relay a body still arriving, piece by piece, with back-pressure from the client."""
        chunked = False
        if response.content_length is not None:
            framing = b"content-length: %d\r\n" % response.content_length
        elif bodiless:
            framing = b""
        elif request.http11:
            framing, chunked = b"transfer-encoding: chunked\r\n", True
        else:
            framing = b"connection: close\r\n"
            request.keep_alive = False
        if not request.keep_alive and not framing.startswith(b"connection"):
            framing += b"connection: close\r\n"
        client.write(response_head(response.status, response.headers, extra, framing))
        client.on_backpressure = lambda paused: conn.pause() if paused else conn.resume()
        await conn.stream_to((lambda data: client.write(chunk(data))) if chunked else client.write)
        if chunked:
            client.write(LAST_CHUNK)

    def _caller_options(self, request: Request, caller: Caller, answer: bytes) -> bytes:
        if request.method == b"POST":
            self.options.checked(caller.id, answer)
            return answer
        return self.options.shown(caller.id, answer)

    def _key_wanted(self, request: Request) -> bytes:
        """401 with a basic-auth challenge, so a browser asks for the key (any user name, the key as password)."""
        detail = (
            f"{self.service} needs an API key: send Authorization: Bearer KEY (or basic auth with the key as the "
            f"password); its owner makes one with `gpuroam keys add {self.service}`"
        )
        challenge = b'www-authenticate: Basic realm="%s", charset="UTF-8"\r\n' % self.service.encode()
        return json_response(401, {"error": detail}, request.keep_alive, challenge)

    def _too_many(self, request: Request, limit: int) -> bytes:
        detail = (
            f"this caller already has {limit} generation requests in flight at {self.service}; at most {limit} per "
            "caller (endpoint.max_in_flight in the service spec): wait for an answer before sending more"
        )
        retry_after = b"retry-after: %d\r\n" % self.config.retry_after_s
        return json_response(429, {"error": detail}, request.keep_alive, retry_after)

    def _over_rate(self, request: Request, refusal: Refusal) -> bytes:
        detail = (
            f"{refusal.reason} at {self.service} (endpoint: in the service spec); retry in {refusal.retry_after_s} s"
        )
        retry_after = b"retry-after: %d\r\n" % refusal.retry_after_s
        return json_response(429, {"error": detail}, request.keep_alive, retry_after)

    def expire(self, now: float) -> None:
        """Fail exchanges past their deadline (checked about once a second, not per request)."""
        for conn in [c for c in self._in_flight if c.deadline < now]:
            conn.time_out()

    def abandon(self, replica: str) -> None:
        """The replica stopped answering its probes (hung, or its region cut off): requests that have
        had no byte of answer from it go to another replica now, not after the upstream timeout."""
        for conn in [c for c, r in self._in_flight.items() if r == replica and c.awaiting_head]:
            conn.abandon()

    def _eject(self, backend: Backend) -> None:
        self.backends.eject(backend.replica, self.loop.time())
        self.metrics.ejected(self.service, backend.region)

    def _unavailable(self, request: Request) -> bytes:
        """No replica within the hold: one is being started (a wake from sleep, a failover). A browser
        asking for a page gets a page that says so and reloads itself; an API client gets JSON with
        `finding_gpu` and Retry-After, which the Web UI's script waits on and retries."""
        detail = (
            f"no GPU replica of {self.service} is live yet: one is being started (a wake from sleep or a "
            f"replacement); locally that takes seconds, a new GPU node on a cloud cluster 2-15 minutes. "
            f"Retry after {self.config.retry_after_s} s (`gpuroam status` shows progress)"
        )
        retry_after = b"retry-after: %d\r\n" % self.config.retry_after_s
        accept = request.header(b"accept") or b""
        if request.method == b"GET" and b"text/html" in accept:
            page = WAITING_PAGE % {b"seconds": str(self.config.retry_after_s).encode(), b"detail": html_escape(detail)}
            return text_response(503, page, b"text/html; charset=utf-8", request.keep_alive, retry_after)
        body = {"error": detail, "finding_gpu": True, "retry_after_s": self.config.retry_after_s}
        return json_response(503, body, request.keep_alive, retry_after)


WAITING_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="%(seconds)s">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Finding a GPU</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto; line-height: 1.5">
<h1>Finding a GPU</h1><p>%(detail)s</p><p>This page reloads by itself.</p></body></html>
"""


async def _whole(conn: UpstreamConnection) -> bytes:
    parts: list[bytes] = []
    await conn.stream_to(parts.append)
    return b"".join(parts)


def html_escape(text: str) -> bytes:
    return html.escape(text, quote=True).encode()


def _header_str(request: Request, name: bytes) -> str | None:
    value = request.header(name)
    return value.decode("latin-1") if value else None
