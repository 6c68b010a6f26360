"""Connections to backends: one exchange at a time each, kept alive and pooled per backend.

A response's head is awaited before anything reaches the client, so a backend that refuses,
resets or answers 502/503 can still be retried elsewhere. After the head, body bytes flow to a
sink (the client's connection) as they arrive, with back-pressure both ways.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from gpuroam.gateway.wire import Headers


class UpstreamError(Exception):
    """The backend failed before its response was complete."""

    def __init__(self, reason: str, got_bytes: bool = False, timed_out: bool = False, abandoned: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.got_bytes = got_bytes  # some of the response arrived: the failure is mid-response
        self.timed_out = timed_out
        self.abandoned = abandoned  # the gateway gave up on a replica that stopped answering its probes


@dataclass
class ResponseHead:
    status: int
    headers: Headers
    keep_alive: bool
    content_length: int | None


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend, driven by `exchange` and the parser's callbacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = loop.time()
        self.deadline = float("inf")
        self._head: asyncio.Future[ResponseHead] | None = None
        self._done: asyncio.Future[None] | None = None
        self._headers: Headers = []
        self._buffered: list[bytes] = []
        self._sink: Callable[[bytes], None] | None = None
        self._got_bytes = False
        self._head_only = False
        self._until_close = False  # no length and not chunked: the body ends when the backend closes

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's connection: a full Transport

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed response from backend: {exc}")
            self.close()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._until_close and self._done is not None and not self._done.done():
            self._done.set_result(None)
        elif self._done is not None and not self._done.done():
            self._fail("backend closed the connection" + (f": {exc}" if exc else ""))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        length = next((v for n, v in self._headers if n == b"content-length"), None)
        head = ResponseHead(
            status=self.parser.get_status_code(),
            headers=self._headers,
            keep_alive=self.parser.should_keep_alive(),
            content_length=int(length) if length is not None and length.isdigit() else None,
        )
        chunked = any(n == b"transfer-encoding" for n, _ in self._headers)
        self._until_close = head.content_length is None and not chunked and head.status not in (204, 304)
        if self._head is not None and not self._head.done():
            self._head.set_result(head)
        if self._head_only:  # a response to HEAD has no body, whatever its headers say
            self.on_message_complete()
            self.close()

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            return
        if self._sink is None:
            self._buffered.append(body)
        else:
            self._sink(body)

    def on_message_complete(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # driving an exchange
    def send(
        self, head: bytes, body: bytes, head_only: bool, deadline: float = float("inf")
    ) -> asyncio.Future[ResponseHead]:
        """Start one exchange; the future resolves with the response head. Past `deadline` (loop
        time) whoever watches the connection calls `time_out`."""
        assert self.transport is not None
        self.deadline = deadline
        self._head = self.loop.create_future()
        self._done = self.loop.create_future()
        self._headers = []
        self._buffered = []
        self._sink = None
        self._got_bytes = False
        self._head_only = head_only
        self._until_close = False
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        return self._head

    def finished(self) -> bytes | None:
        """The whole body if the response is already complete, else None (it is still arriving).
        Raises UpstreamError if the exchange failed after the head."""
        if self._done is None or not self._done.done():
            return None
        self._done.result()
        body = b"".join(self._buffered) if len(self._buffered) != 1 else self._buffered[0]
        self._buffered = []
        return body

    def time_out(self) -> None:
        self._fail("no complete response before the deadline", timed_out=True)
        self.close()

    @property
    def awaiting_head(self) -> bool:
        """An exchange is on and nothing of its response has arrived: it can still go elsewhere."""
        return self._head is not None and not self._head.done() and not self._got_bytes

    def abandon(self) -> None:
        """Give up waiting on a replica that stopped answering its health checks (hung or cut off)."""
        self._fail("replica stopped answering its health checks", abandoned=True)
        self.close()

    def stream_to(self, sink: Callable[[bytes], None]) -> asyncio.Future[None]:
        """Deliver the body (what arrived with the head first); the future resolves at its end."""
        for piece in self._buffered:
            sink(piece)
        self._buffered = []
        self._sink = sink
        assert self._done is not None
        return self._done

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, reason: str, timed_out: bool = False, abandoned: bool = False) -> None:
        error = UpstreamError(reason, got_bytes=self._got_bytes, timed_out=timed_out, abandoned=abandoned)
        for future in (self._head, self._done):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a failed head need not also be awaited as done


class Pool:
    """Idle keep-alive connections to one backend.

    Connections idle longer than `idle_timeout_s` are dropped before the backend's own
    keep-alive timeout can race a request (uvicorn closes idle connections after 5 s)."""

    def __init__(
        self,
        url: str,
        loop: asyncio.AbstractEventLoop,
        connect_timeout_s: float = 3.0,
        max_idle: int = 128,
        idle_timeout_s: float = 4.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"backend URL {url!r}: only http://HOST:PORT backends are supported")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.loop = loop
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self._idle: deque[UpstreamConnection] = deque()
        self.closed = False

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used live connection, if any (the warmest socket)."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(lambda: UpstreamConnection(self.loop), self.host, self.port)
        except TimeoutError as exc:
            raise UpstreamError(f"connect timed out after {self.connect_timeout_s:g} s") from exc
        except OSError as exc:
            raise UpstreamError(f"connect failed: {exc.strerror or exc}") from exc
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or self.closed or len(self._idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle too long; oldest are at the left."""
        while self._idle and (self._idle[0].closed or now - self._idle[0].idle_since > self.idle_timeout_s):
            self._idle.popleft().close()

    def close(self) -> None:
        self.closed = True
        while self._idle:
            self._idle.pop().close()
