"""The control plane's own end: `gpuroam stop` asks a running `serve` to stop once nothing is left to serve."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from gpuroam.controller.api.context import Context

router = APIRouter()


class StoppingOut(BaseModel):
    stopping: bool


@router.post("/api/v1/shutdown", status_code=202, responses={409: {"description": "services are still stored"}})
def shutdown(context: Context) -> StoppingOut:
    """Stop `serve` (the API, the reconciler and the gateway). Refused while any service, or a service still
    being torn down, is stored: its replicas would keep running with no owner."""
    services = context.store.list_services(include_deleted=True)
    if services:
        names = ", ".join(record.name for record in services)
        raise HTTPException(
            409, f"services are still stored ({names}): `gpuroam down NAME` each, or `gpuroam stop` to do it all"
        )
    context.shutdown.set()
    return StoppingOut(stopping=True)
