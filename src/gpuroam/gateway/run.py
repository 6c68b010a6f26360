"""Run a gateway in the foreground until SIGINT or SIGTERM: `gpuroam gateway` and `gpuroam serve`.

SIGTERM drains (see `Gateway.drain`): a gateway restarted beside this one on the same ports takes
over without a failed request. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence

from gpuroam.gateway.feed import follow_control_plane
from gpuroam.gateway.server import Gateway, ServiceBackends

log = logging.getLogger("gpuroam.gateway")

DRAIN_S = 30.0  # as Kubernetes' default termination grace period


async def serve_gateway(
    gateway: Gateway,
    static: Sequence[ServiceBackends] = (),
    controller: tuple[str, str] | None = None,
    stop: asyncio.Event | None = None,
    ready: Callable[[], None] | None = None,
    drain_s: float = DRAIN_S,
) -> None:
    """Serve `static` services, or what the controller `(url, token)` says, until `stop` is set.

    `ready` is called once every service named so far has its listener: from then on, this
    gateway can take over from another on the same ports."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    hurry = asyncio.Event()

    def on_signal() -> None:
        (hurry if stop.is_set() else stop).set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, on_signal)
        except (NotImplementedError, RuntimeError):  # not the main thread: the caller stops us
            break
    await gateway.start()
    announced = ready is None

    async def apply(services: Sequence[ServiceBackends]) -> None:
        nonlocal announced
        await gateway.apply(services)
        if ready is not None and not announced and {s.name for s in services} <= set(gateway.routes):
            announced = True
            ready()

    feed: asyncio.Task[None] | None = None
    try:
        if static:
            await gateway.apply(static, strict=True)
            await apply(static)  # every listener is open: this only announces readiness
        if controller is not None:
            feed = asyncio.create_task(follow_control_plane(controller[0], controller[1], apply))
        await stop.wait()
        if feed is not None:
            feed.cancel()
        waits = [asyncio.create_task(gateway.drain(drain_s)), asyncio.create_task(hurry.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
    finally:
        if feed is not None:
            feed.cancel()
        await gateway.stop()
        log.info("gateway stopped")


def run(
    gateway: Gateway,
    static: Sequence[ServiceBackends] = (),
    controller: tuple[str, str] | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Block on a fresh event loop (uvloop: the gateway's per-request cost is the loop's)."""
    import uvloop

    uvloop.run(serve_gateway(gateway, static, controller, ready=ready))
