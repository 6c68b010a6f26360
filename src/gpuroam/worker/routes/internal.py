"""What an orchestrator probes, never behind --api-auth: readiness, Prometheus metrics and who this worker is."""

from __future__ import annotations

from typing import Any, TypedDict

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from gpuroam import __version__
from gpuroam.worker.state import SharedState


class WorkerInfo(TypedDict):
    region: str | None
    gpu: str | None
    replica: str | None
    version: str
    model: str
    device: str
    ready: bool
    max_batch: int
    queued_images: int
    warmth: float  # current speed as a share of full speed: below 1 while the fast path compiles
    graphs_built: int
    graphs_pending: int


WARMTH_HEADER = "X-Gpuroam-Warmth"


# 200 once the model is ready (serving eagerly while graphs compile: the warmth header says how fast it
# is meanwhile, and the gateway gives it that share); 503 with Retry-After while it loads or after it failed to.
async def ping(state: SharedState) -> JSONResponse:
    if state.service is None:
        return JSONResponse({"detail": state.unavailable_reason}, status_code=503, headers=state.retry_headers)
    return JSONResponse({}, headers={WARMTH_HEADER: str(state.warmth)})


async def metrics(state: SharedState) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


async def worker_info(state: SharedState) -> WorkerInfo:
    config, service = state.config, state.service
    return WorkerInfo(
        region=config.region,
        gpu=config.gpu,
        replica=config.replica,
        version=__version__,
        model=service.model.title if service else config.model,
        device=str(service.model.device) if service else config.device,
        ready=service is not None,
        max_batch=config.max_batch,
        queued_images=service.batcher.queued_images if service else 0,
        warmth=state.warmth,
        graphs_built=state.warmup.built if state.warmup else 0,
        graphs_pending=state.warmup.pending if state.warmup else 0,
    )


def add_routes(router: APIRouter) -> None:
    router.add_api_route("/internal/ping", ping, methods=["GET"])
    router.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
    # The schema stays the open object it has always published; WorkerInfo types the code.
    router.add_api_route("/gpuroam/worker", worker_info, methods=["GET"], response_model=dict[str, Any])
