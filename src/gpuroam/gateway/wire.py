"""HTTP/1.1 on the wire: requests read from clients, heads written to backends and clients.

Built on httptools (the llhttp parser uvicorn uses) and raw asyncio protocols rather than a
framework, because the gateway sits in front of every request: its per-request cost is the
whole budget. Only what a reverse proxy needs is here; policy lives in proxy.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# Headers that describe one connection, not the message: never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",  # answered by the gateway, which reads the whole body itself
        b"content-length",  # re-framed by the gateway: the body is buffered or re-chunked
    }
)

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Limits:
    """What a client may send, and how long it may take (nginx-like defaults)."""

    max_body_bytes: int = 50 * 1024 * 1024  # img2img sends base64 images
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 30.0  # from a request's first byte to its last
    keepalive_timeout_s: float = 75.0  # an idle client connection is closed after this
    max_pipelined: int = 16  # requests read ahead on one connection before reading pauses


@dataclass
class Request:
    """A whole client request: the body is read before a backend is tried, so retries can resend it."""

    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    keep_alive: bool
    client_ip: str
    http11: bool = True

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def cookie(self, name: bytes) -> bytes | None:
        """The value of cookie `name`, if the request sent one (and it is not empty)."""
        header = self.header(b"cookie")
        if not header or name not in header:
            return None
        for part in header.split(b";"):
            key, _, value = part.strip().partition(b"=")
            if key == name and value:
                return value
        return None

    def query_param(self, name: bytes) -> bytes | None:
        _, _, query = self.target.partition(b"?")
        prefix = name + b"="
        for part in query.split(b"&"):
            if part.startswith(prefix):
                return part[len(prefix) :]
        return None


def upstream_head(request: Request, ours: bytes = b"", replaced: frozenset[bytes] = frozenset()) -> bytes:
    """The request line and headers sent to a backend; the same bytes for every attempt. `ours` (whole
    header lines) go instead of any the client sent under a name in `replaced`."""
    lines = [request.method, b" ", request.target, b" HTTP/1.1\r\n"]
    for name, value in request.headers:
        if name not in HOP_BY_HOP and name != b"x-forwarded-for" and name not in replaced:
            lines += [name, b": ", value, b"\r\n"]
    lines.append(ours)
    forwarded = request.header(b"x-forwarded-for")
    client = request.client_ip.encode()
    lines += [b"x-forwarded-for: ", forwarded + b", " + client if forwarded else client, b"\r\n"]
    if request.body or request.method in (b"POST", b"PUT", b"PATCH"):
        lines += [b"content-length: ", str(len(request.body)).encode(), b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def response_head(status: int, headers: Headers, extra: bytes, framing: bytes) -> bytes:
    """A response head for the client: the backend's end-to-end headers, ours, then framing."""
    lines = [b"HTTP/1.1 ", str(status).encode(), b" ", REASONS.get(status, b"-"), b"\r\n"]
    for name, value in headers:
        if name not in HOP_BY_HOP:
            lines += [name, b": ", value, b"\r\n"]
    lines += [extra, framing, b"\r\n"]
    return b"".join(lines)


def json_response(status: int, body: object, keep_alive: bool, extra: bytes = b"") -> bytes:
    """A whole response the gateway answers itself (errors, its health and metrics)."""
    payload = json.dumps(body).encode()
    return text_response(status, payload, b"application/json", keep_alive, extra)


def text_response(status: int, payload: bytes, content_type: bytes, keep_alive: bool, extra: bytes = b"") -> bytes:
    connection = b"" if keep_alive else b"connection: close\r\n"
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s%s\r\n" % (
        status,
        REASONS.get(status, b"-"),
        content_type,
        len(payload),
        connection,
        extra,
    )
    return head + payload


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
