"""Raw-socket HTTP for the gateway's robustness tests: send any bytes, read back what came (parsed),
a reference parse of what was sent, and a loopback listener that counts who reaches it."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

import httptools
from harness import LoopThread


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    """What one connection got back: final responses (1xx left out), and how it ended."""

    responses: list[Response] = field(default_factory=list)
    interim: list[int] = field(default_factory=list)
    closed: bool = False  # the gateway closed (or reset) the connection
    timed_out: bool = False  # neither enough responses nor a close before the deadline: a hang
    malformed: str | None = None  # what the gateway sent did not parse as HTTP/1.1 responses
    raw: bytes = b""

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


class _ResponseReader:
    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.body = b""

    def feed(self, data: bytes) -> None:
        if self.exchange.malformed is None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                self.exchange.malformed = f"{type(exc).__name__}: {exc}"

    def on_message_begin(self) -> None:
        self.headers, self.body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.exchange.interim.append(status)
        else:
            self.exchange.responses.append(Response(status, self.headers, self.body))


def exchange(
    port: int,
    payload: bytes,
    *,
    until: int | None = None,
    half_close: bool = False,
    timeout_s: float = 5.0,
    trickle_s: float = 0.0,
) -> Exchange:
    """Send `payload` on a fresh connection; read until the gateway closes, `until` final responses
    arrived, or `timeout_s` passed (then `timed_out`). `half_close` ends the sending side after the
    payload, as a client that gives up on an incomplete request; `trickle_s` sends a byte at a time."""
    got = Exchange()
    reader = _ResponseReader(got)
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            if trickle_s:
                for byte in payload:
                    sock.sendall(bytes([byte]))
                    time.sleep(trickle_s)
            else:
                sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway answered and closed before all of it was sent: read what it said
        while True:
            if until is not None and len(got.responses) >= until:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got.timed_out = True
                return got
            sock.settimeout(remaining)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                got.closed = True
                return got
            got.raw += data
            reader.feed(data)


@dataclass
class Reference:
    """How a strict HTTP/1.1 parser reads a payload: requests complete before an error, if any."""

    complete: int = 0
    error: bool = False
    upgrade: bool = False
    methods: list[bytes] = field(default_factory=list)


class _RequestCounter:
    def __init__(self, reference: Reference) -> None:
        self.reference = reference
        self.parser = httptools.HttpRequestParser(self)

    def on_headers_complete(self) -> None:
        if self.parser.get_http_version() not in ("1.0", "1.1"):  # the gateway answers 505 and closes, as here
            raise httptools.HttpParserError("HTTP version not supported")

    def on_message_complete(self) -> None:
        self.reference.complete += 1
        self.reference.methods.append(self.parser.get_method())


def reference_parse(payload: bytes) -> Reference:
    reference = Reference()
    try:
        _RequestCounter(reference).parser.feed_data(payload)
    except httptools.HttpParserUpgrade:
        reference.upgrade = True
    except httptools.HttpParserError:
        reference.error = True
    return reference


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


class Listener:
    """A loopback HTTP/1.1 server that counts the connections it accepts and answers every request
    `200 ok`. It takes any bytes (headers read as latin-1) and closes on what it cannot parse."""

    def __init__(self, loops: LoopThread, name: str = "") -> None:
        self.loops = loops
        self.name = name  # the replica id harness.backend() gives it ("r<port>" when empty)
        self.connections = 0
        self.seen: list[Seen] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Listener:
        async def serve() -> None:
            self.server = await asyncio.get_running_loop().create_server(lambda: _Answer(self), "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]

        self.loops.run(serve())
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self.server is not None
            self.server.close()

        self.loops.run(close())

    def requests(self) -> list[Seen]:
        """What arrived, less the gateway's health probes."""
        return [s for s in self.seen if not s.target.startswith("/internal/ping")]


class _Answer(asyncio.Protocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.target = b""
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.listener.connections += 1
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.target, self.headers, self.body = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        self.listener.seen.append(Seen(method, self.target.decode("latin-1"), self.headers, self.body))
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok")
