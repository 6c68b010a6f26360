"""A gateway on an event loop in a thread, and fake replicas whose every answer a test decides."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httptools

from gpuroam.gateway import Backend, Gateway, ServiceBackends
from gpuroam.gateway.callers import CallerLimits


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok":true}'
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    chunks: list[bytes] | None = None  # sent chunked, `chunk_delay_s` apart
    chunk_delay_s: float = 0.0
    delay_s: float = 0.0
    release: threading.Event | None = None  # wait for this before answering


class Reset:
    """Close the connection without answering."""


class CutMidway:
    """Send the head and part of the body, then drop the connection."""


Action = Reply | Reset | CutMidway
Behaviour = Callable[[Seen], Action]


def ok(_: Seen) -> Action:
    return Reply()


class LoopThread:
    """An event loop in a daemon thread; `run` executes a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class FakeReplica:
    """An HTTP/1.1 server on loopback that answers GET /internal/ping 200 unless told otherwise."""

    def __init__(self, loops: LoopThread, behaviour: Behaviour = ok, name: str = "") -> None:
        self.loops = loops
        self.behaviour = behaviour
        self.name = name
        self.seen: list[Seen] = []
        self.ping_ok = True
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.Transport] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> FakeReplica:
        async def serve() -> None:
            self.server = await asyncio.get_running_loop().create_server(
                lambda: _ReplicaProtocol(self), "127.0.0.1", port or self.port or 0
            )
            self.port = self.server.sockets[0].getsockname()[1]

        self.loops.run(serve())
        return self

    def kill(self) -> None:
        """Stop listening and drop every connection, as a process killed with SIGKILL."""

        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for transport in list(self.transports):
                transport.abort()

        self.loops.run(stop())

    def requests(self, path: str | None = None) -> list[Seen]:
        return [s for s in self.seen if path is None or s.path == path]


class _ReplicaProtocol(asyncio.Protocol):
    def __init__(self, replica: FakeReplica) -> None:
        self.replica = replica
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.replica.transports.add(self.transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.replica.transports.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", {}, b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        seen = Seen(self.parser.get_method().decode(), self.url.decode(), self.headers, self.body)
        if seen.path.startswith("/internal/ping"):
            status = 200 if self.replica.ping_ok else 503
            asyncio.ensure_future(self._answer(Reply(status=status, body=b"{}")))
            return
        self.replica.seen.append(seen)
        asyncio.ensure_future(self._answer(self.replica.behaviour(seen)))

    async def _answer(self, action: Action) -> None:
        transport = self.transport
        assert transport is not None
        if isinstance(action, Reset):
            transport.abort()
            return
        if isinstance(action, CutMidway):
            transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
            await asyncio.sleep(0.05)
            transport.abort()
            return
        if action.release is not None:
            await asyncio.get_running_loop().run_in_executor(None, action.release.wait, 30)
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        head = f"HTTP/1.1 {action.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in action.headers.items())
        if action.chunks is None:
            transport.write(f"{head}content-length: {len(action.body)}\r\n\r\n".encode() + action.body)
            return
        transport.write(f"{head}transfer-encoding: chunked\r\n\r\n".encode())
        for piece in action.chunks:
            transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await asyncio.sleep(action.chunk_delay_s)
        transport.write(b"0\r\n\r\n")


def echo(seen: Seen) -> Action:
    """Answer with what arrived, so tests can see what the gateway forwarded."""
    body = json.dumps({"method": seen.method, "path": seen.path, "headers": seen.headers, "size": len(seen.body)})
    return Reply(body=body.encode())


def backend(replica: FakeReplica, region: str = "us-central1", gpu: str = "nvidia-l4", speed: float = 1.0) -> Backend:
    return Backend(replica=replica.name or f"r{replica.port}", url=replica.url, region=region, gpu=gpu, speed=speed)


class Running:
    """A started gateway serving one service on `url`, driven from the test's thread."""

    def __init__(self, loops: LoopThread, gateway: Gateway, port: int) -> None:
        self.loops = loops
        self.gateway = gateway
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def set_backends(
        self, backends: Sequence[Backend], api_keys: Mapping[str, str] | None = None, limits: CallerLimits | None = None
    ) -> None:
        service = ServiceBackends(
            "svc", self.port, tuple(backends), api_keys=api_keys or {}, limits=limits or CallerLimits()
        )
        self.loops.run(self.gateway.apply([service]))

    def report(self) -> dict:
        async def read() -> dict:
            return self.gateway.health_report()

        return self.loops.run(read())
