"""Active health checks: GET /internal/ping on every backend about once a second.

A replica that stops answering is marked down after a couple of failed probes, before any
client request has to find out, and the requests waiting on it go elsewhere; an ejected
replica returns as soon as a probe passes. A replica still compiling its fast path answers with
its warmth (current speed as a share of full speed, `X-Gpuroam-Warmth`), and gets that share.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable

from gpuroam.gateway.proxy import Route
from gpuroam.gateway.upstream import Pool, UpstreamConnection, UpstreamError
from gpuroam.gateway.wire import Headers

PING_PATH = b"/internal/ping"
WARMTH_HEADER = b"x-gpuroam-warmth"
MIN_WARMTH = 0.05  # a replica that says less (or nonsense) still gets a trickle: its warmth is then measured


async def probe(pool: Pool, timeout_s: float) -> float | None:
    """The backend's warmth if it answers its ping with a 2xx within `timeout_s`, else None."""
    head = b"GET %s HTTP/1.1\r\nhost: %s:%d\r\nuser-agent: gpuroam-gateway-health\r\n\r\n" % (
        PING_PATH,
        pool.host.encode(),
        pool.port,
    )
    conn: UpstreamConnection | None = pool.take_idle()
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(2):  # a pooled connection may have been closed by the backend meanwhile
                reused = conn is not None
                conn = conn or await pool.connect()
                try:
                    response = await conn.send(head, b"", head_only=False)  # bounded by asyncio.timeout
                    await conn.stream_to(lambda _: None)
                    break
                except UpstreamError as exc:
                    conn.close()
                    conn = None
                    if not reused or exc.got_bytes:
                        return None
            else:
                return None
    except (UpstreamError, TimeoutError):
        if conn is not None:
            conn.close()
        return None
    if response.keep_alive:
        pool.release(conn)
    else:
        conn.close()
    return warmth(response.headers) if 200 <= response.status < 300 else None


def warmth(headers: Headers) -> float:
    """The warmth a ping answer states: 1 when it states none, bounded to [MIN_WARMTH, 1]."""
    value = next((v for name, v in headers if name == WARMTH_HEADER), None)
    try:
        stated = float(value) if value is not None else 1.0
    except ValueError:
        return MIN_WARMTH
    return min(1.0, max(MIN_WARMTH, stated)) if math.isfinite(stated) else MIN_WARMTH


async def check_all(routes: Iterable[Route], timeout_s: float) -> None:
    """One round of probes, all backends at once; results go to each route's backend set."""
    targets = [(route, replica, pool) for route in routes for replica, pool in list(route.pools.items())]
    results = await asyncio.gather(*(probe(pool, timeout_s) for _, _, pool in targets))
    for (route, replica, _), result in zip(targets, results, strict=True):
        if route.backends.probed(replica, result is not None, route.loop.time(), warmth=result or 1.0):
            route.abandon(replica)


async def run_checks(routes: Iterable[Route], interval_s: float = 1.0) -> None:
    """Probe forever; a round slower than the interval starts the next one at once."""
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await check_all(list(routes), timeout_s=max(0.2, interval_s * 0.8))
        await asyncio.sleep(max(0.0, interval_s - (loop.time() - began)))
