"""Active health checks: GET /internal/ping on every backend about once a second.

A replica that stops answering is marked down after a couple of failed probes, before any
client request has to find out, and the requests waiting on it go elsewhere; an ejected
replica returns as soon as a probe passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from gpuroam.gateway.proxy import Route
from gpuroam.gateway.upstream import Pool, UpstreamConnection, UpstreamError

PING_PATH = b"/internal/ping"


async def probe(pool: Pool, timeout_s: float) -> bool:
    """Whether the backend answers its ping with a 2xx within `timeout_s`."""
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
                        return False
            else:
                return False
    except (UpstreamError, TimeoutError):
        if conn is not None:
            conn.close()
        return False
    if response.keep_alive:
        pool.release(conn)
    else:
        conn.close()
    return 200 <= response.status < 300


async def check_all(routes: Iterable[Route], timeout_s: float) -> None:
    """One round of probes, all backends at once; results go to each route's backend set."""
    targets = [(route, replica, pool) for route in routes for replica, pool in list(route.pools.items())]
    results = await asyncio.gather(*(probe(pool, timeout_s) for _, _, pool in targets))
    for (route, replica, _), ok in zip(targets, results, strict=True):
        if route.backends.probed(replica, ok, route.loop.time()):
            route.abandon(replica)


async def run_checks(routes: Iterable[Route], interval_s: float = 1.0) -> None:
    """Probe forever; a round slower than the interval starts the next one at once."""
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await check_all(list(routes), timeout_s=max(0.2, interval_s * 0.8))
        await asyncio.sleep(max(0.0, interval_s - (loop.time() - began)))
