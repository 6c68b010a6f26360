"""The A1111 API (/sdapi/v1/*): generation, progress and control of jobs, options, and the catalogues.

Routes that only report (progress, interrupt, skip, GET options) answer before the model is loaded,
as A1111's do while it starts; the others need the ready service and answer 503 with Retry-After
until then. Where an endpoint returns a TypedDict, `response_model` keeps the published schema the
open object it has always been.

Through the gateway every request carries the caller's identity (X-Gpuroam-Identity, set by the
gateway, never by a client): each job belongs to its caller, progress, interrupt and skip reach only
the caller's own jobs, and POST options only checks the values (the gateway keeps them per caller
and sends them with each of its generations as `override_settings`). On the worker's own port there
is no identity, and A1111's single-user behaviour holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Request, params

from gpuroam.worker import checkpoint_switch
from gpuroam.worker.errors import ClientGone
from gpuroam.worker.options import WorkerOptions
from gpuroam.worker.progress import Progress, progress_of, target_jobs
from gpuroam.worker.responses import GenerationResult
from gpuroam.worker.samplers import SAMPLERS, SCHEDULES
from gpuroam.worker.schemas import GenerationResponse, Img2ImgRequest, OptionsUpdate, Txt2ImgRequest
from gpuroam.worker.sd_upscale import SCRIPT_NAME
from gpuroam.worker.state import ReadyService, SharedState

JOB_HEADER = "x-gpuroam-job"
IDENTITY_HEADER = "x-gpuroam-identity"

GenerationRequest = TypeVar("GenerationRequest", Txt2ImgRequest, Img2ImgRequest)
T = TypeVar("T")


def caller(http: Request) -> str | None:
    """Who asks, as the gateway says; None on the worker's own port (one user, as A1111)."""
    value = http.headers.get(IDENTITY_HEADER)
    return value[:128] if value else None


def _with_job_header(request: GenerationRequest, http: Request) -> GenerationRequest:
    """The job id a client (or the gateway's sticky routing) chose in X-Gpuroam-Job, unless the body names one."""
    header = http.headers.get(JOB_HEADER)
    if header and not request.force_task_id:
        return request.model_copy(update={"force_task_id": header[:128]})
    return request


def _job_id(http: Request, id_task: str | None) -> str | None:
    """The job a progress or control call names: `?id_task=`, else the X-Gpuroam-Job header."""
    return id_task or http.headers.get(JOB_HEADER)


async def txt2img(request: Txt2ImgRequest, http: Request, service: ReadyService) -> GenerationResult:
    return await _unless_client_leaves(http, service.generate(_with_job_header(request, http), caller(http) or ""))


async def img2img(request: Img2ImgRequest, http: Request, service: ReadyService) -> GenerationResult:
    return await _unless_client_leaves(http, service.generate(_with_job_header(request, http), caller(http) or ""))


async def _unless_client_leaves(http: Request, work: Coroutine[Any, Any, T]) -> T:
    """`work`, cancelled when the client hangs up first (the gateway hangs up too when its client left or
    it gave up with a 504): the job is interrupted and the device goes to the next within a step."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _disconnected(http: Request) -> None:
    """Returns once the client has hung up (the body was read: what comes next is the disconnect)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def progress(
    request: Request, state: SharedState, skip_current_image: bool = False, id_task: str | None = None
) -> Progress:
    return progress_of(state.service, _job_id(request, id_task), caller(request))


async def interrupt(request: Request, state: SharedState, id_task: str | None = None) -> dict[str, Any]:
    service = state.service
    if service is not None:
        for job in target_jobs(service, _job_id(request, id_task), caller(request)):
            service.batcher.interrupt(job)
    return {}


async def skip(request: Request, state: SharedState, id_task: str | None = None) -> dict[str, Any]:
    for job in target_jobs(state.service, _job_id(request, id_task), caller(request)):
        job.skipped = True
    return {}


async def get_options(state: SharedState) -> dict[str, object]:
    """Every A1111 setting; while the model loads, the defaults (no model yet), as A1111 answers meanwhile."""
    service = state.service
    return service.options_as_a1111() if service else WorkerOptions().as_a1111(None, None)


async def set_options(
    update: OptionsUpdate, http: Request, service: ReadyService, state: SharedState
) -> dict[str, object] | None:
    """On the worker's own port, set its options; for a caller through the gateway, check them and answer
    the checked values, which the gateway keeps for that caller (a bad value is a 422 either way)."""
    values = update.model_dump()
    if caller(http) is not None:
        return service.caller_options(values)
    if "sd_model_checkpoint" in values:  # A1111 switches the model for everyone: here, only on the own port
        await state.switcher.switch(service, values.pop("sd_model_checkpoint"))
    service.update_options(values)
    return None


async def sd_models(service: ReadyService) -> list[dict[str, Any]]:
    return checkpoint_switch.listed(service)


async def samplers() -> list[dict[str, Any]]:
    return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS]


async def schedulers() -> list[dict[str, Any]]:
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) or None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in SCHEDULES
    ]


async def scripts() -> dict[str, list[str]]:
    """The selectable scripts, lowercased as A1111 lists them; no always-on ones (extensions) here."""
    return {"txt2img": [], "img2img": [SCRIPT_NAME]}


def add_routes(router: APIRouter, dependencies: Sequence[params.Depends] = ()) -> None:
    """`dependencies` guard every route (create_app passes the --api-auth check when users are configured)."""
    guarded = list(dependencies)
    router.add_api_route(
        "/sdapi/v1/txt2img", txt2img, methods=["POST"], dependencies=guarded, response_model=GenerationResponse
    )
    router.add_api_route(
        "/sdapi/v1/img2img", img2img, methods=["POST"], dependencies=guarded, response_model=GenerationResponse
    )
    router.add_api_route(
        "/sdapi/v1/progress", progress, methods=["GET"], dependencies=guarded, response_model=dict[str, Any]
    )
    router.add_api_route("/sdapi/v1/interrupt", interrupt, methods=["POST"], dependencies=guarded)
    router.add_api_route("/sdapi/v1/skip", skip, methods=["POST"], dependencies=guarded)
    router.add_api_route(
        "/sdapi/v1/options", get_options, methods=["GET"], dependencies=guarded, response_model=dict[str, Any]
    )
    router.add_api_route("/sdapi/v1/options", set_options, methods=["POST"], dependencies=guarded)
    router.add_api_route("/sdapi/v1/sd-models", sd_models, methods=["GET"], dependencies=guarded)
    router.add_api_route("/sdapi/v1/samplers", samplers, methods=["GET"], dependencies=guarded)
    router.add_api_route("/sdapi/v1/schedulers", schedulers, methods=["GET"], dependencies=guarded)
    router.add_api_route("/sdapi/v1/scripts", scripts, methods=["GET"], dependencies=guarded)
