"""Run a gateway in the foreground until SIGINT or SIGTERM: `gpuroam gateway` and `gpuroam serve`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from gpuroam.gateway.feed import follow_control_plane
from gpuroam.gateway.server import Gateway, ServiceBackends

log = logging.getLogger("gpuroam.gateway")


async def serve_gateway(
    gateway: Gateway,
    static: Sequence[ServiceBackends] = (),
    controller: tuple[str, str] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve `static` services, or what the controller `(url, token)` says, until `stop` is set."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread: the caller stops us
            break
    await gateway.start()
    feed: asyncio.Task[None] | None = None
    try:
        if static:
            await gateway.apply(static, strict=True)
        if controller is not None:
            feed = asyncio.create_task(follow_control_plane(controller[0], controller[1], gateway.apply))
        await stop.wait()
    finally:
        if feed is not None:
            feed.cancel()
        await gateway.stop()
        log.info("gateway stopped")


def run(gateway: Gateway, static: Sequence[ServiceBackends] = (), controller: tuple[str, str] | None = None) -> None:
    """Block on a fresh event loop (uvloop: the gateway's per-request cost is the loop's)."""
    import uvloop

    uvloop.run(serve_gateway(gateway, static, controller))
