"""Client connections: parse requests (with limits), answer them in order, time out idle ones.

Each complete request is handed to `handle`, one at a time per connection (HTTP/1.1
pipelining is answered in order). Malformed or oversized requests are answered here with a
4xx and the connection is closed, before any backend is involved.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools

from gpuroam.gateway.wire import Limits, Request, json_response

Handler = Callable[["ClientConnection", Request], Awaitable[None]]

log = logging.getLogger("gpuroam.gateway")


class _Reject(Exception):
    """Stop parsing: the request breaks a limit and gets this response."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ClientConnection(asyncio.Protocol):
    def __init__(
        self, handle: Handler, limits: Limits, loop: asyncio.AbstractEventLoop, live: set[ClientConnection]
    ) -> None:
        self.handle = handle
        self.limits = limits
        self.loop = loop
        self.live = live
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = "-"
        self.closed = False
        self.last_active = loop.time()
        self.reading_since: float | None = None  # a request has begun and is not complete yet
        self.on_backpressure: Callable[[bool], None] | None = None  # pauses the backend feeding this client
        self.draining = False  # the gateway is handing over: answer what was asked, then close
        self._current: Request | None = None
        self._queue: deque[Request | bytes] = deque()
        self._task: asyncio.Task[None] | None = None
        self._paused_reading = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._in_trailers = False  # header lines after a chunked body are trailers, not headers
        self._written = 0  # bytes written to the client, so a failed handler knows whether it answered
        self._eof = False  # the client half-closed: close once what it asked is answered

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's connection: a full Transport
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "-"
        self.live.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.loop.time()
        if self.reading_since is None:
            self.reading_since = self.last_active
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request asking to upgrade is queued and answered as plain HTTP/1.1 (a server may ignore
            # Upgrade, RFC 9110 7.8), then the connection closes: what follows it is not HTTP/1.1. A 501 here
            # used to go out as a second answer to that one request.
            if self.transport is not None:
                self.transport.pause_reading()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._refuse(cause.status, cause.detail)
            else:  # a bug here must still answer the client, not drop it
                log.error("reading a request failed", exc_info=cause)
                self._refuse(500, "the gateway failed reading this request")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool:
        """The client sent all it will (a half-close, as `nc -N` does): answer what it asked, then close.
        Returning False here closed at once, and a request still waiting on its replica lost its answer."""
        if self._task is None and not self._queue:
            return False  # nothing asked: close now
        self._eof = True
        self.reading_since = None  # the rest of a half-sent request will never come
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.live.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: stop waiting on the backend for it

    def pause_writing(self) -> None:
        if self.on_backpressure is not None:
            self.on_backpressure(True)

    def resume_writing(self) -> None:
        if self.on_backpressure is not None:
            self.on_backpressure(False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._in_trailers = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        if not self._in_trailers:  # a trailer merged into the headers would reach the backend as one
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_trailers = True
        if self.parser.get_http_version() not in ("1.0", "1.1"):  # HTTP/0.9 has no headers nor status line
            raise _Reject(505, "HTTP version not supported: send HTTP/1.1 (or 1.0)")
        if self.parser.get_method() == b"CONNECT":  # even with a /path target: nothing is tunnelled
            raise _Reject(400, "CONNECT is not served: this gateway is a reverse proxy, not a forward proxy")
        for name, value in self._headers:  # limits first: no 100 Continue for a body that will be refused
            if name == b"content-length" and value.isdigit() and int(value) > self.limits.max_body_bytes:
                raise _Reject(413, f"request body over {self.limits.max_body_bytes} bytes")
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue" and self._task is None and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the body is read here, not by a backend

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            raise _Reject(413, f"request body over {self.limits.max_body_bytes} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reading_since = None
        http11 = self.parser.get_http_version() == "1.1"
        # Close after an upgrade request (see data_received), and after an HTTP/1.0 request that came
        # chunked: its framing cannot be trusted (RFC 9112 6.1).
        faulty_framing = not http11 and any(name == b"transfer-encoding" for name, _ in self._headers)
        request = Request(
            method=self.parser.get_method(),
            target=self._url,
            headers=self._headers,
            body=b"".join(self._body) if len(self._body) != 1 else self._body[0],
            keep_alive=self.parser.should_keep_alive() and not self.parser.should_upgrade() and not faulty_framing,
            client_ip=self.client_ip,
            http11=http11,
        )
        self._queue.append(request)
        if len(self._queue) >= self.limits.max_pipelined and self.transport is not None:
            self.transport.pause_reading()
            self._paused_reading = True
        if self._task is None:
            self._next()

    # answering
    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self._written += len(data)
            self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection without more bytes: the client sees the response cut short."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def drain(self) -> None:
        """Close now if idle; otherwise answer the request in hand with `connection: close`, then close.

        A request half read stays to be answered: it was sent to this process, so it is served here."""
        self.draining = True
        if self._current is not None:
            self._current.keep_alive = False
        elif not self._queue and self.reading_since is None:
            self.close()

    def expire(self, now: float) -> None:
        """Called about once a second: end slow requests (408) and idle keep-alive connections."""
        if self._task is not None or self._queue:
            return
        if self.reading_since is not None:
            if now - self.reading_since > self.limits.header_timeout_s:
                self._refuse(408, f"request not complete within {self.limits.header_timeout_s:g} s")
        elif now - self.last_active > self.limits.keepalive_timeout_s:
            self.close()

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Reject(431, f"request line and headers over {self.limits.max_header_bytes} bytes")

    def _refuse(self, status: int, detail: str) -> None:
        """Answer after what is already queued, then close: the stream cannot be trusted past here."""
        if self.transport is not None:
            self.transport.pause_reading()
        self._queue.append(json_response(status, {"error": detail}, keep_alive=False))
        if self._task is None:
            self._next()

    def _next(self) -> None:
        if not self._queue or self.closed:
            self._task = None
            if self._eof:
                self.close()
            return
        item = self._queue.popleft()
        if isinstance(item, bytes):
            self.write(item)
            self.close()
            self._task = None
            return
        self._task = self.loop.create_task(self._answer(item))

    async def _answer(self, request: Request) -> None:
        if self.draining:
            request.keep_alive = False
        self._current = request
        written = self._written
        try:
            await self.handle(self, request)
        except Exception:  # a bug in a handler: the client gets an answer, not a hang or a silent close
            log.exception("answering a request failed", extra={"path": request.path.decode("latin-1")})
            request.keep_alive = False
            if self._written == written:
                self.write(json_response(500, {"error": "the gateway failed answering this request"}, False))
            else:
                self.abort()  # part of an answer went out: cut it, so the client cannot take it as whole
        finally:
            self._current = None
            self.on_backpressure = None
            self.last_active = self.loop.time()
            if not request.keep_alive or self.draining:
                self.close()
            if self._paused_reading and len(self._queue) < self.limits.max_pipelined and not self.closed:
                self._paused_reading = False
                if self.transport is not None:
                    self.transport.resume_reading()
            self._task = None
            self._next()
