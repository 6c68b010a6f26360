"""What every route of the control-plane API shares, handed over through `app.state`, and its guards.

Routes take the context as a FastAPI dependency instead of closing over it, so each router can be
mounted alone on a bare app in a test.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from gpuroam.catalog import Catalog
from gpuroam.controller.key_sources import KeySources
from gpuroam.controller.signals import GatewayAddress
from gpuroam.controller.store import Store
from gpuroam.providers.base import Provider


@dataclass(frozen=True)
class ApiContext:
    store: Store
    provider: Provider
    catalog: Catalog
    token: str
    gateway: GatewayAddress | None = None  # None: no local gateway (the provider's endpoint, or none)
    key_sources: KeySources = field(default_factory=KeySources)  # the keys specs name (endpoint.api_keys)
    shutdown: threading.Event = field(default_factory=threading.Event)  # set: `gpuroam stop` asked serve to end


def api_context(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.gpuroam
    return context


Context = Annotated[ApiContext, Depends(api_context)]


def authorised(request: Request) -> None:
    """A bearer token equal to the state dir's, compared in constant time."""
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), api_context(request).token.encode()):
        raise HTTPException(
            401,
            "missing or wrong bearer token; use the token `gpuroam serve` wrote to its state dir",
            headers={"WWW-Authenticate": "Bearer"},
        )


def storable(text: str) -> bool:
    """Whether a name can be looked up at all: PostgreSQL text holds no NUL (the driver raises, a 500)."""
    return "\x00" not in text


def check_filter(service: str | None) -> None:
    if service is not None and not storable(service):
        raise HTTPException(422, "service must be a service name; it has a NUL character")


def store_in_place(context: Context) -> None:
    """503 while the store's file was deleted or replaced under the server: its answers would be wrong."""
    problem = context.store.replaced()
    if problem is not None:
        raise HTTPException(503, problem, headers={"Retry-After": "5"})
