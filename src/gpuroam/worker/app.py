"""The worker's HTTP app: the A1111 API, the Web UI page, /internal/ping and /metrics.

The model loads in the background after the server starts listening, so an orchestrator can
see the process is up; /internal/ping answers 200 only once the model is ready.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from fastapi.staticfiles import StaticFiles

from gpuroam import __version__
from gpuroam.api_errors import install_validation_handler
from gpuroam.worker.accelerate import acceleration_for
from gpuroam.worker.batcher import Batcher, BatchFailed, QueueFull, device_thread
from gpuroam.worker.config import WorkerConfig
from gpuroam.worker.engine import Engine
from gpuroam.worker.jobs import Job
from gpuroam.worker.metrics import WorkerMetrics
from gpuroam.worker.middleware import WorkerMiddleware
from gpuroam.worker.models import LoadedModel, load_model, resolve_device
from gpuroam.worker.samplers import SAMPLERS, SCHEDULES
from gpuroam.worker.schemas import GenerationResponse, Img2ImgRequest, OptionsUpdate, Txt2ImgRequest
from gpuroam.worker.service import GenerationService, RequestError

log = logging.getLogger("gpuroam.worker")

STATIC = files("gpuroam.worker").joinpath("static")
LOADING_RETRY_AFTER_S = 5


class WorkerState:
    """What the routes share; `service` is None until the model is loaded."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.metrics = WorkerMetrics()
        self.service: GenerationService | None = None
        self.load_error: str | None = None

    @property
    def unavailable_reason(self) -> str:
        return f"model failed to load: {self.load_error}" if self.load_error else "model is loading; retry shortly"

    def require_service(self) -> GenerationService:
        if self.service is None:
            raise HTTPException(
                503, detail=self.unavailable_reason, headers={"Retry-After": str(LOADING_RETRY_AFTER_S)}
            )
        return self.service


def create_app(config: WorkerConfig, model: LoadedModel | None = None) -> FastAPI:
    """`model` may be given preloaded (tests share one); else it loads in the background."""
    state = WorkerState(config)

    async def start(loaded: LoadedModel | None) -> Batcher | None:
        gpu_thread = device_thread()
        try:
            if loaded is None:
                device = resolve_device(config.device)
                loaded = await asyncio.to_thread(load_model, config.model, device)
            loop = asyncio.get_running_loop()
            engine = await loop.run_in_executor(gpu_thread, Engine, loaded, acceleration_for(config, loaded.device))
            warm_up_s = await loop.run_in_executor(gpu_thread, engine.warm_up)
        except Exception as error:  # noqa: BLE001 - reported by /internal/ping and every route
            state.load_error = f"{type(error).__name__}: {error}"
            log.error("model load failed", extra={"model": config.model, "error": state.load_error})
            return None
        batcher = Batcher(
            engine.run,
            state.metrics,
            max_batch=config.max_batch,
            max_wait_s=config.batch_wait_ms / 1000,
            max_queued_images=config.max_queued_images,
            device=gpu_thread,
            sizes=engine.acceleration.buckets if engine.acceleration.compiles else (),
        )
        batcher.start()
        state.service = GenerationService(config, loaded, batcher)
        state.metrics.model_loaded.set(1)
        log.info(
            "model ready",
            extra={
                "model": loaded.title,
                "device": str(loaded.device),
                "dtype": str(loaded.dtype),
                "warm_up_s": round(warm_up_s, 3),
                "compile": engine.acceleration.compile_mode,
            },
        )
        return batcher

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(start(model))
        yield
        batcher = await loading if loading.done() else None
        if not loading.done():
            loading.cancel()
        if batcher is not None:
            await batcher.stop()

    app = FastAPI(title="gpuroam worker (A1111-compatible)", version=__version__, lifespan=lifespan)
    app.state.worker = state
    app.add_middleware(WorkerMiddleware, metrics=state.metrics, max_body_bytes=config.max_body_bytes)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    _add_error_handlers(app)
    api_auth = _api_auth_dependency(config)
    service_ready = Depends(state.require_service)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC.joinpath("index.html")))

    @app.get("/internal/ping")
    async def ping() -> JSONResponse:
        if state.service is None:
            return JSONResponse(
                {"detail": state.unavailable_reason},
                status_code=503,
                headers={"Retry-After": str(LOADING_RETRY_AFTER_S)},
            )
        return JSONResponse({})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/gpuroam/worker")
    async def worker_info() -> dict[str, Any]:
        service = state.service
        return {
            "region": config.region,
            "gpu": config.gpu,
            "replica": config.replica,
            "version": __version__,
            "model": service.model.title if service else config.model,
            "device": str(service.model.device) if service else config.device,
            "ready": service is not None,
            "max_batch": config.max_batch,
            "queued_images": service.batcher.queued_images if service else 0,
        }

    @app.post("/sdapi/v1/txt2img", dependencies=api_auth, response_model=GenerationResponse)
    async def txt2img(
        request: Txt2ImgRequest, http: Request, service: GenerationService = service_ready
    ) -> dict[str, Any]:
        return await service.generate(_with_job_header(request, http))

    @app.post("/sdapi/v1/img2img", dependencies=api_auth, response_model=GenerationResponse)
    async def img2img(
        request: Img2ImgRequest, http: Request, service: GenerationService = service_ready
    ) -> dict[str, Any]:
        return await service.generate(_with_job_header(request, http))

    @app.get("/sdapi/v1/progress", dependencies=api_auth)
    async def progress(
        request: Request, skip_current_image: bool = False, id_task: str | None = None
    ) -> dict[str, Any]:
        return _progress(state.service, id_task or request.headers.get("x-gpuroam-job"))

    @app.post("/sdapi/v1/interrupt", dependencies=api_auth)
    async def interrupt(request: Request, id_task: str | None = None) -> dict[str, Any]:
        for job in _target_jobs(state.service, id_task or request.headers.get("x-gpuroam-job")):
            state.service.batcher.interrupt(job)  # type: ignore[union-attr]
        return {}

    @app.post("/sdapi/v1/skip", dependencies=api_auth)
    async def skip(request: Request, id_task: str | None = None) -> dict[str, Any]:
        for job in _target_jobs(state.service, id_task or request.headers.get("x-gpuroam-job")):
            job.skipped = True
        return {}

    @app.get("/sdapi/v1/options", dependencies=api_auth)
    async def get_options() -> dict[str, Any]:
        service = state.service
        return service.options.as_a1111(service.model) if service else {}

    @app.post("/sdapi/v1/options", dependencies=api_auth)
    async def set_options(update: OptionsUpdate, service: GenerationService = service_ready) -> None:
        service.update_options(update.model_dump())

    @app.get("/sdapi/v1/sd-models", dependencies=api_auth)
    async def sd_models(service: GenerationService = service_ready) -> list[dict[str, Any]]:
        model = service.model
        return [
            {
                "title": model.title,
                "model_name": model.name,
                "hash": model.short_hash,
                "sha256": model.sha256,
                "filename": model.filename,
                "config": None,
            }
        ]

    @app.get("/sdapi/v1/samplers", dependencies=api_auth)
    async def samplers() -> list[dict[str, Any]]:
        return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS]

    @app.get("/sdapi/v1/schedulers", dependencies=api_auth)
    async def schedulers() -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "label": s.label,
                "aliases": list(s.aliases) or None,
                "default_rho": -1,
                "need_inner_model": False,
            }
            for s in SCHEDULES
        ]

    @app.get("/sdapi/v1/scripts", dependencies=api_auth)
    async def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    return app


