"""A service's API keys: made here (shown once), listed by name, revoked.

Only each key's SHA-256 is stored and sent to the gateway, which refuses a request without a valid
key once a service has any (`GET /api/v1/gateway`, read twice a second: a revoked key is refused
within a second). Keys never appear in logs or listings. Keys from the spec's source
(`endpoint.api_keys`, see key_sources.py) are listed beside them; they are revoked in their source.
"""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from gpuroam.controller.api.context import ApiContext, Context
from gpuroam.controller.api.services import existing_service
from gpuroam.controller.key_sources import KEY_NAME, SourcedKeys, key_hash
from gpuroam.records import ApiKey
from gpuroam.spec import EndpointSpec

router = APIRouter()

KEY_PREFIX = "gpr_"  # tells a gpuroam key apart in a config file or a leaked-secret scan
MADE_HERE = "gpuroam keys"


class KeyRequest(BaseModel):
    name: str | None = Field(default=None, description="a name to revoke it by; default key-N")


class KeyOut(BaseModel):
    service: str
    name: str
    created_at: float | None = Field(description="none for a key from the spec's source")
    source: str = Field(default=MADE_HERE, description="'gpuroam keys', or the spec's keys file or secret:NAME")


class NewKeyOut(KeyOut):
    key: str = Field(description="the key itself: shown this once, never stored")


def spec_keys(context: ApiContext, name: str) -> tuple[str | None, SourcedKeys | None]:
    """The service's spec's key source and what it gives now (None, None without one)."""
    endpoint = EndpointSpec.model_validate(existing_service(context, name).spec.get("endpoint") or {})
    return endpoint.api_keys, context.key_sources.keys(endpoint, context.provider)


@router.post("/api/v1/services/{name}/keys", status_code=201)
def add_key(name: str, request: KeyRequest, context: Context) -> NewKeyOut:
    _, sourced = spec_keys(context, name)
    taken = {key.name for key in context.store.list_api_keys(name)} | set(sourced.names if sourced else ())
    key_name = request.name or next(f"key-{n}" for n in range(1, len(taken) + 2) if f"key-{n}" not in taken)
    if not KEY_NAME.fullmatch(key_name):
        raise HTTPException(422, f"{key_name!r} is no key name; use letters, digits, '.', '_' and '-' (at most 63)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(service=name, name=key_name, sha256=key_hash(key), created_at=time.time())
    if key_name in taken or not context.store.add_api_key(record):
        raise HTTPException(409, f"{name} already has a key named {key_name!r}; pick another name or revoke it first")
    return NewKeyOut(service=name, name=key_name, created_at=record.created_at, key=key)


@router.get("/api/v1/services/{name}/keys")
def list_keys(name: str, context: Context) -> list[KeyOut]:
    source, sourced = spec_keys(context, name)
    made = [KeyOut(service=k.service, name=k.name, created_at=k.created_at) for k in context.store.list_api_keys(name)]
    named = sourced.names if sourced else ()
    return made + [KeyOut(service=name, name=key_name, created_at=None, source=source or "") for key_name in named]


@router.delete("/api/v1/services/{name}/keys/{key_name}")
def revoke_key(name: str, key_name: str, context: Context, open_endpoint: bool = False) -> dict[str, str]:
    """Revoking the last key would open the endpoint to anyone: that takes `open_endpoint=true`. A key from
    the spec's source is revoked there."""
    source, sourced = spec_keys(context, name)
    made_here = any(key.name == key_name for key in context.store.list_api_keys(name))
    if sourced is not None and key_name in sourced.names and not made_here:
        raise HTTPException(
            409, f"{key_name!r} comes from {source}: remove it there, and the gateway refuses it within seconds"
        )
    others = [key for key in context.store.list_api_keys(name) if key.name != key_name]
    if not others and sourced is None and not open_endpoint:
        raise HTTPException(
            409,
            f"{key_name!r} is the last key of {name}: without it the endpoint is open to anyone. Add another "
            f"key first (`gpuroam keys add {name}`), or revoke it with --open to open the endpoint",
        )
    if not context.store.revoke_api_key(name, key_name):
        raise HTTPException(404, f"{name} has no key named {key_name!r}; `gpuroam keys list {name}` lists them")
    return {"service": name, "revoked": key_name}
