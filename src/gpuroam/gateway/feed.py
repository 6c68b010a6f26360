"""Where the gateway learns its backends: `--backend` flags, or the control plane's ready set.

The control-plane feed polls `GET /api/v1/gateway` twice a second. When the controller does
not answer, the gateway keeps serving its last known set with its own health checks: the
data plane never needs the control plane to carry traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

import httpx

from gpuroam.catalog import Catalog
from gpuroam.gateway.callers import CallerLimits
from gpuroam.gateway.routing import Backend
from gpuroam.gateway.server import ServiceBackends
from gpuroam.gateway_feed import GatewayFeed

log = logging.getLogger("gpuroam.gateway.feed")

Apply = Callable[[Sequence[ServiceBackends]], Awaitable[None]]


def parse_backend(text: str, catalog: Catalog | None = None) -> Backend:
    """`URL` or `REGION/GPU@URL`, e.g. `us-central1/nvidia-l4@http://127.0.0.1:7861`."""
    label, url = ("", text) if text.startswith("http://") or "@" not in text else text.split("@", 1)
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"--backend {text!r}: expected http://HOST:PORT, optionally prefixed by REGION/GPU@")
    region, _, gpu = label.partition("/") if label else ("local", "", "unknown")
    gpu = gpu or "unknown"
    speed = catalog.speed_or_default(gpu) if catalog is not None else 1.0
    return Backend(replica=f"{parts.hostname}:{parts.port}", url=url.rstrip("/"), region=region, gpu=gpu, speed=speed)


def services_from_api(payload: object) -> list[ServiceBackends]:
    """The control plane's answer as listener specs; pydantic's ValidationError (a ValueError) if malformed."""
    feed = GatewayFeed.model_validate(payload)
    return [
        ServiceBackends(
            name=service.name,
            port=service.port,
            backends=tuple(Backend(b.replica, b.url, b.region, b.gpu, b.speed) for b in service.backends),
            api_keys=service.api_keys,
            key_required=service.key_required,
            limits=CallerLimits(**service.limits.model_dump()),
            tls=(service.tls.certificate, service.tls.key) if service.tls else None,
        )
        for service in feed.services
    ]


async def follow_control_plane(url: str, token: str, apply: Apply, interval_s: float = 0.5) -> None:
    """Poll the control plane forever; on failure keep the last known set and say so once."""
    headers = {"Authorization": f"Bearer {token}"}
    reachable = True
    async with httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=5.0) as http:
        while True:
            try:
                response = await http.get("/api/v1/gateway")
                response.raise_for_status()
                services = services_from_api(response.json())
            except (httpx.HTTPError, ValueError) as error:  # pydantic's ValidationError is a ValueError
                if reachable:
                    log.warning(
                        "control plane unreachable: keeping the last known backends",
                        extra={"controller": url, "error": str(error)},
                    )
                reachable = False
            else:
                if not reachable:
                    log.info("control plane reachable again", extra={"controller": url})
                reachable = True
                await apply(services)
            await asyncio.sleep(interval_s)