GenerationRequest = TypeVar("GenerationRequest", Txt2ImgRequest, Img2ImgRequest)


def _with_job_header(request: GenerationRequest, http: Request) -> GenerationRequest:
    """The job id a client (or the gateway's sticky routing) chose in X-Gpuroam-Job, unless the body names one."""
    header = http.headers.get("x-gpuroam-job")
    if header and not request.force_task_id:
        return request.model_copy(update={"force_task_id": header[:128]})
    return request


def _target_jobs(service: GenerationService | None, job_id: str | None) -> list[Job]:
    """A named job, or (as A1111's global interrupt) every job on the device now."""
    if service is None:
        return []
    if job_id:
        return [service.jobs[job_id]] if job_id in service.jobs else []
    return list(service.batcher.running)


def _progress(service: GenerationService | None, job_id: str | None) -> dict[str, Any]:
    """A1111's progress of one job: the named one, else the one on the device (or next in line)."""
    jobs = list(service.jobs.values()) if service else []
    job = service.jobs.get(job_id) if service and job_id else None
    if job is None and not job_id and jobs:
        job = (service.batcher.running or jobs)[0]  # type: ignore[union-attr]
    state = {
        "skipped": bool(job and job.skipped),
        "interrupted": bool(job and job.interrupted),
        "job": job.id if job else "",
        "job_count": job.iterations if job else 0,
        "job_timestamp": "0",
        "job_no": job.iterations_done if job else 0,
        "sampling_step": job.sampling_step if job else 0,
        "sampling_steps": job.sampling_steps if job else 0,
    }
    return {
        "progress": round(job.progress, 4) if job else 0.0,
        "eta_relative": round(job.eta_relative, 3) if job else 0.0,
        "state": state,
        "current_image": None,
        "textinfo": None,
    }


def _api_auth_dependency(config: WorkerConfig) -> list[Any]:
    """HTTP basic auth on the API, as A1111's --api-auth; tokens compared in constant time."""
    if not config.api_auth:
        return []
    basic = HTTPBasic(auto_error=False)

    def check(credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
        ok = False
        if credentials is not None:
            for user, password in config.api_auth:
                user_ok = secrets.compare_digest(credentials.username.encode(), user.encode())
                password_ok = secrets.compare_digest(credentials.password.encode(), password.encode())
                ok |= user_ok & password_ok
        if not ok:
            raise HTTPException(401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    return [Depends(check)]


def _add_error_handlers(app: FastAPI) -> None:
    install_validation_handler(app)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse(
            {"detail": [{"loc": ["body", *error.field_name.split(".")], "msg": str(error), "type": "value_error"}]},
            status_code=422,
        )

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, error: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(BatchFailed)
    async def batch_failed(_: Request, error: BatchFailed) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=500)
