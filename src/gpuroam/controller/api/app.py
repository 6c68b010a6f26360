"""The control-plane HTTP API under /api/v1, behind a bearer token, and the dashboard at `/`.

It only reads and writes desired state (and chaos, for providers that simulate capacity); the
reconciler does the work. The dashboard page and its assets are served without a token;
everything it shows comes from the guarded API.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from gpuroam import __version__
from gpuroam.api_errors import install_validation_handler
from gpuroam.controller.api import chaos, events, gateway, keys, lifecycle, metrics, regions, services
from gpuroam.controller.api.context import ApiContext, authorised, store_in_place
from gpuroam.controller.database import store_failed
from gpuroam.ui import mount_dashboard

ROUTERS = (
    services.router,
    keys.router,
    events.router,
    regions.router,
    chaos.router,
    gateway.router,
    metrics.router,
    lifecycle.router,
)


def create_api(context: ApiContext) -> FastAPI:
    app = FastAPI(title="gpuroam control plane", version=__version__)
    app.state.gpuroam = context
    install_validation_handler(app)

    @app.exception_handler(SQLAlchemyError)
    async def store_unavailable(request: Request, error: SQLAlchemyError) -> JSONResponse:
        """A store that cannot be read or written is the server's trouble, said plainly: 503, not 500."""
        message = store_failed(context.store.engine.url, error)
        return JSONResponse({"detail": message}, status_code=503, headers={"Retry-After": "5"})

    for router in ROUTERS:
        app.include_router(router, dependencies=[Depends(authorised), Depends(store_in_place)])
    mount_dashboard(app)
    return app
