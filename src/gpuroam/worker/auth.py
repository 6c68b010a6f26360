"""HTTP basic auth on the A1111 API, as A1111's --api-auth; the health, metrics and page routes stay open."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, params
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.state import SharedState

_basic = HTTPBasic(auto_error=False)


def require_api_auth(state: SharedState, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> None:
    """Every configured user is compared, each in constant time, so timing tells nothing of which matched."""
    ok = False
    if credentials is not None:
        for user, password in state.config.api_auth:
            user_ok = secrets.compare_digest(credentials.username.encode(), user.encode())
            password_ok = secrets.compare_digest(credentials.password.encode(), password.encode())
            ok |= user_ok & password_ok
    if not ok:
        raise HTTPException(401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})


def api_auth_dependencies(config: WorkerConfig) -> list[params.Depends]:
    """For `sdapi.add_routes`: the check only when users are configured, so an open worker's schema asks for none."""
    return [Depends(require_api_auth)] if config.api_auth else []
