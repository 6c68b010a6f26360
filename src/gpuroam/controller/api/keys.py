"""A service's API keys: made here (shown once), listed by name, revoked.

Only each key's SHA-256 is stored and sent to the gateway, which refuses a request without a valid
key once a service has any (`GET /api/v1/gateway`, read twice a second: a revoked key is refused
within a second). Keys never appear in logs or listings.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from gpuroam.controller.api.context import Context
from gpuroam.controller.api.services import existing_service
from gpuroam.records import ApiKey

router = APIRouter()

KEY_PREFIX = "gpr_"  # tells a gpuroam key apart in a config file or a leaked-secret scan
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class KeyRequest(BaseModel):
    name: str | None = Field(default=None, description="a name to revoke it by; default key-N")


class KeyOut(BaseModel):
    service: str
    name: str
    created_at: float


class NewKeyOut(KeyOut):
    key: str = Field(description="the key itself: shown this once, never stored")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@router.post("/api/v1/services/{name}/keys", status_code=201)
def add_key(name: str, request: KeyRequest, context: Context) -> NewKeyOut:
    existing_service(context, name)
    taken = {key.name for key in context.store.list_api_keys(name)}
    key_name = request.name or next(f"key-{n}" for n in range(1, len(taken) + 2) if f"key-{n}" not in taken)
    if not _NAME.fullmatch(key_name):
        raise HTTPException(422, f"{key_name!r} is no key name; use letters, digits, '.', '_' and '-' (at most 63)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(service=name, name=key_name, sha256=key_hash(key), created_at=time.time())
    if not context.store.add_api_key(record):
        raise HTTPException(409, f"{name} already has a key named {key_name!r}; pick another name or revoke it first")
    return NewKeyOut(service=name, name=key_name, created_at=record.created_at, key=key)


@router.get("/api/v1/services/{name}/keys")
def list_keys(name: str, context: Context) -> list[KeyOut]:
    existing_service(context, name)
    return [KeyOut(service=k.service, name=k.name, created_at=k.created_at) for k in context.store.list_api_keys(name)]


@router.delete("/api/v1/services/{name}/keys/{key_name}")
def revoke_key(name: str, key_name: str, context: Context, open_endpoint: bool = False) -> dict[str, str]:
    """Revoking the last key would open the endpoint to anyone: that takes `open_endpoint=true`."""
    existing_service(context, name)
    others = [key for key in context.store.list_api_keys(name) if key.name != key_name]
    if not others and not open_endpoint:
        raise HTTPException(
            409,
            f"{key_name!r} is the last key of {name}: without it the endpoint is open to anyone. Add another "
            f"key first (`gpuroam keys add {name}`), or revoke it with --open to open the endpoint",
        )
    if not context.store.revoke_api_key(name, key_name):
        raise HTTPException(404, f"{name} has no key named {key_name!r}; `gpuroam keys list {name}` lists them")
    return {"service": name, "revoked": key_name}
