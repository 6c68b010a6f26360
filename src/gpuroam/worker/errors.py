"""How the worker's own exceptions become HTTP answers: 422 for a request it cannot serve as asked (404 for an
unknown sampler, as A1111 answers), 503 with
Retry-After for a full queue, 500 with the device's reason for a failed batch, 499 (nginx's "client closed
request", for the access log: nobody reads it) when the client hung up first."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpuroam.api_errors import install_validation_handler
from gpuroam.worker.batcher import BatchFailed, QueueFull
from gpuroam.worker.samplers import UnknownSampler
from gpuroam.worker.schemas import RequestError


class ClientGone(Exception):
    """The client hung up before its answer was ready; its job was interrupted."""


async def client_gone(_: Request, error: ClientGone) -> JSONResponse:
    return JSONResponse({"detail": "the client closed the connection; its job was interrupted"}, status_code=499)


async def request_error(_: Request, error: RequestError) -> JSONResponse:
    """The same shape as FastAPI's validation 422, so clients find the field in `detail[].loc` either way."""
    return JSONResponse(
        {"detail": [{"loc": ["body", *error.field_name.split(".")], "msg": str(error), "type": "value_error"}]},
        status_code=422,
    )


async def http_error(_: Request, error: Exception) -> JSONResponse:
    """A1111's error body for its HTTP errors (`error`, `detail`, `body`, `errors`); `detail` as FastAPI's."""
    assert isinstance(error, StarletteHTTPException)
    body = {"error": "HTTPException", "detail": error.detail, "body": "", "errors": ""}
    return JSONResponse(body, status_code=error.status_code, headers=error.headers)


async def unknown_sampler(_: Request, error: UnknownSampler) -> JSONResponse:
    """A1111's answer, in A1111's error shape (`error`, `detail`, `body`, `errors`); `errors` says which exist."""
    body = {"error": "HTTPException", "detail": "Sampler not found", "body": "", "errors": f"404: {error}"}
    return JSONResponse(body, status_code=404)


async def queue_full(_: Request, error: QueueFull) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": str(error.retry_after_s)})


async def batch_failed(_: Request, error: BatchFailed) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    install_validation_handler(app)
    app.exception_handler(RequestError)(request_error)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(UnknownSampler)(unknown_sampler)
    app.exception_handler(QueueFull)(queue_full)
    app.exception_handler(BatchFailed)(batch_failed)
    app.exception_handler(ClientGone)(client_gone)
