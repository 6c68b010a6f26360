"""ASGI middleware: body size limit, per-route request metrics and a structured access log."""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpuroam.worker.metrics import WorkerMetrics

log = logging.getLogger("gpuroam.worker.access")

KNOWN_ROUTES = (
    "/sdapi/v1/txt2img",
    "/sdapi/v1/img2img",
    "/sdapi/v1/progress",
    "/sdapi/v1/interrupt",
    "/sdapi/v1/skip",
    "/sdapi/v1/options",
    "/sdapi/v1/sd-models",
    "/sdapi/v1/samplers",
    "/sdapi/v1/schedulers",
    "/sdapi/v1/scripts",
    "/internal/ping",
    "/metrics",
    "/",
    "/gpuroam/worker",
)


class BodyTooLarge(Exception):
    pass


class WorkerMiddleware:
    def __init__(self, app: ASGIApp, metrics: WorkerMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else ("/static" if path.startswith("/static/") else "other")
        started = time.perf_counter()
        status = 500
        response_started = False
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send)
            self._record(scope, route, 413, started)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not response_started:
                await self._too_large(send)
            status = 413
        finally:
            self._record(scope, route, status, started)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(
            {"detail": f"request body over {self.max_body_bytes} bytes; send smaller init images"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, route: str, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        self.metrics.requests.labels(route=route, status=str(status)).inc()
        if route in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
            self.metrics.request_seconds.labels(route=route).observe(seconds)
        if route not in ("/sdapi/v1/progress", "/internal/ping", "/metrics"):
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "seconds": round(seconds, 4),
                },
            )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
