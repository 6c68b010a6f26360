"""The app's lifetime: the model loads in the background, then a batcher runs until shutdown.

Loading after the server listens lets an orchestrator see the process is up; /internal/ping
answers 200 only once `state.service` is set, which is as soon as the model has made one image:
the fast path's graphs are compiled afterwards, while the worker serves (worker/warmup.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from gpuroam.worker.accelerate import acceleration_for
from gpuroam.worker.batcher import Batcher, device_thread
from gpuroam.worker.engine import Engine
from gpuroam.worker.models import LoadedModel, load_model, resolve_device
from gpuroam.worker.prebuild import use_artefact
from gpuroam.worker.service import GenerationService
from gpuroam.worker.state import WorkerState

log = logging.getLogger("gpuroam.worker")


def model_lifespan(
    state: WorkerState, model: LoadedModel | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """FastAPI's `lifespan`: serve `model` if given (tests share one), else load `state.config.model`."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(start_service(state, model))
        yield
        batcher = await loading if loading.done() else None
        if not loading.done():
            loading.cancel()
        if state.warmup is not None:
            state.warmup.stop()
        if batcher is not None:
            await batcher.stop()

    return lifespan


async def start_service(state: WorkerState, model: LoadedModel | None) -> Batcher | None:
    """Load and warm the model, then set `state.service`; on failure, `state.load_error` says why."""
    config = state.config
    gpu_thread = device_thread()
    try:
        engine, warm_up_s = await _warmed_engine(state, model, gpu_thread)
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
        runnable_now=engine.runnable_now,
    )
    batcher.start()
    state.service = GenerationService(config, engine.model, batcher, state.assets)
    state.metrics.model_loaded.set(1)
    if engine.warmup is not None:
        state.watch_warmup(engine.warmup)
        state.watch_graphs(engine.graphs)
        engine.warmup.start()
    log.info(
        "model ready",
        extra={
            "model": engine.model.title,
            "device": str(engine.model.device),
            "dtype": str(engine.model.dtype),
            "warm_up_s": round(warm_up_s, 3),
            "compile": engine.acceleration.compile_mode,
        },
    )
    return batcher


async def _warmed_engine(
    state: WorkerState, model: LoadedModel | None, gpu_thread: ThreadPoolExecutor
) -> tuple[Engine, float]:
    """The engine and its warm-up seconds; loaded, built and warmed on the device thread, which is the one
    that runs it later (CUDA graphs belong to the thread that recorded them, and on the CPU each thread
    that has run torch's kernels keeps a pool of OpenMP threads that slows the device thread's)."""
    loop = asyncio.get_running_loop()
    config = state.config
    if model is None:
        model = await loop.run_in_executor(gpu_thread, load_model, config.model, resolve_device(config.device))
    await loop.run_in_executor(gpu_thread, state.assets.attach, model.pipeline)  # before anything is compiled
    engine = await loop.run_in_executor(gpu_thread, Engine, model, acceleration_for(config, model.device), state.assets)
    sizes = await asyncio.to_thread(use_artefact, engine)
    warm_up_s = await loop.run_in_executor(gpu_thread, engine.warm_up, sizes)
    return engine, warm_up_s
