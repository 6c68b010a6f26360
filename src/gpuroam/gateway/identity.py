"""Who a caller is, decided by the gateway alone and passed to the replica with each request.

A service with API keys takes only callers that bring one (`Authorization: Bearer KEY`, or A1111's
basic auth with the key as the password), and the key's name is the caller. Otherwise a client that keeps cookies gets a session of its own (`gpuroam_session`, a random token the gateway
issues), so two such clients are told apart even behind one address. A client that keeps none is
its address, as an A1111 Web UI has one user per machine: existing A1111 clients work unchanged.
The address is the connecting one; X-Forwarded-For counts only when the connection comes from a
proxy the operator named as trusted. Whatever a client sends as X-Gpuroam-Identity is dropped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuroam.gateway.wire import Request

SESSION_COOKIE = b"gpuroam_session"
IDENTITY_HEADER = b"x-gpuroam-identity"
_TOKEN = re.compile(rb"[0-9a-f]{32}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Caller:
    """A caller's identity (what the replica tags its jobs with), and a session cookie to hand it if new."""

    id: str
    set_cookie: bytes = b""

    @property
    def header(self) -> bytes:
        return IDENTITY_HEADER + b": " + self.id.encode() + b"\r\n"


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies (CIDR blocks) whose X-Forwarded-For names the client; none by default."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, blocks: Sequence[str]) -> TrustedProxies:
        try:
            return cls(tuple(ipaddress.ip_network(block, strict=False) for block in blocks))
        except ValueError as error:
            raise ValueError(f"{error}: give a trusted proxy as an address or a CIDR block, e.g. 10.0.0.0/8") from None

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


def identify(
    request: Request,
    proxies: TrustedProxies = TrustedProxies(),
    keys: Mapping[str, str] | None = None,
    secure: bool = False,
) -> Caller | None:
    """The caller of `request`: with `keys` (SHA-256 -> name; empty: none valid yet), the key it brings, or
    None when it brings none of them; else its session if it sent one, else its address (and a session)."""
    if keys is not None:
        key = presented_key(request)
        name = keys.get(hashlib.sha256(key).hexdigest()) if key else None
        return Caller("key:" + name) if name else None
    token = session_token(request)
    if token is not None:
        return Caller("session:" + hashlib.sha256(token).hexdigest()[:24])
    return Caller("address:" + client_address(request, proxies), new_session_cookie(secure))


def presented_key(request: Request) -> bytes | None:
    """The key in `Authorization: Bearer KEY`, or the password of basic auth (A1111 clients' form)."""
    scheme, _, value = (request.header(b"authorization") or b"").strip().partition(b" ")
    if scheme.lower() == b"bearer":
        return value.strip() or None
    if scheme.lower() == b"basic":
        try:
            user_password = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return user_password.partition(b":")[2] or None
    return None


def session_token(request: Request) -> bytes | None:
    value = request.cookie(SESSION_COOKIE)
    return value if value is not None and _TOKEN.fullmatch(value) else None


def new_session_cookie(secure: bool) -> bytes:
    token = secrets.token_hex(16).encode()
    flags = b"; Path=/; HttpOnly; SameSite=Lax" + (b"; Secure" if secure else b"")
    return b"set-cookie: " + SESSION_COOKIE + b"=" + token + flags + b"\r\n"


def client_address(request: Request, proxies: TrustedProxies) -> str:
    """The connecting address; behind trusted proxies, the nearest address in X-Forwarded-For that is not one."""
    address = request.client_ip
    if not proxies.networks or not proxies.trusts(address):
        return address
    forwarded = (request.header(b"x-forwarded-for") or b"").decode("latin-1")
    for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
        address = hop
        if not proxies.trusts(hop):
            break
    return address
