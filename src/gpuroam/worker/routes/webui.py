"""The Web UI: one page at / and its static files, served from package data."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = files("gpuroam.worker").joinpath("static")


async def index() -> FileResponse:
    return FileResponse(str(STATIC.joinpath("index.html")))


def static_files() -> StaticFiles:
    """For `app.mount("/static", ...)`, next to the page that loads them."""
    return StaticFiles(directory=str(STATIC))


def add_routes(router: APIRouter) -> None:
    router.add_api_route("/", index, methods=["GET"], include_in_schema=False)
