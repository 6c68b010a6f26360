"""The dashboard: one static page (plain HTML, CSS and JS under static/) that the control plane
serves at `/`, without a token.

The page reads the API token from the URL fragment (`/#token=...`, which browsers never send
to a server, so it reaches no log), keeps it in sessionStorage, and sends it as a bearer token
on every /api/v1 call. Everything the page needs ships in this package: no CDN, no tile server,
no external font; the Content-Security-Policy below lets it talk to its own origin only.
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent / "static"
ASSETS_PATH = "/ui"

# Same origin only: nothing is fetched from anywhere else, and the page cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def dashboard_url(server_url: str, token: str | None = None) -> str:
    """The dashboard's address; with a token, in the fragment (`http://host:8700/#token=...`).

    A fragment stays in the browser: it is not sent with the request, so the token reaches
    neither the server's logs nor a proxy's."""
    base = server_url.rstrip("/") + "/"
    return f"{base}#token={quote(token, safe='')}" if token else base


def mount_dashboard(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under /ui/, with no token needed."""

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)

    app.mount(ASSETS_PATH, _Assets(directory=STATIC), name="dashboard-assets")


class _Assets(StaticFiles):
    """StaticFiles that revalidates (the page changes with the package) and keeps to same-origin rules."""

    def file_response(
        self, full_path: str | PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response
